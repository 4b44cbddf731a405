"""A user's panel of series (long or wide table) checked, put on each series' time grid and filled.

:func:`load_panel` turns a DataFrame or a CSV/Parquet file into a :class:`Panel`: every series
sorted by time on its own regular grid, laid end to end in one flat array, with its frequency,
its last timestamp and how many of its values were filled. The work is a handful of whole-panel
array passes, so 10,000 series cost about what their rows do: rows grouped by series (the usual
file) are told apart by comparing each id with the previous one (or by the dictionary codes of
a Parquet id column), and one ``np.diff`` of the timestamps shows whether every series is in
time order, has no repeated timestamp and keeps one step; only rows out of order are sorted,
only series with gaps are divided onto their grid, only calendar or irregular series go to
pandas one by one. Anything that cannot be forecast faithfully is a
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
from prunecast.data.frequency import Frequencies, infer_frequencies, series_steps
from prunecast.data.tables import read_table, table_columns
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


def read_panel(path: str | Path, config: PanelConfig = PanelConfig()) -> pd.DataFrame:
    """The table in ``path``; a long Parquet table's id column read dictionary-encoded (as stored).

    The dictionary codes say which series each row belongs to, so millions of id strings are
    neither built nor compared.
    """
    names = table_columns(path)
    ident = None
    if names is not None:
        ident = resolve_layout(
            names, config.id_column, config.timestamp_column, config.target_column, str(path)
        ).id
    return read_table(path, dictionary=(ident,) if ident else ())


def _load(source: pd.DataFrame | str | Path, config: PanelConfig, where: str) -> Panel:
    frame = source if isinstance(source, pd.DataFrame) else read_panel(source, config)
    start = time.perf_counter()
    layout = resolve_layout(
        list(frame.columns), config.id_column, config.timestamp_column, config.target_column, where
    )
    if len(frame) == 0:
        raise DataError(f"{where}: the table has no rows (empty series)")
    rows, t, tz, values = (_wide if layout.wide else _long)(frame, layout, where)
    ids, counts = rows.ids, rows.counts
    if (counts == 0).any():
        empty = int(np.argmin(counts))
        raise DataError(f"{_series(ids, empty)}: is empty (no values)")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    # rows already grouped by series and in time order (the usual file) cost one pass over the steps
    diffs = series_steps(t, starts) if rows.grouped else None
    if diffs is None or not (diffs > 0).all():
        order = time_order(rows.all_codes(), t)
        if order is not None:
            t, values = t[order], values[order]
            diffs = series_steps(t, starts)
        _check_distinct(diffs, starts, t, ids, tz)

    def describe(i: int) -> str:
        return _series(ids, i)

    freqs = infer_frequencies(t, starts, counts, describe, config.freq, tz, diffs)
    if freqs.positions is None:  # every series is gap-free: its rows are its grid
        grid_starts, grid, slots = starts, values, None
    else:
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
    rows = series_codes(id_col)
    ids = rows.ids
    t, tz = parse_timestamps(
        frame[layout.timestamp], layout.timestamp, lambda row: _series(ids, rows.code(row)), where
    )
    values = parse_numbers(
        frame[layout.targets[0]],
        layout.targets[0],
        lambda row: f"{_series(ids, rows.code(row))} at {stamp(t[row], tz)}",
        where,
    )
    return rows, t, tz, values


@dataclass
class SeriesRows:
    """Which series each row of a table belongs to.

    ``codes`` (each row's series number) is kept only when the rows are not grouped: rows grouped
    by series in order of first appearance, the usual file, are described by ``counts`` alone.
    """

    ids: pd.Index
    """Series ids in order of first appearance."""
    counts: np.ndarray
    codes: np.ndarray | None = None

    @property
    def grouped(self) -> bool:
        """Every series' rows together, the series in order of first appearance."""
        return self.codes is None

    def code(self, row: int) -> int:
        """The series number of data row ``row`` (0-based, file order)."""
        if self.codes is not None:
            return int(self.codes[row])
        return int(np.searchsorted(np.cumsum(self.counts), row, side="right"))

    def all_codes(self) -> np.ndarray:
        if self.codes is None:
            return np.repeat(np.arange(len(self.ids), dtype=np.int64), self.counts)
        return self.codes


def series_codes(column: pd.Series) -> SeriesRows:
    """The series of each row and the series ids in order of first appearance.

    Rows usually come grouped (each series' rows together): then comparing each id with the
    previous one finds the runs, several times faster than hashing millions of strings, and
    pandas' factorize (a hash table) is needed only when an id comes back after another.
    """
    runs = _runs(column)
    if runs is not None:
        starts, firsts = runs
        if firsts.is_unique:
            return SeriesRows(firsts, np.diff(np.append(starts, len(column))))
    codes, uniques = pd.factorize(column, sort=False)
    codes = codes.astype(np.int64)
    if isinstance(uniques.dtype, pd.CategoricalDtype):  # the ids themselves, not a categorical of them
        uniques = uniques.categories.take(uniques.codes)
    grouped = len(codes) < 2 or bool((codes[1:] >= codes[:-1]).all())
    counts = np.bincount(codes, minlength=len(uniques))
    return SeriesRows(pd.Index(uniques), counts, None if grouped else codes)


def _runs(column: pd.Series) -> tuple[np.ndarray, pd.Index] | None:
    """The first row and the id of each run of equal ids (categorical, Arrow-backed or numeric ids);
    None for other types."""
    if isinstance(column.dtype, pd.CategoricalDtype):
        codes = column.cat.codes.to_numpy()
        starts = np.concatenate([[0], np.flatnonzero(codes[1:] != codes[:-1]) + 1]).astype(np.int64)
        return starts, pd.Index(column.cat.categories.take(codes[starts]))
    if pd.api.types.is_numeric_dtype(column.dtype) and not isinstance(column.dtype, pd.ArrowDtype):
        ids = column.to_numpy()
        starts = np.concatenate([[0], np.flatnonzero(ids[1:] != ids[:-1]) + 1]).astype(np.int64)
        return starts, pd.Index(column.iloc[starts])
    if not hasattr(column.dtype, "__from_arrow__"):
        return None
    import pyarrow as pa
    import pyarrow.compute as pc

    starts, firsts, offset, previous = [], [], 0, None
    for chunk in pa.chunked_array(pa.array(column.array)).chunks:
        if not len(chunk):
            continue
        local = np.zeros(1, dtype=np.int64)
        if len(chunk) > 1:
            differ = pc.not_equal(chunk.slice(1), chunk.slice(0, len(chunk) - 1))
            local = np.concatenate([local, pc.indices_nonzero(differ).to_numpy().astype(np.int64) + 1])
        if previous is not None and not pc.not_equal(previous, chunk[0]).as_py():
            local = local[1:]  # the chunk goes on with the previous chunk's last id
        starts.append(local + offset)
        firsts.append(chunk.take(local))
        offset, previous = offset + len(chunk), chunk[len(chunk) - 1]
    if not starts:
        return None
    ids = column.dtype.__from_arrow__(pa.chunked_array(firsts, type=firsts[0].type))
    return np.concatenate(starts), pd.Index(ids)


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
    rows = SeriesRows(pd.Index(layout.targets), keep.sum(axis=1))
    return rows, np.broadcast_to(t, matrix.shape)[keep], tz, matrix[keep]


def _check_distinct(
    diffs: np.ndarray, starts: np.ndarray, t: np.ndarray, ids: pd.Index, tz: str | None
) -> None:
    """A zero step (:func:`series_steps` of the sorted rows) is a timestamp repeated within a series."""
    dup = np.flatnonzero(diffs == 0)
    if dup.size:
        row = int(dup[0])
        series = int(np.searchsorted(starts, row, side="right") - 1)
        raise DataError(f"{_series(ids, series)}: duplicate timestamp {stamp(t[row], tz)}")


def _refuse_missing(grid, slots, grid_starts, missing_per, t, starts, freqs, ids, tz) -> None:
    """The ``fill="error"`` message: the first missing value, whether a NaN cell or an absent timestamp."""
    i = int(np.flatnonzero(missing_per)[0])
    segment = grid[grid_starts[i] : grid_starts[i] + freqs.grid_lengths[i]]
    position = int(np.argmax(np.isnan(segment)))
    when = stamp(freqs.grid_time(i, int(t[starts[i]]), position), tz)
    has_row = np.zeros(len(grid), dtype=bool)
    has_row[slice(None) if slots is None else slots] = True
    kind = "its value is missing (NaN)" if has_row[grid_starts[i] + position] else "no row has this timestamp"
    total = int(missing_per.sum())
    raise DataError(
        f"{_series(ids, i)}: missing value at {when} ({kind}); {total} value(s) missing in "
        f"{int(np.count_nonzero(missing_per))} series; choose a fill policy (ffill, interpolate, zero, "
        "or none for a model that takes NaN)"
    )
