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
    if parsed.isna().any():
        row = int(np.argmax(parsed.isna().to_numpy()))
        raise DataError(f"{where}: {locate(row)}: missing timestamp (column {name!r}, data row {row + 1})")
    tz = None
    if isinstance(parsed.dtype, pd.DatetimeTZDtype):
        tz = str(parsed.dtype.tz)
        parsed = parsed.dt.tz_convert("UTC").dt.tz_localize(None)
    return parsed.to_numpy(dtype="datetime64[ns]").view(np.int64), tz


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
    with np.errstate(invalid="ignore"):
        beyond = np.abs(values) > FLOAT32_MAX
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
