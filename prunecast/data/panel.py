"""A user's panel of series (long or wide table) checked, put on each series' time grid and filled.

:func:`load_panel` turns a DataFrame or a CSV/Parquet file into a :class:`Panel`: every series
sorted by time on its own regular grid, laid end to end in one flat array, with its frequency,
its last timestamp and how many of its values were filled. The work is a handful of whole-panel
array passes (factorize, one sort when the rows are not in order, reductions over segments), so
10,000 series cost about what their rows do. Anything that cannot be forecast faithfully is a
:class:`DataError` naming the series, the timestamp and the problem.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from prunecast.common.defaults import FILL_POLICIES
from prunecast.data.columns import Layout, resolve_layout
from prunecast.data.errors import DataError
from prunecast.data.fill import fill_segments
from prunecast.data.frequency import Frequencies, infer_frequencies
from prunecast.data.tables import read_table
from prunecast.data.timeaxis import parse_numbers, parse_timestamps, stamp, time_order

WIDE_ID_COLUMN = "unique_id"
"""The id column of the forecasts of a wide table: it holds each series' source column name."""
PAD_MODES = ("error", "first", "nan")


@dataclass(frozen=True)
class PanelConfig:
    """How to read a panel. Column names left None are detected (see :mod:`prunecast.data.columns`)."""

    id_column: str | None = None
    timestamp_column: str | None = None
    target_column: str | list[str] | None = None
    freq: str | None = None
    """A pandas alias (``10min``, ``h``, ``D``, ``W``, ``MS``) for every series instead of inferring."""
    fill: str = "error"

    def __post_init__(self) -> None:
        if self.fill not in FILL_POLICIES:
            raise DataError(f"fill must be one of {FILL_POLICIES}, got {self.fill!r}")


@dataclass
class Panel:
    """Series ``i`` is ``values[starts[i] : starts[i] + lengths[i]]``, one value per grid step."""

    ids: pd.Index
    """Series ids in order of first appearance (a wide table's: its column names)."""
    id_name: str
    timestamp_name: str
    values: np.ndarray
    starts: np.ndarray
    lengths: np.ndarray
    last: np.ndarray
    """Each series' last timestamp (ns, UTC-naive)."""
    frequencies: Frequencies
    filled: np.ndarray
    """Values filled in each series (NaN cells plus grid timestamps with no row); under
    ``fill="none"``, the values left missing."""
    rows: int
    seconds: dict[str, float] = field(default_factory=dict)
    """Time spent per stage: ``validate`` (columns, parsing, checks, grid) and ``fill``."""

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def tz(self) -> str | None:
        return self.frequencies.tz

    def fill_report(self) -> dict[str, int]:
        """``{series id: values filled}`` for the series that had any."""
        hit = np.flatnonzero(self.filled)
        return {str(self.ids[i]): int(self.filled[i]) for i in hit}

    def contexts(self, length: int, pad: str = "error") -> np.ndarray:
        """The last ``length`` grid values of every series, ``[N, length]`` float32 C-contiguous.

        A shorter series is an error listing the short series (``pad="error"``), left-padded
        with its first value (``"first"``) or with NaN, which a model that masks NaN ignores
        (``"nan"``).
        """
        if pad not in PAD_MODES:
            raise ValueError(f"pad must be one of {PAD_MODES}, got {pad!r}")
        short = np.flatnonzero(self.lengths < length)
        if short.size and pad == "error":
            listed = ", ".join(f"{_id(self.ids, i)!r} ({self.lengths[i]})" for i in short[:10])
            more = f" and {short.size - 10} more" if short.size > 10 else ""
            raise DataError(
                f"{short.size} series are shorter than the model's context length {length}: {listed}{more}; "
                "pass pad to left-pad them with their first value"
            )
        ends = self.starts + self.lengths
        index = ends[:, None] + np.arange(-length, 0, dtype=np.int64)
        if not short.size:
            return np.ascontiguousarray(self.values[index], dtype=np.float32)
        before = index < self.starts[:, None]
        index = np.where(before, self.starts[:, None], index)
        batch = self.values[index].astype(np.float32)
        if pad == "nan":
            batch[before] = np.nan
        return np.ascontiguousarray(batch)

    def future_timestamps(self, horizon: int) -> pd.DatetimeIndex | pd.Series:
        """The ``horizon`` timestamps after each series' last one, flat ``[N * horizon]``, in the input's zone."""
        ints = self.frequencies.future(self.last, horizon).ravel()
        stamps = pd.DatetimeIndex(ints.view("datetime64[ns]"))
        return stamps.tz_localize("UTC").tz_convert(self.tz) if self.tz else stamps


