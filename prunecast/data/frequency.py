"""Each series' sampling frequency, as a pandas offset, and every row's place on that series' grid.

A series whose steps are all equal (the common case, decided for the whole panel at once: its
smallest step times its length equals its span) gets that step as a fixed offset (``10min``, ``h``,
``7D``), and its rows are its grid, so nothing is divided or scattered. Any other series
is asked of ``pandas.infer_freq``; when gaps defeat that, the candidates are the most common step
and, for month/quarter/year-like and daily steps, the calendar offsets (``MS``, ``ME``, ``QS``,
``QE``, ``YS``, ``YE``, ``B``); the one that explains every timestamp on the smallest grid wins.
Nothing explains the timestamps: a :class:`DataError` naming the series and the first timestamp
off the grid.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
from pandas.tseries.frequencies import to_offset
from pandas.tseries.offsets import BaseOffset, Tick

from prunecast.data.errors import DataError

DAY_NS = 86_400 * 10**9
CALENDAR_CANDIDATES = (
    ((28, 31), ("MS", "ME")),
    ((89, 92), ("QS", "QE")),
    ((365, 366), ("YS", "YE")),
    ((1, 1), ("B",)),
)
"""Step lengths in days for which a calendar offset may be what the data follows."""
STEP_MAX = np.iinfo(np.int64).max
MAX_GRID_GROWTH = 100
"""A grid this many times longer than a series' rows means a wrong ``freq`` (e.g. seconds for daily data)."""


@dataclass
class Frequencies:
    """Per series: a fixed step in ns (``steps``, 0 where ``calendar`` holds a calendar offset instead)."""

    steps: np.ndarray
    calendar: dict[int, BaseOffset]
    positions: np.ndarray | None
    """Every row's index on its series' grid (0 for the series' first timestamp); None when no
    series has a gap, so every row is its own grid step."""
    grid_lengths: np.ndarray
    tz: str | None = None

    def names(self) -> list[str]:
        """Each series' frequency as a pandas alias (``10min``, ``h``, ``MS``)."""
        unique, inverse = np.unique(self.steps, return_inverse=True)
        aliases = [alias(int(s)) if s else "" for s in unique]
        out = [aliases[k] for k in inverse]
        for i, offset in self.calendar.items():
            out[i] = offset.freqstr
        return out

    def grid_time(self, series: int, first: int, position: int) -> int:
        """The timestamp (ns, UTC-naive) of ``position`` on a series' grid that starts at ``first``."""
        if series in self.calendar:
            offset = self.calendar[series]
            return _ints(pd.date_range(_index([first], self.tz)[0], periods=position + 1, freq=offset))[-1]
        return first + position * int(self.steps[series])

    def future(self, last: np.ndarray, horizon: int) -> np.ndarray:
        """``[N, horizon]`` ns timestamps, the ``horizon`` grid steps after each series' ``last`` one."""
        out = last[:, None] + self.steps[:, None] * np.arange(1, horizon + 1, dtype=np.int64)
        for i, offset in self.calendar.items():
            start = _index([int(last[i])], self.tz)[0]
            out[i] = _ints(pd.date_range(start, periods=horizon + 1, freq=offset))[1:]
        return out


def alias(step: int) -> str:
    """A fixed step in ns as a pandas alias, whole days as days (``7D``, not ``168h``)."""
    if step % DAY_NS == 0:
        return to_offset(f"{step // DAY_NS}D").freqstr
    return to_offset(pd.Timedelta(step)).freqstr


def infer_frequencies(
    t: np.ndarray,
    starts: np.ndarray,
    lengths: np.ndarray,
    describe: Callable[[int], str],
    freq: str | None = None,
    tz: str | None = None,
    diffs: np.ndarray | None = None,
) -> Frequencies:
    """Frequencies of the series ``t[start : start + length]`` (sorted, distinct ns timestamps).

    ``describe(i)`` names series ``i`` in messages; ``freq`` (a pandas alias) overrides inference
    for every series; ``tz`` is the time zone the UTC-naive ``t`` came from (calendar offsets
    follow local dates); ``diffs`` is :func:`series_steps` of ``t`` when the caller has it.
    """
    n_series = len(starts)
    steps = np.zeros(n_series, dtype=np.int64)
    calendar: dict[int, BaseOffset] = {}
    diffs = series_steps(t, starts) if diffs is None else diffs
    ends = starts + lengths - 1
    span = t[ends] - t[starts]
    low = _min_steps(diffs, starts, lengths)
    if freq is not None:
        try:
            offset = to_offset(freq)
        except ValueError:
            raise DataError(
                f"freq {freq!r} is not a pandas frequency alias (e.g. 10min, h, D, W, MS)"
            ) from None
        if isinstance(offset, Tick):
            steps[:] = offset.nanos
            gap_free = (lengths == 1) | ((low == offset.nanos) & (span == (lengths - 1) * offset.nanos))
        else:
            calendar = dict.fromkeys(range(n_series), offset)
            gap_free = np.zeros(n_series, dtype=bool)
    else:
        single = np.flatnonzero(lengths < 2)
        if single.size:
            raise DataError(
                f"{describe(int(single[0]))}: has a single timestamp, so its frequency cannot be "
                "inferred; pass freq"
            )
        # every step is at least ``low``; they sum to ``span``; so all equal ``low`` iff this holds
        gap_free = (span == (lengths - 1) * low) & (low < 28 * DAY_NS)
        steps[gap_free] = low[gap_free]
        for i in np.flatnonzero(~gap_free):
            one = _infer_one(t[starts[i] : starts[i] + lengths[i]], describe(int(i)), tz)
            if isinstance(one, Tick):
                steps[i] = one.nanos
            else:
                calendar[int(i)] = one
    if gap_free.all():
        return Frequencies(steps, calendar, None, lengths.copy(), tz)
    positions = np.arange(len(t), dtype=np.int64) - np.repeat(starts, lengths)
    ticked = ~gap_free & (steps > 0)
    if ticked.any():
        rows = np.flatnonzero(np.repeat(ticked, lengths))
        positions[rows] = _tick_positions(t, starts, lengths, steps, rows, describe)
    for i, offset in calendar.items():
        segment = slice(starts[i], starts[i] + lengths[i])
        positions[segment] = _calendar_positions(t[segment], offset, describe(i), tz)
    grid_lengths = positions[ends] + 1
    too_long = np.flatnonzero(grid_lengths > MAX_GRID_GROWTH * lengths + 1000)
    if too_long.size:
        i = int(too_long[0])
        raise DataError(
            f"{describe(i)}: {lengths[i]} timestamps would span {grid_lengths[i]} steps of the frequency; "
            "is freq right?"
        )
    return Frequencies(steps, calendar, positions, grid_lengths, tz)


