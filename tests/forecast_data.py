"""Panels for the forecast tests, cut from the real benchmark files in ../shared/data."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

DATA = Path(os.environ.get("PRUNECAST_SHARED_DATA", Path(__file__).parents[1].parent / "shared" / "data"))
"""The shared benchmark files beside the repository (CI clones the repo with shared/ beside it);
``PRUNECAST_SHARED_DATA`` points elsewhere, e.g. from a git worktree."""

FILES = {
    "ETTh1": DATA / "ETT-small" / "ETTh1.csv",
    "ETTm1": DATA / "ETT-small" / "ETTm1.csv",
    "weather": DATA / "weather" / "weather.csv",
    "ili": DATA / "national_illness.csv",
}
WEATHER_DUPLICATE_ROW = 19045
"""The shipped weather file repeats its data row 19045 (2020-05-12 06:00:00); rows after it are clean
apart from a 100-minute gap (nine 10-minute timestamps missing before 2020-05-29 09:40:00)."""

requires_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"shared benchmark data not found at {DATA}")

PIECES = (
    # (file, column, first row, rows): different starts, lengths and frequencies
    ("ETTh1", "OT", 0, 700),
    ("ETTh1", "HUFL", 3000, 530),
    ("ETTm1", "OT", 1000, 900),
    ("ETTm1", "LULL", 50000, 600),
    ("weather", "OT", 100, 800),
    ("weather", "T (degC)", 2000, 515),
    ("ili", "OT", 0, 600),
    ("ili", "ILITOTAL", 300, 520),
)
FREQS = {"ETTh1": "h", "ETTm1": "15min", "weather": "10min", "ili": "7D"}


def read_benchmark(name: str) -> pd.DataFrame:
    frame = pd.read_csv(FILES[name])
    frame["date"] = pd.to_datetime(frame["date"])
    return frame


def ragged_panel(pieces=PIECES, columns=("unique_id", "ds", "y"), shuffle: bool = True) -> pd.DataFrame:
    """A long panel: one series per piece, named ``file/column``, rows shuffled unless asked not to."""
    ident, stamp, value = columns
    frames = {name: read_benchmark(name) for name in {p[0] for p in pieces}}
    parts = []
    for name, column, first, rows in pieces:
        src = frames[name].iloc[first : first + rows]
        parts.append(pd.DataFrame({ident: f"{name}/{column}", stamp: src["date"], value: src[column]}))
    panel = pd.concat(parts, ignore_index=True)
    if shuffle:
        panel = panel.sample(frac=1.0, random_state=0).reset_index(drop=True)
    return panel


def expected_tail(pieces, name: str, length: int) -> np.ndarray:
    """The last ``length`` values of the piece called ``name``, straight from its source file."""
    for file, column, first, rows in pieces:
        if f"{file}/{column}" == name:
            values = read_benchmark(file)[column].to_numpy(dtype=np.float64)[first : first + rows]
            return values[-length:]
    raise KeyError(name)


def weather_cut(path: Path, first_row: int = WEATHER_DUPLICATE_ROW + 1, last_row: int = 30000) -> Path:
    """The weather file's own header bytes (not valid UTF-8, CRLF) plus data rows ``first_row..last_row``."""
    lines = FILES["weather"].read_bytes().split(b"\r\n")
    path.write_bytes(b"\r\n".join([lines[0], *lines[first_row : last_row + 1]]) + b"\r\n")
    return path