def load_panel(
    source: pd.DataFrame | str | Path, config: PanelConfig = PanelConfig(), where: str | None = None
) -> Panel:
    """Read, check, grid and fill a panel from a DataFrame or a CSV/Parquet file.

    ``where`` names the data in messages (default: the file, or ``data`` for a DataFrame).
    """
    where = where or ("data" if isinstance(source, pd.DataFrame) else str(source))
    try:
        return _load(source, config, where)
    except DataError as exc:
        if str(exc).startswith(where):
            raise
        raise DataError(f"{where}: {exc}") from None


def _load(source: pd.DataFrame | str | Path, config: PanelConfig, where: str) -> Panel:
    frame = source if isinstance(source, pd.DataFrame) else read_table(source)
    start = time.perf_counter()
    layout = resolve_layout(
        list(frame.columns), config.id_column, config.timestamp_column, config.target_column, where
    )
    if len(frame) == 0:
        raise DataError(f"{where}: the table has no rows (empty series)")
    codes, ids, t, tz, values = (_wide if layout.wide else _long)(frame, layout, where)
    order = time_order(codes, t)
    if order is not None:
        codes, t, values = codes[order], t[order], values[order]
    counts = np.bincount(codes, minlength=len(ids))
    if (counts == 0).any():
        empty = int(np.argmin(counts))
        raise DataError(f"{_series(ids, empty)}: is empty (no values)")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    _check_distinct(codes, t, ids, tz)

    def describe(i: int) -> str:
        return _series(ids, i)

    freqs = infer_frequencies(t, starts, counts, describe, config.freq, tz)
    grid_starts = np.concatenate([[0], np.cumsum(freqs.grid_lengths)[:-1]]).astype(np.int64)
    grid = np.full(int(freqs.grid_lengths.sum()), np.nan)
    slots = np.repeat(grid_starts, counts) + freqs.positions
    grid[slots] = values
    missing = np.isnan(grid)
    missing_per = np.add.reduceat(missing, grid_starts) if missing.any() else np.zeros(len(ids), np.int64)
    empty = np.flatnonzero(missing_per == freqs.grid_lengths)
    if empty.size:
        raise DataError(f"{describe(int(empty[0]))}: has no values (every value is missing; empty series)")
    validated = time.perf_counter()
    if missing_per.any() and config.fill == "error":
        _refuse_missing(grid, slots, grid_starts, missing_per, t, starts, freqs, ids, tz)
    if missing_per.any() and config.fill != "none":
        grid = fill_segments(grid, grid_starts, freqs.grid_lengths, config.fill)
    filled = time.perf_counter()
    return Panel(
        ids=ids,
        id_name=WIDE_ID_COLUMN if layout.wide else str(layout.id),
        timestamp_name=str(layout.timestamp),
        values=grid,
        starts=grid_starts,
        lengths=freqs.grid_lengths,
        last=t[starts + counts - 1],
        frequencies=freqs,
        filled=missing_per.astype(np.int64),
        rows=int(len(t)),
        seconds={"validate": validated - start, "fill": filled - validated},
    )


def _series(ids: pd.Index, i: int) -> str:
    return f"series {_id(ids, i)!r}"


