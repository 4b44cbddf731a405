"""Server metrics in the Prometheus text format, kept in-process with no dependency.

Counters and histograms are only touched from the event loop thread, so they need no lock.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter as _Tally

LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Histogram:
    """Cumulative-bucket histogram (the Prometheus ``_bucket``/``_sum``/``_count`` triple)."""

    def __init__(self, name: str, help_text: str, buckets: tuple[float, ...]):
        self.name = name
        self.help = help_text
        self.buckets = buckets
        self._counts = [0] * (len(buckets) + 1)  # the last slot is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self._counts[bisect_left(self.buckets, value)] += 1
        self.sum += value
        self.count += 1

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        cumulative = 0
        for bound, count in zip((*self.buckets, "+Inf"), self._counts, strict=True):
            cumulative += count
            lines.append(f'{self.name}_bucket{{le="{bound}"}} {cumulative}')
        lines += [f"{self.name}_sum {self.sum!r}", f"{self.name}_count {self.count}"]
        return lines


class ServerMetrics:
    """Requests by status code, series forecast, request latency, batch sizes and queue depth."""

    def __init__(self, queue_depth):
        self._queue_depth = queue_depth
        self.responses: _Tally[int] = _Tally()
        self.series = 0
        self.latency = Histogram(
            "prunecast_request_duration_seconds", "Time from request received to response.", LATENCY_BUCKETS_S
        )
        self.batch_size = Histogram("prunecast_batch_size", "Series per model call.", BATCH_BUCKETS)

    def observe_request(self, status: int, seconds: float, series: int = 0) -> None:
        self.responses[status] += 1
        self.series += series
        self.latency.observe(seconds)

    def render(self) -> str:
        errors = sum(n for status, n in self.responses.items() if status >= 400)
        lines = [
            "# HELP prunecast_requests_total Forecast requests answered, by HTTP status.",
            "# TYPE prunecast_requests_total counter",
            *(f'prunecast_requests_total{{code="{s}"}} {n}' for s, n in sorted(self.responses.items())),
            "# HELP prunecast_request_errors_total Forecast requests answered with a 4xx or 5xx status.",
            "# TYPE prunecast_request_errors_total counter",
            f"prunecast_request_errors_total {errors}",
            "# HELP prunecast_series_total Series forecast.",
            "# TYPE prunecast_series_total counter",
            f"prunecast_series_total {self.series}",
            *self.latency.render(),
            *self.batch_size.render(),
            "# HELP prunecast_queue_depth Requests waiting for a batch.",
            "# TYPE prunecast_queue_depth gauge",
            f"prunecast_queue_depth {self._queue_depth()}",
        ]
        return "\n".join(lines) + "\n"
