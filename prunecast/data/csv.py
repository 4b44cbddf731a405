"""Load a benchmark file: one time column plus numeric series columns sharing that time axis.

A benchmark file gets the same time-axis checks as a forecast panel (:mod:`prunecast.data.timeaxis`,
:mod:`prunecast.data.frequency`): its rows are used in time order, never in file order when the two
differ (rows out of order are sorted by time, with a warning); a repeated, unparseable or missing
timestamp (a gap in the file's inferred regular frequency), a value beyond float32 and a NaN cell
are a :class:`DataError` naming the file, the data row (1-based, header excluded) and the timestamp.
Files with known defects (the shipped weather.csv repeats one timestamp and skips nine) load only
under an explicit :class:`TimeAxisPolicy`, which the error message names.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from prunecast.data.errors import DataError
from prunecast.data.fill import FILLERS, fill_segments
from prunecast.data.frequency import infer_frequencies
from prunecast.data.tables import read_table
from prunecast.data.timeaxis import parse_numbers, parse_timestamps, stamp

__all__ = [
    "BUNDLED",
    "STRICT",
    "Benchmark",
    "DataError",
    "TimeAxisPolicy",
    "load_benchmark",
    "resolve_data_path",
]

BUNDLED = {"ETTh1": "ETTh1.csv"}
"""Benchmarks shipped inside the package, addressable by name (``--data ETTh1``)."""

DATE_COLUMNS = ("date", "timestamp", "time", "datetime")
DUPLICATE_POLICIES = ("error", "first")
GAP_POLICIES = ("error", *FILLERS)
LISTED = 5
"""How many repeated timestamps or gaps a message lists before counting the rest."""


class DataWarning(UserWarning):
    """A benchmark file was used after a repair it asked for (rows sorted) or its policy allowed."""


@dataclass(frozen=True)
class TimeAxisPolicy:
    """What :func:`load_benchmark` does with a defective time axis. The defaults refuse, naming the rows.

    ``duplicates="first"`` keeps the first row (in file order) of each repeated timestamp and
    drops the others; ``fill`` (``ffill``, ``interpolate``, ``zero``) puts the timestamps missing
    from the regular grid back, filling every column there as ``prunecast forecast --fill`` does.
    Either repair changes the row count and so the split borders a little; it is reported as a
    :class:`DataWarning` and in :attr:`Benchmark.notes`.
    """

    duplicates: str = "error"
    fill: str = "error"

    def __post_init__(self) -> None:
        if self.duplicates not in DUPLICATE_POLICIES:
            raise DataError(f"duplicates must be one of {DUPLICATE_POLICIES}, got {self.duplicates!r}")
        if self.fill not in GAP_POLICIES:
            raise DataError(f"fill must be one of {GAP_POLICIES}, got {self.fill!r}")


STRICT = TimeAxisPolicy()
"""The default: every defect of a time axis is an error naming its rows."""


@dataclass(frozen=True)
class Benchmark:
    """A loaded benchmark: ``values`` is ``[T, C]`` float32 in time order, one column per series."""

    name: str
    path: Path
    columns: tuple[str, ...]
    values: np.ndarray
    freq: str = ""
    """The time axis' frequency as a pandas alias (``h``, ``15min``, ``7D``)."""
    notes: tuple[str, ...] = ()
    """What was repaired on the way in (rows sorted, duplicates dropped, gaps filled), one line each."""

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


