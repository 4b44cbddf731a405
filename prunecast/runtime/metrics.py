"""Server metrics through ``prometheus_client``, in a registry of the server's own.

Each server gets its own :class:`~prometheus_client.CollectorRegistry`, never the global
default, so two servers in one process (tests, a benchmark) count separately and nothing
outlives the server. Names follow Prometheus conventions: base units (seconds), ``_total``
on counters. Inference and execution counts are Triton's pair: series forecast by the model
and model calls; their ratio is the mean batch size the batcher formed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
#: the ``protocol`` label: ``/v1/forecast`` and the Open Inference Protocol's ``/v2`` infer
PROTOCOLS = ("v1", "v2")
#: what ``/metrics`` answers with
CONTENT_TYPE = CONTENT_TYPE_LATEST


class ServerMetrics:
    """Requests by protocol and status, series, latency, queue and compute time, batches, queue depth.

    ``model`` labels the model-level metrics and fills the ``prunecast_model_info`` metric
    (model, backend, precision, version, device).
    """

    def __init__(self, queue_depth: Callable[[], int], model: dict[str, str]):
        self.registry = CollectorRegistry(auto_describe=True)
        reg = self.registry
        self.requests = Counter(
            "prunecast_requests",
            "Requests answered, by protocol and HTTP status.",
            ["protocol", "code"],
            registry=reg,
        )
        self.errors = Counter(
            "prunecast_request_errors",
            "Requests answered with a 4xx or 5xx status.",
            ["protocol"],
            registry=reg,
        )
        for protocol in PROTOCOLS:  # present at 0 before the first error
            self.errors.labels(protocol)
        self.series = Counter("prunecast_series", "Series forecast and answered.", registry=reg)
        self.latency = Histogram(
            "prunecast_request_duration_seconds",
            "Time from request received to response ready.",
            ["protocol"],
            buckets=LATENCY_BUCKETS_S,
            registry=reg,
        )
        self.queue_time = Histogram(
            "prunecast_queue_duration_seconds",
            "Time a request waited in the batcher's queue before its batch started.",
            buckets=LATENCY_BUCKETS_S,
            registry=reg,
        )
        self.compute_time = Histogram(
            "prunecast_compute_duration_seconds",
            "Time of one model call (one batch) on the backend.",
            buckets=LATENCY_BUCKETS_S,
            registry=reg,
        )
        self.batch_size = Histogram(
            "prunecast_batch_size", "Series per model call.", buckets=BATCH_BUCKETS, registry=reg
        )
        self.inferences = Counter(
            "prunecast_inference", "Series run through the model (Triton's inference count).", registry=reg
        )
        self.executions = Counter(
            "prunecast_execution",
            "Model calls (Triton's execution count); inferences / executions is the mean batch.",
            registry=reg,
        )
        depth = Gauge("prunecast_queue_depth", "Requests waiting for a batch.", registry=reg)
        depth.set_function(queue_depth)
        Info("prunecast_model", "The model served and how.", registry=reg).info(model)
        self._requests_by: dict[tuple[str, int], Counter] = {}
        self._latency_by: dict[str, Histogram] = {}

    def observe_request(self, protocol: str, status: int, seconds: float, series: int = 0) -> None:
        key = (protocol, status)
        counted = self._requests_by.get(key)
        if counted is None:  # looked up once per protocol and status, not on every request
            counted = self._requests_by[key] = self.requests.labels(protocol, str(status))
            self._latency_by.setdefault(protocol, self.latency.labels(protocol))
        counted.inc()
        if status >= 400:
            self.errors.labels(protocol).inc()
        self.series.inc(series)
        self._latency_by[protocol].observe(seconds)

    def observe_batch(self, size: int, compute_s: float, queued_s: Sequence[float]) -> None:
        """One model call of ``size`` series taking ``compute_s``, for requests queued ``queued_s``."""
        self.batch_size.observe(size)
        self.inferences.inc(size)
        self.executions.inc()
        self.compute_time.observe(compute_s)
        for seconds in queued_s:
            self.queue_time.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
