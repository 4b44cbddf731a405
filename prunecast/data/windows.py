"""Channel-independent sliding windows over a scaled split.

Every column of every window is one univariate series: a context ``[L]`` and its target
``[H]``. Windows are views into the split (no copy) until a batch is gathered.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from prunecast.data.csv import STRICT, Benchmark, DataError, TimeAxisPolicy, load_benchmark
from prunecast.data.scaling import StandardScaler
from prunecast.data.splits import Split, split_borders


class Windows:
    """All ``(context, target)`` windows of a ``[T, C]`` array with a given stride.

    Window ``i`` is column ``i % C`` starting at row ``(i // C) * stride``.
    """

    def __init__(self, values: np.ndarray, context_length: int, horizon: int, stride: int = 1):
        if values.ndim != 2:
            raise ValueError(f"expected values [T, C], got shape {tuple(values.shape)}")
        span = context_length + horizon
        if values.shape[0] < span:
            raise DataError(
                f"{values.shape[0]} rows are too few for context {context_length} + horizon {horizon} = {span}"
            )
        self.values = np.ascontiguousarray(values, dtype=np.float32)
        self.context_length = context_length
        self.horizon = horizon
        self.stride = stride
        self.num_channels = values.shape[1]
        self.num_starts = (values.shape[0] - span) // stride + 1
        # [starts_all, C, span] view; stride applied when indexing
        self._view = np.lib.stride_tricks.sliding_window_view(self.values, span, axis=0)

    def __len__(self) -> int:
        return self.num_starts * self.num_channels

    def gather(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Contexts ``[N, L]`` and targets ``[N, H]`` for window indices ``[N]``."""
        indices = np.asarray(indices)
        starts = (indices // self.num_channels) * self.stride
        channels = indices % self.num_channels
        spans = self._view[starts, channels]
        return (
            np.ascontiguousarray(spans[:, : self.context_length]),
            np.ascontiguousarray(spans[:, self.context_length :]),
        )

    def batches(
        self, batch_size: int, shuffle: bool = False, seed: int | None = None, limit: int | None = None
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Iterate over ``(contexts, targets)`` batches; ``limit`` caps the number of windows."""
        order = np.arange(len(self))
        if shuffle:
            np.random.default_rng(seed).shuffle(order)
        if limit is not None:
            order = order[:limit]
        for i in range(0, len(order), batch_size):
            yield self.gather(order[i : i + batch_size])


@dataclass(frozen=True)
class PreparedData:
    """A benchmark split into scaled train/val/test windows, with the scaler fitted on train."""

    benchmark: Benchmark
    scaler: StandardScaler
    train: Windows
    val: Windows
    test: Windows


def prepare_windows(
    data: str | Path,
    context_length: int,
    horizon: int,
    columns: list[str] | None = None,
    train_stride: int = 1,
    policy: TimeAxisPolicy = STRICT,
) -> PreparedData:
    """Load ``data`` (its time axis checked under ``policy``), split it the standard way, scale on
    train, and window every split."""
    bench = load_benchmark(data, columns, policy)
    borders = split_borders(bench.name, bench.num_rows)
    train_rows = bench.values[slice(*borders.train)]
    scaler = StandardScaler.fit(train_rows)
    scaled = scaler.transform(bench.values)
    splits = {}
    for split, stride in ((Split.TRAIN, train_stride), (Split.VAL, 1), (Split.TEST, 1)):
        start, end = borders.rows(split, context_length)
        try:
            splits[split] = Windows(scaled[start:end], context_length, horizon, stride)
        except DataError as exc:
            raise DataError(f"{bench.path}: {split.value} split (rows {start}-{end}): {exc}") from None
    return PreparedData(bench, scaler, splits[Split.TRAIN], splits[Split.VAL], splits[Split.TEST])
