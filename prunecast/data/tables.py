"""Read and write the tables the forecast engine takes and gives: CSV or Parquet, by file extension.

pyarrow reads and writes both (multi-threaded C++, several times faster than pandas' CSV code);
a CSV that pyarrow's strict type inference refuses (a stray word in a number column, a header
that is not valid UTF-8) is re-read by pandas, so the panel checks can name the bad cell.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from prunecast.data.errors import DataError

CSV_SUFFIXES = (".csv",)
PARQUET_SUFFIXES = (".parquet", ".pq")


def table_format(path: str | Path) -> str:
    """``"csv"`` or ``"parquet"`` from the file name, or a :class:`DataError` naming the choices."""
    suffix = Path(path).suffix.lower()
    if suffix in CSV_SUFFIXES:
        return "csv"
    if suffix in PARQUET_SUFFIXES:
        return "parquet"
    raise DataError(f"{path}: unknown table format {suffix!r}; use .csv, .parquet or .pq")


def table_columns(path: str | Path) -> list[str] | None:
    """The column names of a Parquet file from its footer (nothing else is read); None for a CSV."""
    import pyarrow as pa

    path = Path(path)
    if table_format(path) != "parquet" or not path.is_file():
        return None
    import pyarrow.parquet as pq

    try:
        return list(pq.read_schema(path).names)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{path}: cannot be read as Parquet ({exc})") from None


def read_table(path: str | Path, dictionary: tuple[str, ...] = ()) -> pd.DataFrame:
    """The table in ``path`` as a DataFrame; timestamps pyarrow recognises arrive parsed.

    ``dictionary`` names Parquet columns to read dictionary-encoded, as Parquet stores strings:
    they arrive as pandas categoricals, without building one string per row.
    """
    import pyarrow as pa

    kind = table_format(path)
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    if kind == "parquet":
        import pyarrow.parquet as pq

        try:
            return pq.read_table(path, read_dictionary=list(dictionary) or None).to_pandas()
        except (pa.ArrowException, OSError) as exc:
            raise DataError(f"{path}: cannot be read as Parquet ({exc})") from None
    import pyarrow.csv as pcsv

    try:
        return pcsv.read_csv(path).to_pandas()
    except pa.ArrowInvalid:
        pass  # a cell that does not fit its column's inferred type, or a non-UTF-8 header: pandas names it
    try:
        return pd.read_csv(path, encoding_errors="replace", low_memory=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise DataError(f"{path}: cannot be read as CSV ({exc})") from None


def write_table(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write ``frame`` to ``path`` (CSV or Parquet by its extension); timestamps in whole seconds stay so."""
    import pyarrow as pa

    kind = table_format(path)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pandas(frame, preserve_index=False)
    if kind == "parquet":
        import pyarrow.parquet as pq

        pq.write_table(table, path)
        return path
    import pyarrow.csv as pcsv

    pcsv.write_csv(_whole_seconds(table), path)
    return path


def _whole_seconds(table):
    """Timestamp columns cast to seconds when no value has a fraction (CSV then reads ``00:10:00``)."""
    import pyarrow as pa

    for i, field in enumerate(table.schema):
        if pa.types.is_timestamp(field.type) and field.type.unit != "s":
            ints = table.column(i).cast(pa.int64()).to_numpy()
            per_second = {"ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}[field.type.unit]
            if not np.any(ints % per_second):
                seconds = pa.timestamp("s", tz=field.type.tz)
                table = table.set_column(i, field.name, table.column(i).cast(seconds))
    return table
