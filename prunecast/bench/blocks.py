"""A lookup table of building-block latency on one backend: seconds of a Linear at each shape.

A forecast model's Linear layers are its building blocks: a Linear of ``(rows, in, out)`` is
timed alone, as the backend runs it (onnxruntime: a MatMul + bias graph in a session with the
serving threads; PyTorch: ``F.linear`` in eager mode), and the figure is kept in a JSON file per
machine, backend and settings, so later runs read it instead of measuring. The fixed cost of one
call (session dispatch, Python) is measured once and taken off every entry: the whole model pays
it once, not once per Linear.

Entries lie on a grid, not at every shape pruning passes through: widths at 1, 2, 3 and the
multiples of 4 (the widths rounding chooses among are grid points, so they are priced exactly),
rows at powers of two and 1.5 times them; a shape between grid points is interpolated linearly
in each axis from the eight around it, the way a Linear's time grows with each of its sizes.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np

from prunecast.compress.cost import LinearShape

BACKENDS = ("onnxruntime", "torch", "tensorrt")
CACHE_ENV = "PRUNECAST_CACHE"


def cache_root() -> Path:
    """``$PRUNECAST_CACHE``, else ``$XDG_CACHE_HOME/prunecast``, else ``~/.cache/prunecast``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "prunecast"


@dataclass(frozen=True)
class BlockTiming:
    """How each entry is timed: ``warmup`` calls, then ``rounds`` rounds of calls until both
    ``min_calls`` and ``min_seconds`` are reached; the entry is the fastest round's median."""

    warmup: int = 2
    rounds: int = 3
    min_calls: int = 5
    min_seconds: float = 0.005


def quiet_median(call: Callable[[], object], timing: BlockTiming) -> float:
    """Seconds of ``call``: the median of the fastest of ``timing.rounds`` rounds. On a shared
    machine a round that another process interrupts runs slow; the fastest round's median is
    what a quiet machine gives, the figure latency is budgeted on."""
    for _ in range(timing.warmup):
        call()
    best = float("inf")
    for _ in range(timing.rounds):
        times: list[float] = []
        start = time.perf_counter()
        while len(times) < timing.min_calls or time.perf_counter() - start < timing.min_seconds:
            t0 = time.perf_counter()
            call()
            times.append(time.perf_counter() - t0)
        best = min(best, float(np.median(times)))
    return best


class BlockTable:
    """Seconds of one Linear of each shape on ``backend`` with ``threads`` threads (median of
    calls, less the backend's fixed cost per call), measured on first use and cached on disk."""

    def __init__(
        self,
        backend: str = "onnxruntime",
        threads: int = 1,
        cache_dir: Path | None = None,
        timing: BlockTiming = BlockTiming(),
    ):
        if backend not in BACKENDS:
            raise ValueError(f"latency backend must be one of {BACKENDS}, got {backend!r}")
        if threads < 1:
            raise ValueError(f"threads must be at least 1, got {threads}")
        self.backend, self.threads, self.timing = backend, threads, timing
        self._run = _RUNNERS[backend](threads)
        self.path = (
            cache_dir or cache_root() / "latency"
        ) / f"{backend}-{machine_key(backend, threads)}.json"
        self.entries: dict[LinearShape, float] = {}
        self.measured = 0
        """Entries measured by this table (not read from the cache): for reports and tests."""
        if self.path.is_file():
            stored = json.loads(self.path.read_text())
            self.entries = {tuple(map(int, k.split(","))): float(v) for k, v in stored["entries"].items()}
        self.overhead = self._seconds(self._run.overhead())

    def seconds(self, shapes: Iterable[LinearShape]) -> list[float]:
        """The table's figure for each shape, interpolated between grid points (measuring, and
        saving, the grid points it lacks)."""
        corners = {s: _corners(tuple(int(v) for v in s)) for s in shapes}
        missing = [
            c for c in dict.fromkeys(c for cs in corners.values() for c, _ in cs) if c not in self.entries
        ]
        for shape in missing:
            self.entries[shape] = max(self._seconds(self._run.linear(*shape)) - self.overhead, 0.0)
            self.measured += 1
        if missing:
            self.save()
        return [sum(w * self.entries[c] for c, w in corners[s]) for s in shapes]

    def save(self) -> None:
        """Write the table atomically, so concurrent runs never read half a file."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "backend": self.backend,
            "threads": self.threads,
            "machine": machine_description(self.backend),
            "entries": {",".join(map(str, k)): v for k, v in sorted(self.entries.items())},
        }
        tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(payload, indent=0))
        tmp.replace(self.path)

    def _seconds(self, call: Callable[[], object]) -> float:
        return quiet_median(call, self.timing)


def row_grid(value: int) -> tuple[int, int]:
    """The grid points around ``value`` rows: 1, 2, 3, 4, 6, 8, 12, ... (powers of two and 1.5x)."""
    if value <= 4:
        return value, value
    low = 1 << (value.bit_length() - 1)
    points = (low, 3 * low // 2, 2 * low)
    return max(p for p in points if p <= value), min(p for p in points if p >= value)


def width_grid(value: int) -> tuple[int, int]:
    """The grid points around ``value`` channels: 1, 2, 3, then the multiples of 4."""
    if value <= 4 or value % 4 == 0:
        return value, value
    return 4 * (value // 4), 4 * (value // 4) + 4


def _corners(shape: LinearShape) -> list[tuple[LinearShape, float]]:
    """The grid points around ``shape`` with their weights in a trilinear interpolation."""
    axes = [row_grid(shape[0]), width_grid(shape[1]), width_grid(shape[2])]
    out: dict[LinearShape, float] = {}
    for pick in range(8):
        corner, weight = [], 1.0
        for axis, (value, (lo, hi)) in enumerate(zip(shape, axes, strict=True)):
            upper = pick >> axis & 1
            t = 0.0 if hi == lo else (value - lo) / (hi - lo)
            corner.append(hi if upper else lo)
            weight *= t if upper else 1 - t
        if weight > 0:
            key = tuple(corner)
            out[key] = out.get(key, 0.0) + weight
    return list(out.items())


def machine_description(backend: str) -> dict[str, str]:
    """What a measured table depends on: the CPU, how many there are, and the backend's version."""
    return {
        "cpu": _cpu_model(),
        "cpu_count": str(os.cpu_count()),
        "platform": platform.machine(),
        "backend_version": _version(
            {"onnxruntime": "onnxruntime", "torch": "torch", "tensorrt": "tensorrt"}[backend]
        ),
    }


