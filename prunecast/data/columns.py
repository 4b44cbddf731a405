"""Which columns of a user's table hold the series ids, the timestamps and the values.

Long tables follow one of the common conventions (Nixtla ``unique_id/ds/y``, AutoGluon and
GluonTS ``item_id/timestamp/target``, or ``id/timestamp/value``) unless the caller names the
columns; a table with a timestamp column and no id column is wide (one series per column). A
guess that could go two ways is an error listing the columns found, never a silent pick.
"""

from __future__ import annotations

from dataclasses import dataclass

from prunecast.data.errors import DataError

ID_NAMES = ("unique_id", "item_id", "id")
TIMESTAMP_NAMES = ("ds", "timestamp", "date", "time", "datetime")
TARGET_NAMES = ("y", "target", "value")


@dataclass(frozen=True)
class Layout:
    """Where the data is: ``targets`` are the value column (long) or the series columns (wide)."""

    wide: bool
    timestamp: str
    targets: tuple[str, ...]
    id: str | None = None


def resolve_layout(
    columns: list,
    id_column: str | None = None,
    timestamp_column: str | None = None,
    target_column: str | list[str] | None = None,
    where: str = "data",
) -> Layout:
    """The layout of a table with ``columns``: named columns must exist, detected ones must be unique."""
    found = [str(c) for c in columns]
    listing = f"columns found: {found}"
    for name in [id_column, timestamp_column, *_as_list(target_column)]:
        if name is not None and name not in found:
            raise DataError(f"{where}: no column {name!r}; {listing}")
    ident = id_column or _detect(found, ID_NAMES, "series id", where, listing)
    stamp = timestamp_column or _detect(found, TIMESTAMP_NAMES, "timestamp", where, listing)
    if stamp is None:
        raise DataError(
            f"{where}: cannot tell the timestamp column (none of {list(TIMESTAMP_NAMES)}); "
            f"set timestamp_column; {listing}"
        )
    if ident is None:  # wide: every other column is a series unless target_column picks some
        targets = _as_list(target_column) or [c for c in found if c != stamp]
        if not targets:
            raise DataError(f"{where}: no series columns besides the timestamp column {stamp!r}")
        if stamp in targets:
            raise DataError(f"{where}: column {stamp!r} cannot be both the timestamp and a series")
        return Layout(wide=True, timestamp=stamp, targets=tuple(targets))
    targets = _as_list(target_column)
    if not targets:
        value = _detect(found, TARGET_NAMES, "target", where, listing)
        if value is None:
            raise DataError(
                f"{where}: long table (id column {ident!r}) but cannot tell the target column "
                f"(none of {list(TARGET_NAMES)}); set target_column; {listing}"
            )
        targets = [value]
    if len(targets) != 1:
        raise DataError(f"{where}: a long table takes one target column, got {targets}")
    if len({ident, stamp, targets[0]}) != 3:
        raise DataError(
            f"{where}: the id, timestamp and target columns must differ, got {ident!r}, {stamp!r}, {targets[0]!r}"
        )
    return Layout(wide=False, timestamp=stamp, targets=tuple(targets), id=ident)


def _as_list(names: str | list[str] | tuple[str, ...] | None) -> list[str]:
    if names is None:
        return []
    return [names] if isinstance(names, str) else list(names)


def _detect(found: list[str], names: tuple[str, ...], role: str, where: str, listing: str) -> str | None:
    """The one column whose name (case and spaces aside) is a known ``role`` name, None if none is."""
    hits = [c for c in found if c.strip().lower() in names]
    if len(hits) > 1:
        raise DataError(f"{where}: more than one {role} column ({hits}); name the one to use; {listing}")
    return hits[0] if hits else None
