"""ONNX Runtime: the default backend, CPU or CUDA, on the artifact's ``model.onnx``."""

from __future__ import annotations

import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from prunecast.export.manifest import ONNX_NAME, ArtifactError, Manifest
from prunecast.runtime.backends.base import (
    DEFAULT_MAX_BATCH,
    FORECAST_ONLY,
    Backend,
    BackendError,
    BackendOptions,
)

CUDA_EP = "CUDAExecutionProvider"
CPU_EP = "CPUExecutionProvider"
SPLIT_MIN_ROWS = 8
"""Fewest series per part when a batch is split across threads (smaller parts gain nothing)."""


class OnnxRuntimeBackend(Backend):
    """One ``InferenceSession``, created once and tuned for latency.

    Thread counts are explicit (intra-op = ``options.threads``, inter-op 1: the graph is a
    chain, so parallel branches gain nothing), and spinning follows ``options.spinning``.
    The provider is read back from the session, since ONNX Runtime silently drops CUDA when
    its libraries fail to load; a drop (CUDA asked for, or offered by ``auto``, but the CPU
    used) is reported in ``fallback`` and as a warning.
    ``InferenceSession.run`` is thread-safe, so calls need no lock.

    On the CPU with ``threads > 1`` and ``options.split_batches``, the session is single-threaded
    and a batch of at least ``2 * SPLIT_MIN_ROWS`` series runs as up to ``threads`` parts at once
    on it (a second, single-threaded session only where CUDA was offered and dropped, leaving a
    multi-threaded CPU one). A smaller batch runs whole on the single-threaded session: too
    few rows to split are too few for threads inside one session to pay for their hand-offs
    (depth-pruned TTM r2, spinning off: 0.061 ms single-threaded against 0.082 ms on 2 threads at
    batch 1, 0.40 against 0.57 ms at 15). ``split_batches=False`` keeps every batch on the
    multi-threaded session.
    """

    name = "onnxruntime"

    def __init__(self, art_dir: str | Path, manifest: Manifest, options: BackendOptions):
        try:
            import onnxruntime as ort
        except ImportError:
            raise BackendError(
                "the onnxruntime backend needs onnxruntime: pip install 'prunecast[cpu]' (or [gpu])"
            ) from None
        session_options = ort.SessionOptions()
        session_options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session_options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        threads = options.cpu_threads()
        split = options.split_batches and threads > 1
        session_options.inter_op_num_threads = 1
        if not options.spinning:
            session_options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            session_options.add_session_config_entry("session.inter_op.allow_spinning", "0")

        cuda_available = CUDA_EP in ort.get_available_providers()
        try_cuda = options.device != "cpu" and cuda_available
        # a CPU session that splits is single-threaded: every batch runs on it, whole or in parts
        session_options.intra_op_num_threads = 1 if split and not try_cuda else threads
        providers: list = [(CUDA_EP, {"device_id": options.cuda_index}), CPU_EP] if try_cuda else [CPU_EP]
        path = Path(art_dir) / ONNX_NAME
        try:
            self._session = ort.InferenceSession(str(path), session_options, providers=providers)
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise ArtifactError(f"{path}: onnxruntime cannot load it: {exc}") from None

        used = self._session.get_providers()
        on_cuda = used[0] == CUDA_EP
        self.device = f"cuda:{options.cuda_index}" if on_cuda else "cpu"
        if not on_cuda and (try_cuda or options.device.startswith("cuda")):
            reason = (
                "CUDAExecutionProvider failed to initialise (check the CUDA/cuDNN libraries)"
                if cuda_available
                else "this onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu)"
            )
            self.fallback = f"{options.device} requested, running on CPU: {reason}"
            warnings.warn(f"prunecast runtime: {self.fallback}", RuntimeWarning, stacklevel=3)

        self._input_name = _check_signature(self._session, manifest, path)
        self.max_batch = options.max_batch or DEFAULT_MAX_BATCH
        self.threads = threads
        self.providers = used
        self._single = self._parts = None
        if split and not on_cuda:
            if try_cuda:  # CUDA was offered but dropped: this session has every thread
                session_options.intra_op_num_threads = 1
                self._single = ort.InferenceSession(str(path), session_options, providers=[CPU_EP])
            else:
                self._single = self._session
            self._parts = ThreadPoolExecutor(threads - 1, thread_name_prefix="prunecast-ort")

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self._run(batch, FORECAST_ONLY)[0]

    def run_outputs(self, batch: np.ndarray, outputs: tuple[str, ...]) -> dict[str, np.ndarray]:
        return dict(zip(outputs, self._run(batch, outputs), strict=True))

    def _run(self, batch: np.ndarray, outputs: tuple[str, ...]) -> list[np.ndarray]:
        """Each of ``outputs`` for ``batch``, in one session run or one run per part."""
        names = list(outputs)
        if self._single is None:
            return self._session.run(names, {self._input_name: batch})
        parts = min(self.threads, len(batch) // SPLIT_MIN_ROWS)
        if parts < 2:
            return self._run_single(batch, names)
        chunks = np.array_split(batch, parts)  # row slices: views, still C-contiguous
        others = [self._parts.submit(self._run_single, chunk, names) for chunk in chunks[1:]]
        first = self._run_single(chunks[0], names)  # on the caller's thread, beside the others
        results = [first, *(future.result() for future in others)]
        return [np.concatenate(per_output) for per_output in zip(*results, strict=True)]

    def _run_single(self, chunk: np.ndarray, names: list[str]) -> list[np.ndarray]:
        return self._single.run(names, {self._input_name: chunk})

    def describe(self) -> dict:
        return {
            **super().describe(),
            "providers": self.providers,
            "threads": self.threads,
            "split_batches": self._single is not None,
        }


def _check_signature(session, manifest: Manifest, path: Path) -> str:
    """The graph's input name, after checking its inputs and outputs match the manifest's tensors."""
    for found, specs in ((session.get_inputs(), manifest.inputs), (session.get_outputs(), manifest.outputs)):
        if [t.name for t in found] != [s.name for s in specs]:
            raise ArtifactError(
                f"{path}: graph tensors {[t.name for t in found]} do not match the manifest's "
                f"{[s.name for s in specs]}"
            )
        for tensor, spec in zip(found, specs, strict=True):
            shape = tensor.shape
            if len(shape) != len(spec.shape) or list(shape[1:]) != spec.shape[1:]:
                raise ArtifactError(f"{path}: {spec.name} has shape {shape}, the manifest says {spec.shape}")
            if isinstance(shape[0], int):
                raise ArtifactError(
                    f"{path}: {spec.name} has a fixed batch of {shape[0]}; re-export it with a dynamic batch axis"
                )
    return manifest.input.name
