"""Latency across models and backends: ``prunecast bench`` and the latency stage of ``prunecast run``.

Every model is an exported artifact, timed through the same :class:`~prunecast.runtime.Forecaster`
users embed, on real scaled test windows. The PyTorch backend runs the artifact's saved module in
eager mode (what users run before exporting); each other backend's row carries its max abs error
against that reference on the same inputs.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from prunecast.bench.timing import (
    Candidate,
    LatencyRow,
    TimingConfig,
    machine_info,
    speedups,
    time_candidates,
)
from prunecast.data.csv import TimeAxisPolicy

BATCH_SIZES = (1, 8, 64, 256)
CPU_BACKENDS = ("torch", "onnxruntime")


@dataclass(frozen=True)
class BenchConfig:
    """What to time. ``threads`` is fixed for every backend and reported with each row."""

    batch_sizes: tuple[int, ...] = BATCH_SIZES
    backends: tuple[str, ...] | None = None
    """None: PyTorch and onnxruntime, plus TensorRT when it loads here."""
    threads: int = 2
    data: str = "ETTh1"
    time_axis: TimeAxisPolicy = TimeAxisPolicy()
    """How ``data``'s time axis is checked (see :class:`prunecast.data.TimeAxisPolicy`)."""
    timing: TimingConfig = TimingConfig()
    revision: str | None = None
    """HF branch, tag or commit for the models given as HF ids (not for directories)."""


def available_backends() -> tuple[str, ...]:
    """PyTorch and onnxruntime always; TensorRT only with its package and a CUDA GPU."""
    try:
        from prunecast.export.tensorrt import gpu_compute_capability, import_tensorrt

        import_tensorrt()
        gpu_compute_capability()
    except Exception:  # noqa: BLE001 - any failure means no TensorRT row, said in the result
        return CPU_BACKENDS
    return (*CPU_BACKENDS, "tensorrt")


def ensure_artifact(source: str, workdir: Path, name: str, revision: str | None = None) -> Path:
    """``source`` itself when it is an artifact, else a fresh FP32 export of the model it names
    (``revision`` applies to an HF id)."""
    from prunecast.export.manifest import MANIFEST_NAME

    path = Path(source)
    if (path / MANIFEST_NAME).is_file():
        return path
    from prunecast.compress import load_model
    from prunecast.export.onnx_export import ExportConfig, export_onnx

    out = workdir / name
    module = load_model(source, revision=None if path.exists() else revision)
    export_onnx(module, out, ExportConfig(source_model=source))
    return out


def bench(models: dict[str, str | Path], config: BenchConfig = BenchConfig()) -> dict:
    """Time each named model (artifact directory, model directory or HF id) on each backend.

    Returns ``{"rows": [...], "speedups": {...}, "machine": {...}, "config": {...}}``; speedups
    are p50 ratios against the first model on PyTorch, measured side by side in this run.
    """
    from prunecast.runtime import Forecaster

    backends = config.backends or available_backends()
    with tempfile.TemporaryDirectory(prefix="prunecast-bench-") as tmp:
        artifacts = {
            name: ensure_artifact(str(src), Path(tmp), name, config.revision) for name, src in models.items()
        }
        candidates: list[Candidate] = []
        for name, art in artifacts.items():
            forecasters = {
                b: Forecaster.load(
                    art,
                    backend=b,
                    device="cpu" if b != "tensorrt" else "cuda",
                    threads=config.threads,
                    spinning=False,
                )
                for b in runs_precision(art, backends)
            }
            first = next(iter(forecasters.values()))
            inputs = _inputs(config.data, first, max(config.batch_sizes), config.time_axis)
            reference = forecasters["torch"].predict_batch(inputs) if "torch" in forecasters else None
            for backend, fc in forecasters.items():
                parity = None
                if reference is not None:
                    parity = float(np.abs(fc.predict_batch(inputs) - reference).max())
                for batch in config.batch_sizes:
                    candidates.append(
                        Candidate(
                            name,
                            backend,
                            batch,
                            config.threads,
                            fc.predict_batch,
                            np.ascontiguousarray(inputs[:batch]),
                            parity,
                        )
                    )
        rows = time_candidates(candidates, config.timing)
    names = list(models)
    return {
        "rows": [r.to_dict() for r in rows],
        "speedups": _all_speedups(rows, names, backends),
        "machine": machine_info(),
        "config": {
            "batch_sizes": list(config.batch_sizes),
            "backends": list(backends),
            "threads": config.threads,
            "data": config.data,
            "timing": config.timing.__dict__,
        },
        "models": {name: str(src) for name, src in models.items()},
    }


def runs_precision(artifact: Path, backends: tuple[str, ...]) -> tuple[str, ...]:
    """The backends that run ``artifact`` at its own precision: PyTorch runs the FP32 module saved
    beside an FP16 or INT8 graph, so its row would time another model under the artifact's name."""
    import json

    from prunecast.export.manifest import MANIFEST_NAME

    precision = json.loads((artifact / MANIFEST_NAME).read_text()).get("precision", "fp32")
    kept = tuple(b for b in backends if b != "torch" or precision == "fp32")
    if not kept:
        raise ValueError(
            f"{artifact} is {precision}: none of the backends {backends} runs it at that precision"
        )
    return kept


def _inputs(data: str, forecaster, count: int, policy: TimeAxisPolicy) -> np.ndarray:
    """``count`` real scaled test contexts of ``data``, repeated if the split is shorter."""
    from prunecast.data import prepare_windows

    test = prepare_windows(data, forecaster.context_length, forecaster.horizon, policy=policy).test
    indices = np.arange(count) % len(test)
    contexts, _ = test.gather(indices)
    return contexts


def _all_speedups(rows: list[LatencyRow], names: list[str], backends: tuple[str, ...]) -> dict:
    """p50 speedups over the first model on PyTorch eager, keyed ``"<model>/<backend>"`` then batch."""
    baseline = (names[0], "torch") if "torch" in backends else (names[0], backends[0])
    out = {}
    for name in names:
        for backend in backends:
            ratios = speedups(rows, baseline, (name, backend))
            if (name, backend) != baseline and ratios:  # a pair not timed (see runs_precision) has none
                out[f"{name}/{backend}"] = ratios
    return {"baseline": f"{baseline[0]}/{baseline[1]}", "p50_ratio": out}