def load_benchmark(
    data: str | Path, columns: list[str] | None = None, policy: TimeAxisPolicy = STRICT
) -> Benchmark:
    """Read a benchmark CSV (or Parquet) and check its time axis and every value.

    ``columns`` picks series by name; by default every column but the time column is a series.
    Rows not in time order are sorted by time (a :class:`DataWarning` says so): a benchmark's
    windows and splits are only meaningful in time order, and sorting loses nothing.
    """
    path = resolve_data_path(data)
    where = str(path)
    frame = read_table(path)
    if frame.shape[0] == 0:
        raise DataError(f"{where}: has a header but no rows")
    date_cols = [c for c in frame.columns if str(c).strip().lower() in DATE_COLUMNS]
    if len(date_cols) > 1:
        raise DataError(f"{where}: more than one time column ({date_cols})")
    candidates = [c for c in frame.columns if c not in date_cols]
    if columns is not None:
        unknown = [c for c in columns if c not in candidates]
        if unknown:
            raise DataError(f"{where}: unknown column(s) {unknown}; available: {candidates}")
        candidates = list(columns)
    if not candidates:
        raise DataError(f"{where}: no numeric columns besides the date column")
    if not date_cols:
        raise DataError(
            f"{where}: no time column (one of {list(DATE_COLUMNS)}), so the rows' time order cannot be "
            f"checked; columns found: {[str(c) for c in frame.columns]}"
        )
    t, tz = parse_timestamps(frame[date_cols[0]], str(date_cols[0]), lambda row: "time axis", where)

    def at(row: int) -> str:
        return f"data row {row + 1} ({stamp(t[row], tz)})"

    values = np.stack([parse_numbers(frame[c], str(c), at, where) for c in candidates], axis=1)
    if np.isnan(values).any():
        row, col = np.argwhere(np.isnan(values))[0]
        raise DataError(f"{where}: column {candidates[col]!r} has NaN at {at(int(row))}")
    rows = np.arange(len(t))
    notes: list[str] = []
    backwards = np.diff(t) < 0
    if backwards.any():
        k = int(np.argmax(backwards))
        order = np.argsort(t, kind="stable")
        notes.append(
            f"{where}: rows are not in time order (data row {k + 2} at {stamp(t[k + 1], tz)} follows "
            f"{at(k)}); sorted by time"
        )
        t, values, rows = t[order], values[order], rows[order]
    t, values, rows = _repeated(t, values, rows, tz, where, policy, notes)
    values, freq = _gaps(t, values, rows, tz, where, policy, notes)
    for note in notes:
        warnings.warn(note, DataWarning, stacklevel=2)
    return Benchmark(
        name=path.stem,
        path=path,
        columns=tuple(str(c) for c in candidates),
        values=np.asfortranarray(values, dtype=np.float32),  # a column per series, as pandas lays it out
        freq=freq,
        notes=tuple(notes),
    )


def _repeated(t, values, rows, tz, where, policy, notes):
    """Rows whose timestamp repeats the previous row's: an error, or dropped under ``duplicates="first"``."""
    dup = np.flatnonzero(t[1:] == t[:-1])
    if not dup.size:
        return t, values, rows
    listed = "; ".join(
        f"{stamp(t[d], tz)} at data rows {rows[d] + 1} and {rows[d + 1] + 1}" for d in dup[:LISTED]
    )
    more = f" and {dup.size - LISTED} more" if dup.size > LISTED else ""
    if policy.duplicates == "error":
        raise DataError(
            f"{where}: duplicate timestamp {listed}{more}; to keep the first row of each repeated "
            "timestamp pass duplicates='first' (--duplicates first)"
        )
    keep = np.ones(len(t), dtype=bool)
    keep[dup + 1] = False
    notes.append(
        f"{where}: duplicate timestamp {listed}{more}; kept the first row of each (duplicates=first)"
    )
    return t[keep], values[keep], rows[keep]


def _gaps(t, values, rows, tz, where, policy, notes) -> tuple[np.ndarray, str]:
    """The values on the time axis' regular grid: missing timestamps an error, or filled by ``policy.fill``."""
    freqs = infer_frequencies(t, np.array([0]), np.array([len(t)]), lambda i: where, tz=tz)
    freq = freqs.names()[0]
    size = int(freqs.grid_lengths[0])
    if size == len(t):
        return values, freq
    positions = freqs.positions
    jumps = np.flatnonzero(np.diff(positions) > 1)
    listed = "; ".join(_gap(freqs, t, positions, rows, j, tz) for j in jumps[:LISTED])
    more = f" and {jumps.size - LISTED} more gaps" if jumps.size > LISTED else ""
    what = f"{size - len(t)} timestamp(s) missing from its {freq} grid: {listed}{more}"
    if policy.fill == "error":
        raise DataError(
            f"{where}: {what}; to fill them pass fill='interpolate' (--fill interpolate; or ffill, zero)"
        )
    grid = np.full((size, values.shape[1]), np.nan)
    grid[positions] = values
    channels = values.shape[1]
    flat = fill_segments(grid.T.ravel(), np.arange(channels) * size, np.full(channels, size), policy.fill)
    notes.append(f"{where}: {what}; filled (fill={policy.fill})")
    return flat.reshape(channels, size).T, freq


def _gap(freqs, t, positions, rows, j: int, tz) -> str:
    """The gap after sorted row ``j``: its first and last missing timestamp and the data rows around it."""
    first, last = (
        stamp(freqs.grid_time(0, int(t[0]), int(p)), tz) for p in (positions[j] + 1, positions[j + 1] - 1)
    )
    count = int(positions[j + 1] - positions[j] - 1)
    return f"{first} to {last} ({count}, between data rows {rows[j] + 1} and {rows[j + 1] + 1})"
