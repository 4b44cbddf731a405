"""Latency of forecast callables: warm-up excluded, interleaved rounds, percentiles and throughput.

Machines here are noisy, so every configuration is timed in several short rounds that
alternate between configurations: a speedup is then a ratio of figures taken side by side
in the same run, not across runs minutes apart.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np

PredictFn = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class TimingConfig:
    """How long to time each configuration: ``rounds`` rounds of at least ``round_seconds`` each."""

    warmup: int = 3
    rounds: int = 3
    round_seconds: float = 0.6
    min_iters_per_round: int = 3


@dataclass
class LatencyRow:
    """One (model, backend, batch) measurement, the row format of ``report.json``'s ``latency``."""

    model: str
    backend: str
    batch: int
    threads: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    series_per_s: float
    iterations: int
    parity_max_abs_err: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Candidate:
    """A configuration to time: a predict function and the batch it is timed at."""

    model: str
    backend: str
    batch: int
    threads: int
    predict: PredictFn
    inputs: np.ndarray
    parity_max_abs_err: float | None = None
    times: list[float] = field(default_factory=list)


def time_candidates(candidates: list[Candidate], timing: TimingConfig = TimingConfig()) -> list[LatencyRow]:
    """Time every candidate in interleaved rounds; return one row per candidate, in order."""
    for cand in candidates:
        for _ in range(timing.warmup):
            cand.predict(cand.inputs)
    for _ in range(timing.rounds):
        for cand in candidates:
            start_round = time.perf_counter()
            n = 0
            while n < timing.min_iters_per_round or time.perf_counter() - start_round < timing.round_seconds:
                t0 = time.perf_counter()
                cand.predict(cand.inputs)
                cand.times.append(time.perf_counter() - t0)
                n += 1
    rows = []
    for cand in candidates:
        ms = np.asarray(cand.times) * 1e3
        rows.append(
            LatencyRow(
                model=cand.model,
                backend=cand.backend,
                batch=cand.batch,
                threads=cand.threads,
                p50_ms=round(float(np.percentile(ms, 50)), 4),
                p95_ms=round(float(np.percentile(ms, 95)), 4),
                p99_ms=round(float(np.percentile(ms, 99)), 4),
                series_per_s=round(float(cand.batch * len(ms) / (ms.sum() / 1e3)), 1),
                iterations=len(ms),
                parity_max_abs_err=cand.parity_max_abs_err,
            )
        )
    return rows


def speedups(rows: list[LatencyRow], baseline: tuple[str, str], target: tuple[str, str]) -> dict[str, float]:
    """p50 speedup of ``target`` (model, backend) over ``baseline`` at each batch size both were timed at.

    Keyed by the batch size as a string, as it reads back from JSON, so a report in memory and
    the same report loaded from ``report.json`` look the same."""
    by_key = {(r.model, r.backend, r.batch): r for r in rows}
    out = {}
    for (model, backend, batch), row in by_key.items():
        if (model, backend) != target:
            continue
        base = by_key.get((*baseline, batch))
        if base is not None:
            out[str(batch)] = round(base.p50_ms / row.p50_ms, 3)
    return out


def machine_info() -> dict:
    """Where a benchmark ran: processor, cores and library versions, for the JSON beside its figures."""
    info = {
        "platform": platform.platform(),
        "processor": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
    }
    for name in ("torch", "onnxruntime", "numpy", "tensorrt"):
        try:
            module = __import__(name)
            info[name] = getattr(module, "__version__", "unknown")
        except ImportError:
            continue
    return info


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
