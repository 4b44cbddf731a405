"""Standard long-term-forecasting splits (the Informer/Autoformer convention).

ETTh* use 12/4/4 months of hourly rows, ETTm* the same months at 15 minutes, any other
CSV 70/10/20 of its rows. Validation and test windows start ``context_length`` rows
before their split, so the first target of each split is its first row.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Split(str, Enum):
    TRAIN = "train"
    VAL = "val"
    TEST = "test"


@dataclass(frozen=True)
class SplitBorders:
    """Row ranges ``[start, end)`` of each split's *target* rows; ``window_start`` adds the context."""

    train: tuple[int, int]
    val: tuple[int, int]
    test: tuple[int, int]

    def rows(self, split: Split | str, context_length: int) -> tuple[int, int]:
        """The rows a split's windows read: its own rows plus ``context_length`` rows before them."""
        start, end = getattr(self, Split(split).value)
        return (max(0, start - context_length) if Split(split) != Split.TRAIN else start, end)


def split_borders(name: str, num_rows: int) -> SplitBorders:
    """Borders for a benchmark called ``name`` (the file stem) with ``num_rows`` rows."""
    hours_per_month = 30 * 24
    if name.startswith("ETTh"):
        per_month = hours_per_month
    elif name.startswith("ETTm"):
        per_month = hours_per_month * 4
    else:
        per_month = 0
    if per_month:
        train, val, test = 12 * per_month, 4 * per_month, 4 * per_month
        if num_rows < train + val + test:
            raise ValueError(f"{name}: {num_rows} rows, but the ETT split needs {train + val + test}")
        return SplitBorders((0, train), (train, train + val), (train + val, train + val + test))
    train = int(num_rows * 0.7)
    test = int(num_rows * 0.2)
    val = num_rows - train - test
    return SplitBorders((0, train), (train, train + val), (train + val, num_rows))