def series_steps(t: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """``np.diff(t)`` with the step from one series' last row to the next one's first set to int64 max.

    Rows grouped by series and sorted in time: every entry is then positive, a 0 is a duplicate
    timestamp and a negative one a row out of time order.
    """
    diffs = np.diff(t)
    diffs[starts[1:] - 1] = STEP_MAX
    return diffs


def _min_steps(diffs: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Each series' smallest step (:func:`series_steps`), int64 max for a single timestamp."""
    low = np.full(len(starts), STEP_MAX, dtype=np.int64)
    some = lengths > 1
    if some.any():
        # a series' reduceat segment runs to the next start: its own steps plus the masked boundary
        low[some] = np.minimum.reduceat(diffs, starts[some])
    return low


def _tick_positions(t, starts, lengths, steps, rows, describe) -> np.ndarray:
    """Grid index of ``rows`` (all in fixed-step series), or an error for the first off the grid."""
    first = np.repeat(t[starts], lengths)[rows]
    step = np.repeat(steps, lengths)[rows]
    positions, remainder = np.divmod(t[rows] - first, step)
    off = np.flatnonzero(remainder != 0)
    if off.size:
        row = int(rows[off[0]])
        i = int(np.searchsorted(starts, row, side="right") - 1)
        raise DataError(
            f"{describe(i)}: timestamp {pd.Timestamp(int(t[row]))} is not on the "
            f"{alias(int(steps[i]))} grid that starts at {pd.Timestamp(int(t[starts[i]]))} "
            "(irregular spacing; pass freq, or fix the timestamps)"
        )
    return positions


def _infer_one(t: np.ndarray, name: str, tz: str | None) -> BaseOffset:
    """The offset of one series whose steps differ: pandas' inference, else the best-fitting candidate."""
    index = _index(t, tz)
    if len(index) >= 3:
        alias = pd.infer_freq(index)
        if alias is not None:
            return to_offset(alias)
    steps, counts = np.unique(np.diff(t), return_counts=True)
    common = int(steps[np.argmax(counts)])
    days = common / DAY_NS
    candidates = [
        alias for (low, high), aliases in CALENDAR_CANDIDATES if low <= days <= high for alias in aliases
    ]
    best, best_size = None, None
    for alias in candidates:
        grid = pd.date_range(index[0], index[-1], freq=alias)
        if len(grid) and grid[0] == index[0] and np.isin(t, _ints(grid)).all():
            if best_size is None or len(grid) < best_size:
                best, best_size = to_offset(alias), len(grid)
    if best is not None:
        return best
    tick = to_offset(pd.Timedelta(common))
    off = np.flatnonzero((t - t[0]) % common)
    if not off.size:
        return tick
    raise DataError(
        f"{name}: timestamp {index[int(off[0])]} is not on the {tick.freqstr} grid (its most common step) "
        f"that starts at {index[0]}, and no calendar frequency explains the timestamps (irregular spacing; "
        "pass freq, or fix the timestamps)"
    )


def _calendar_positions(t: np.ndarray, offset: BaseOffset, name: str, tz: str | None) -> np.ndarray:
    index = _index(t, tz)
    grid = _ints(pd.date_range(index[0], index[-1], freq=offset))
    positions = np.searchsorted(grid, t)
    inside = positions < len(grid)
    on_grid = inside & (grid[np.minimum(positions, len(grid) - 1)] == t)
    if not on_grid.all():
        row = int(np.argmin(on_grid))
        raise DataError(
            f"{name}: timestamp {index[row]} is not on the {offset.freqstr} grid that starts at {index[0]} "
            "(irregular spacing; pass freq, or fix the timestamps)"
        )
    return positions


def _index(t, tz: str | None) -> pd.DatetimeIndex:
    """UTC-naive ns integers as a DatetimeIndex in the data's own time zone."""
    index = pd.DatetimeIndex(np.asarray(t, dtype="datetime64[ns]"))
    return index.tz_localize("UTC").tz_convert(tz) if tz else index


def _ints(index: pd.DatetimeIndex) -> np.ndarray:
    """A DatetimeIndex back to UTC-naive ns integers."""
    if index.tz is not None:
        index = index.tz_convert("UTC").tz_localize(None)
    return index.as_unit("ns").asi8
