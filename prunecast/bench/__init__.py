"""Bench: latency of forecast models on each backend, timed in interleaved rounds.

:mod:`~prunecast.bench.timing` times callables (percentiles, throughput, speedups);
:mod:`~prunecast.bench.runner` times artifacts through the runtime's ``Forecaster``
(``prunecast bench`` and the latency stage of ``prunecast run``).
"""

from prunecast.bench.runner import BATCH_SIZES, BenchConfig, available_backends, bench, ensure_artifact
from prunecast.bench.timing import (
    Candidate,
    LatencyRow,
    TimingConfig,
    machine_info,
    speedups,
    time_candidates,
)

__all__ = [
    "BATCH_SIZES",
    "BenchConfig",
    "Candidate",
    "LatencyRow",
    "TimingConfig",
    "available_backends",
    "bench",
    "ensure_artifact",
    "machine_info",
    "speedups",
    "time_candidates",
]
