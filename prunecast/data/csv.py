"""Load a benchmark CSV: one date column plus numeric series columns."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

BUNDLED = {"ETTh1": "ETTh1.csv"}
"""Benchmarks shipped inside the package, addressable by name (``--data ETTh1``)."""

DATE_COLUMNS = ("date", "timestamp", "time", "datetime")


class DataError(ValueError):
    """A benchmark file or its contents cannot be used; the message names the file and the problem."""


@dataclass(frozen=True)
class Benchmark:
    """A loaded benchmark: ``values`` is ``[T, C]`` float32, one column per univariate series."""

    name: str
    path: Path
    columns: tuple[str, ...]
    values: np.ndarray

    @property
    def num_rows(self) -> int:
        return int(self.values.shape[0])


def resolve_data_path(data: str | Path) -> Path:
    """A bundled benchmark name (``ETTh1``) or a path to a CSV file."""
    if str(data) in BUNDLED:
        with resources.as_file(resources.files("prunecast.data") / "benchmarks" / BUNDLED[str(data)]) as p:
            return Path(p)
    path = Path(data)
    if not path.exists():
        raise DataError(f"{path}: no such file (bundled benchmarks: {', '.join(BUNDLED)})")
    if not path.is_file():
        raise DataError(f"{path}: not a file")
    return path


def load_benchmark(data: str | Path, columns: list[str] | None = None) -> Benchmark:
    """Read a CSV, drop its date column, and check every value is a finite number.

    ``columns`` picks series by name; by default every column but the date is a series.
    """
    path = resolve_data_path(data)
    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot be read as CSV ({exc})") from None
    if frame.shape[0] == 0:
        raise DataError(f"{path}: has a header but no rows")
    date_cols = [c for c in frame.columns if str(c).strip().lower() in DATE_COLUMNS]
    candidates = [c for c in frame.columns if c not in date_cols]
    if columns is not None:
        unknown = [c for c in columns if c not in candidates]
        if unknown:
            raise DataError(f"{path}: unknown column(s) {unknown}; available: {candidates}")
        candidates = list(columns)
    if not candidates:
        raise DataError(f"{path}: no numeric columns besides the date column")
    series = frame[candidates]
    numeric = series.apply(pd.to_numeric, errors="coerce")
    for col in candidates:
        bad = numeric[col].isna() & series[col].notna()
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise DataError(
                f"{path}: column {col!r} has a non-numeric value {series[col].iloc[row]!r} at data row {row + 1}"
            )
    values = numeric.to_numpy(dtype=np.float64)
    if not np.isfinite(values).all():
        row, col = np.argwhere(~np.isfinite(values))[0]
        kind = "NaN" if np.isnan(values[row, col]) else "inf"
        raise DataError(f"{path}: column {candidates[col]!r} has {kind} at data row {row + 1}")
    return Benchmark(
        name=path.stem,
        path=path,
        columns=tuple(str(c) for c in candidates),
        values=values.astype(np.float32),
    )
