"""TensorRT: a prebuilt engine from the artifact, with device buffers allocated once.

Works with the TensorRT 10 and 11 Python API (named I/O tensors, ``set_input_shape``,
``set_tensor_address``, ``execute_async_v3``); device memory and the stream come from
cuda-python (``cuda.bindings.runtime``, or ``cuda.cudart`` in older releases). Both are
imported only when this backend is chosen.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from prunecast.export.manifest import ArtifactError, EngineEntry, Manifest
from prunecast.runtime.backends.base import Backend, BackendError, BackendOptions

INSTALL_HINT = "pip install 'prunecast[trt]' on a machine with an NVIDIA GPU and driver"


def import_tensorrt():
    """``(tensorrt, cudart)``, or a :class:`BackendError` saying what is missing."""
    try:
        import tensorrt as trt
    except ImportError:
        raise BackendError(f"the tensorrt backend needs TensorRT: {INSTALL_HINT}") from None
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart
        except ImportError:
            raise BackendError(f"the tensorrt backend needs cuda-python: {INSTALL_HINT}") from None
    return trt, cudart


def _check(result):
    """Unwrap a cuda-python ``(error, *values)`` tuple, raising on an error code."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise BackendError(f"CUDA error {err}")
    return values[0] if len(values) == 1 else values


def _normalise_cc(value: str) -> str:
    """``"9.0"``, ``"sm_90"`` and ``"90"`` all become ``"90"``."""
    return "".join(ch for ch in str(value) if ch.isdigit())


def pick_engine(manifest: Manifest, tensorrt_version: str, compute_capability: str) -> EngineEntry:
    """The artifact's engine for this TensorRT and GPU (FP16 preferred), or an error saying what exists."""
    if not manifest.engines:
        raise BackendError(
            "the artifact has no TensorRT engine; build one with `prunecast build-engine ART_DIR`"
        )
    here = _normalise_cc(compute_capability)
    usable = [
        e
        for e in manifest.engines
        if e.tensorrt_version == tensorrt_version and _normalise_cc(e.compute_capability) == here
    ]
    if not usable:
        built = ", ".join(
            f"{e.file} (TensorRT {e.tensorrt_version}, compute capability {e.compute_capability})"
            for e in manifest.engines
        )
        raise BackendError(
            f"no engine fits this machine (TensorRT {tensorrt_version}, compute capability "
            f"{compute_capability}); the artifact has {built}. Rebuild with `prunecast build-engine`"
        )
    return min(usable, key=lambda e: e.precision != "fp16")


class TensorRTBackend(Backend):
    """One engine, one execution context, one stream, input/output buffers sized for the profile's max.

    Every output of the engine (``forecast``, and ``quantiles`` for quantile models) has its own
    device buffer, bound by name; a run computes them all and copies back those asked for.

    An execution context runs one batch at a time, so calls take a lock. ``max_batch`` is
    the engine profile's max batch (or less, if ``options.max_batch`` asks).
    """

    name = "tensorrt"

    def __init__(self, art_dir: str | Path, manifest: Manifest, options: BackendOptions):
        if options.device == "cpu":
            raise BackendError("the tensorrt backend runs on a GPU; use device auto or cuda[:N]")
        trt, cudart = import_tensorrt()
        self._cudart = cudart
        device = options.cuda_index
        _check(cudart.cudaSetDevice(device))
        major = _check(
            cudart.cudaDeviceGetAttribute(cudart.cudaDeviceAttr.cudaDevAttrComputeCapabilityMajor, device)
        )
        minor = _check(
            cudart.cudaDeviceGetAttribute(cudart.cudaDeviceAttr.cudaDevAttrComputeCapabilityMinor, device)
        )
        entry = pick_engine(manifest, trt.__version__, f"{major}.{minor}")

        path = Path(art_dir) / entry.file
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
        if self._engine is None:
            raise ArtifactError(f"{path}: TensorRT could not deserialize the engine")
        self._context = self._engine.create_execution_context()
        self._input = manifest.input.name
        # per-series shape of every output, e.g. forecast (H,) and quantiles (Q, H)
        self._output_shapes = {spec.name: tuple(int(d) for d in spec.shape[1:]) for spec in manifest.outputs}
        names = {self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)}
        if names != {self._input, *self._output_shapes}:
            raise ArtifactError(f"{path}: engine tensors {sorted(names)} differ from the manifest's")
        _, _, profile_max = self._engine.get_tensor_profile_shape(self._input, 0)
        self.max_batch = min(int(profile_max[0]), options.max_batch or int(profile_max[0]))
        self._min_batch = int(self._engine.get_tensor_profile_shape(self._input, 0)[0][0])
        self._context_length = manifest.context_length

        self._stream = _check(cudart.cudaStreamCreate())
        float_size = np.dtype(np.float32).itemsize
        self._in_ptr = _check(cudart.cudaMalloc(self.max_batch * self._context_length * float_size))
        self._context.set_tensor_address(self._input, int(self._in_ptr))
        self._out_ptrs = {}
        for name, shape in self._output_shapes.items():
            self._out_ptrs[name] = _check(
                cudart.cudaMalloc(self.max_batch * int(np.prod(shape)) * float_size)
            )
            self._context.set_tensor_address(name, int(self._out_ptrs[name]))
        self._lock = threading.Lock()
        self.device = f"cuda:{device}"
        self.engine = entry

    def run_outputs(self, batch: np.ndarray, outputs: tuple[str, ...]) -> dict[str, np.ndarray]:
        n = batch.shape[0]
        if n < self._min_batch:
            raise BackendError(f"batch of {n} is below the engine profile's min batch {self._min_batch}")
        cudart = self._cudart
        results = {name: np.empty((n, *self._output_shapes[name]), dtype=np.float32) for name in outputs}
        with self._lock:
            if not self._context.set_input_shape(self._input, (n, self._context_length)):
                raise BackendError(f"TensorRT refused input shape ({n}, {self._context_length})")
            _check(
                cudart.cudaMemcpyAsync(
                    self._in_ptr,
                    batch.ctypes.data,
                    batch.nbytes,
                    cudart.cudaMemcpyKind.cudaMemcpyHostToDevice,
                    self._stream,
                )
            )
            if not self._context.execute_async_v3(int(self._stream)):
                raise BackendError("TensorRT execution failed (see the TensorRT log above)")
            for name, out in results.items():  # row-major with the batch first: the first n rows
                _check(
                    cudart.cudaMemcpyAsync(
                        out.ctypes.data,
                        self._out_ptrs[name],
                        out.nbytes,
                        cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost,
                        self._stream,
                    )
                )
            _check(cudart.cudaStreamSynchronize(self._stream))
        return results

    def describe(self) -> dict:
        return {**super().describe(), "engine": self.engine.file, "precision": self.engine.precision}

    def __del__(self) -> None:
        cudart = getattr(self, "_cudart", None)
        if cudart is None:
            return
        for ptr in [getattr(self, "_in_ptr", None), *getattr(self, "_out_ptrs", {}).values()]:
            if ptr is not None:
                cudart.cudaFree(ptr)
        if getattr(self, "_stream", None) is not None:
            cudart.cudaStreamDestroy(self._stream)