def machine_key(backend: str, threads: int) -> str:
    """A short stable key for this machine, ``backend`` version and thread count."""
    text = json.dumps({**machine_description(backend), "threads": threads}, sort_keys=True)
    return f"t{threads}-" + hashlib.sha256(text.encode()).hexdigest()[:12]


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(package: str) -> str:
    for name in (package, f"{package}-gpu"):
        try:
            return version(name)
        except PackageNotFoundError:
            continue
    return "absent"


class _OnnxRuntimeRunner:
    """A one-Linear graph (MatMul, then the bias Add) per shape, in a session set as the runtime's."""

    providers = ("CPUExecutionProvider",)

    def __init__(self, threads: int):
        import onnxruntime as ort

        self.ort = ort
        self.options = ort.SessionOptions()
        self.options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self.options.intra_op_num_threads = threads
        self.options.inter_op_num_threads = 1
        self.options.add_session_config_entry("session.intra_op.allow_spinning", "0")

    def linear(self, rows: int, inputs: int, outputs: int) -> Callable[[], object]:
        from onnx import TensorProto, helper, numpy_helper

        rng = np.random.default_rng(0)
        weight = numpy_helper.from_array(rng.standard_normal((inputs, outputs)).astype(np.float32), "w")
        bias = numpy_helper.from_array(rng.standard_normal(outputs).astype(np.float32), "b")
        graph = helper.make_graph(
            [helper.make_node("MatMul", ["x", "w"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["y"])],
            "linear",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [rows, inputs])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [rows, outputs])],
            [weight, bias],
        )
        return self._call(graph, {"x": rng.standard_normal((rows, inputs)).astype(np.float32)})

    def overhead(self) -> Callable[[], object]:
        from onnx import TensorProto, helper

        graph = helper.make_graph(
            [helper.make_node("Identity", ["x"], ["y"])],
            "identity",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1])],
        )
        return self._call(graph, {"x": np.zeros((1, 1), np.float32)})

    def _call(self, graph, feeds: dict[str, np.ndarray]) -> Callable[[], object]:
        from onnx import helper

        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
        session = self.ort.InferenceSession(
            model.SerializeToString(), self.options, providers=list(self.providers)
        )
        return lambda: session.run(None, feeds)


class _TorchRunner:
    """``F.linear`` in eager mode, under ``inference_mode``, with the serving thread count."""

    def __init__(self, threads: int):
        import torch

        self.torch = torch
        torch.set_num_threads(threads)

    def linear(self, rows: int, inputs: int, outputs: int) -> Callable[[], object]:
        torch = self.torch
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(rows, inputs, generator=gen)
        w = torch.randn(outputs, inputs, generator=gen)
        b = torch.randn(outputs, generator=gen)

        def call():
            with torch.inference_mode():
                return torch.nn.functional.linear(x, w, b)

        return call

    def overhead(self) -> Callable[[], object]:
        torch = self.torch
        x = torch.zeros(1, 1)

        def call():
            with torch.inference_mode():
                return x.clone()

        return call


class _TensorRTRunner(_OnnxRuntimeRunner):
    """The same one-Linear graph, run by onnxruntime's TensorRT execution provider (an engine
    per shape, built by TensorRT itself): needs onnxruntime-gpu and TensorRT on a CUDA GPU."""

    providers = ("TensorrtExecutionProvider",)

    def __init__(self, threads: int):
        super().__init__(threads)
        if self.providers[0] not in self.ort.get_available_providers():
            raise RuntimeError(
                "latency backend tensorrt needs onnxruntime-gpu with TensorRT and a CUDA GPU "
                f"(this onnxruntime offers {self.ort.get_available_providers()})"
            )


_RUNNERS = {"onnxruntime": _OnnxRuntimeRunner, "torch": _TorchRunner, "tensorrt": _TensorRTRunner}
