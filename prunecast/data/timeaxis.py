"""The checks every table with a time axis gets, panels and benchmark files alike.

Timestamps parsed to UTC-naive int64 ns (an unparseable or empty cell named by its data row),
values parsed to float64 (text and values beyond float32 named), and the permutation that puts
rows in time order. :mod:`prunecast.data.panel` (many series) and :mod:`prunecast.data.csv`
(one time axis shared by every column) both build on these, then on
:func:`prunecast.data.frequency.infer_frequencies` for the grid and its gaps.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from prunecast.data.columns import ID_NAMES
from prunecast.data.errors import DataError

FLOAT32_MAX = float(np.finfo(np.float32).max)
NAT = np.iinfo(np.int64).min
NARROW = (np.dtype(np.float32), np.dtype(np.float16))
NS_PER = {"s": 10**9, "ms": 10**6, "us": 10**3, "ns": 1}


def parse_timestamps(column: pd.Series, name: str, locate, where: str) -> tuple[np.ndarray, str | None]:
    """A timestamp column as UTC-naive int64 ns and its time zone; unparseable or empty cells named."""
    if pd.api.types.is_numeric_dtype(column) or pd.api.types.is_bool_dtype(column):
        raise DataError(
            f"{where}: timestamp column {name!r} holds numbers ({column.dtype}), not dates or times"
        )
    if isinstance(column.dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_dtype(column):
        parsed = column
    else:
        parsed = pd.to_datetime(column, errors="coerce")
        failed = parsed.isna() & column.notna()
        if failed.any():  # more than one format in the column: let pandas read each cell on its own
            retry = pd.to_datetime(column[failed], errors="coerce", format="mixed")
            parsed = parsed.astype(retry.dtype) if retry.dtype != parsed.dtype else parsed
            parsed[failed] = retry
            still = parsed.isna() & column.notna()
            if still.any():
                row = int(np.argmax(still.to_numpy()))
                raise DataError(
                    f"{where}: {locate(row)}: timestamp {column.iloc[row]!r} cannot be parsed as a date/time "
                    f"(column {name!r}, data row {row + 1})"
                )
    tz = None
    if isinstance(parsed.dtype, pd.DatetimeTZDtype):
        tz = str(parsed.dtype.tz)
        parsed = parsed.dt.tz_convert("UTC").dt.tz_localize(None)
    if isinstance(parsed.dtype, pd.ArrowDtype):
        parsed = parsed.astype("datetime64[ns]")
    raw = parsed.to_numpy()
    ints = raw.view(np.int64)
    missing = ints == NAT
    if missing.any():
        row = int(np.argmax(missing))
        raise DataError(f"{where}: {locate(row)}: missing timestamp (column {name!r}, data row {row + 1})")
    return _nanoseconds(ints, np.datetime_data(raw.dtype)[0], name, where), tz


def _nanoseconds(ints: np.ndarray, unit: str, name: str, where: str) -> np.ndarray:
    """Integer timestamps in ``unit`` as int64 ns: a multiply, far cheaper than pandas' unit cast."""
    factor = NS_PER[unit]
    if factor == 1:
        return ints
    limit = np.iinfo(np.int64).max // factor
    if ints.max() > limit or ints.min() < -limit:
        raise DataError(
            f"{where}: timestamp column {name!r} holds dates outside the years 1677-2262 that "
            "nanosecond timestamps cover"
        )
    return ints * factor


def parse_numbers(
    column: pd.Series, name: str, locate, where: str, wide_columns: list | None = None
) -> np.ndarray:
    """A value column as float64 (empty cells NaN); text and values beyond float32 named."""
    if pd.api.types.is_bool_dtype(column):
        raise DataError(f"{where}: column {name!r} holds booleans, not numbers")
    if pd.api.types.is_numeric_dtype(column):
        values = column.to_numpy(dtype=np.float64, na_value=np.nan)
    else:
        numeric = pd.to_numeric(column, errors="coerce")
        bad = numeric.isna() & column.notna() & (column.astype(str).str.strip() != "")
        if bad.any() and numeric.isna().all() and wide_columns is not None:
            raise DataError(
                f"{where}: column {name!r} holds no numbers, so it is no series of a wide table (no id column "
                f"was found among {list(ID_NAMES)}); for a long table set id_column; columns found: {wide_columns}"
            )
        if bad.any():
            row = int(np.argmax(bad.to_numpy()))
            raise DataError(
                f"{where}: {locate(row)}: value {column.iloc[row]!r} is not a number (column {name!r})"
            )
        values = numeric.to_numpy(dtype=np.float64, na_value=np.nan)
    source = column.dtype if isinstance(column.dtype, np.dtype) else None
    with np.errstate(invalid="ignore"):
        # float32 (or narrower) cells hold nothing beyond float32 but infinities: test the smaller array
        beyond = np.isinf(column.to_numpy()) if source in NARROW else np.abs(values) > FLOAT32_MAX
    if beyond.any():
        row = int(np.argmax(beyond))
        raise DataError(
            f"{where}: {locate(row)}: value {float(values[row])!r} is beyond float32 range (column {name!r})"
        )
    return values


def time_order(codes: np.ndarray, t: np.ndarray) -> np.ndarray | None:
    """The permutation that groups rows by series and sorts each by time; None when already so."""
    if len(codes) < 2:
        return None
    same = codes[1:] == codes[:-1]
    if (np.diff(codes) >= 0).all() and (t[1:][same] >= t[:-1][same]).all():
        return None
    return np.lexsort((t, codes))


def stamp(ns: int, tz: str | None) -> pd.Timestamp:
    stamp = pd.Timestamp(int(ns))
    return stamp.tz_localize("UTC").tz_convert(tz) if tz else stamp