def _id(ids: pd.Index, i: int):
    """Series id ``i`` as a plain Python value (``3``, not ``np.int64(3)``) for messages and reports."""
    value = ids[int(i)]
    return value.item() if isinstance(value, np.generic) else value


def _long(frame: pd.DataFrame, layout: Layout, where: str):
    """Long table columns as (series codes, unique ids, ns timestamps, tz, float64 values)."""
    id_col = frame[layout.id]
    if id_col.isna().any():
        row = int(np.argmax(id_col.isna().to_numpy()))
        raise DataError(f"{where}: row {row + 1} has no series id (column {layout.id!r} is empty there)")
    codes, uniques = pd.factorize(id_col, sort=False)
    ids = pd.Index(uniques)
    codes = codes.astype(np.int64)
    t, tz = parse_timestamps(
        frame[layout.timestamp], layout.timestamp, lambda row: _series(ids, codes[row]), where
    )
    values = parse_numbers(
        frame[layout.targets[0]],
        layout.targets[0],
        lambda row: f"{_series(ids, codes[row])} at {stamp(t[row], tz)}",
        where,
    )
    return codes, ids, t, tz, values


def _wide(frame: pd.DataFrame, layout: Layout, where: str):
    """Wide table columns, each trimmed to its first..last non-empty cell, laid out as a long panel."""
    t, tz = parse_timestamps(frame[layout.timestamp], layout.timestamp, lambda row: f"row {row + 1}", where)
    columns = [
        parse_numbers(
            frame[c], c, lambda row, c=c: f"series {c!r} at {stamp(t[row], tz)}", where, list(frame.columns)
        )
        for c in layout.targets
    ]
    matrix = np.stack(columns, axis=0)  # [C, T]
    observed = ~np.isnan(matrix)
    has_any = observed.any(axis=1)
    if not has_any.all():
        raise DataError(f"series {layout.targets[int(np.argmin(has_any))]!r}: is empty (no values)")
    # the series spans its first to its last observed row in time order, whatever the file order
    order = np.argsort(t, kind="stable")
    ranked = observed[:, order]
    first = t[order][np.argmax(ranked, axis=1)]
    last = t[order][ranked.shape[1] - 1 - np.argmax(ranked[:, ::-1], axis=1)]
    keep = (t[None, :] >= first[:, None]) & (t[None, :] <= last[:, None])
    codes = np.broadcast_to(np.arange(len(columns))[:, None], matrix.shape)[keep]
    ids = pd.Index(layout.targets)
    return codes.astype(np.int64), ids, np.broadcast_to(t, matrix.shape)[keep], tz, matrix[keep]


def _check_distinct(codes: np.ndarray, t: np.ndarray, ids: pd.Index, tz: str | None) -> None:
    dup = np.flatnonzero((codes[1:] == codes[:-1]) & (t[1:] == t[:-1]))
    if dup.size:
        row = int(dup[0])
        raise DataError(f"{_series(ids, codes[row])}: duplicate timestamp {stamp(t[row], tz)}")


def _refuse_missing(grid, slots, grid_starts, missing_per, t, starts, freqs, ids, tz) -> None:
    """The ``fill="error"`` message: the first missing value, whether a NaN cell or an absent timestamp."""
    i = int(np.flatnonzero(missing_per)[0])
    segment = grid[grid_starts[i] : grid_starts[i] + freqs.grid_lengths[i]]
    position = int(np.argmax(np.isnan(segment)))
    when = stamp(freqs.grid_time(i, int(t[starts[i]]), position), tz)
    has_row = np.zeros(len(grid), dtype=bool)
    has_row[slots] = True
    kind = "its value is missing (NaN)" if has_row[grid_starts[i] + position] else "no row has this timestamp"
    total = int(missing_per.sum())
    raise DataError(
        f"{_series(ids, i)}: missing value at {when} ({kind}); {total} value(s) missing in "
        f"{int(np.count_nonzero(missing_per))} series; choose a fill policy (ffill, interpolate, zero, "
        "or none for a model that takes NaN)"
    )
