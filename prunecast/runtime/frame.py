"""Forecast a user's panel (a DataFrame, or a CSV/Parquet file) into a long table of future-stamped rows.

The data path is :mod:`prunecast.data.panel` (checks, time grid, fill); this module cuts each
series' last ``context_length`` grid values into one batch, runs the model over it in chunks of
``batch_size``, and lays the forecasts out as rows ``(id, timestamp, forecast[, q0.1 ... q0.9])``,
the ``horizon`` timestamps after each series' last one at its own frequency. Torch-free, like
the rest of the runtime. :func:`forecast_file` is what ``prunecast forecast`` runs, and reports
the seconds of every stage.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from prunecast.common.defaults import NAN_CONTEXT_FAMILIES
from prunecast.common.progress import progress
from prunecast.data.errors import DataError
from prunecast.data.panel import Panel, PanelConfig, load_panel, read_panel
from prunecast.data.tables import table_format, write_table
from prunecast.export.manifest import FORECAST, QUANTILES

if TYPE_CHECKING:
    from prunecast.runtime.forecaster import Forecaster

FORECAST_COLUMN = "forecast"
PROGRESS_MIN_SERIES = 2048
"""Panels at least this large get a progress bar (on a terminal)."""


@dataclass(frozen=True)
class ForecastOptions:
    """How to forecast a panel. ``horizon`` None: the artifact's; ``batch_size`` None: the backend's max."""

    horizon: int | None = None
    quantiles: bool = False
    pad: bool = False
    batch_size: int | None = None
    show_progress: bool | None = None
    """None: a bar on a terminal for panels of :data:`PROGRESS_MIN_SERIES` series or more."""

    def __post_init__(self) -> None:
        if self.horizon is not None and self.horizon < 1:
            raise ValueError(f"horizon must be at least 1, got {self.horizon}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")


def takes_nan(forecaster: Forecaster) -> bool:
    """Whether the artifact's graph masks NaN in the context (then short series are NaN-padded)."""
    return forecaster.manifest.family in NAN_CONTEXT_FAMILIES


def check_request(forecaster: Forecaster, config: PanelConfig, options: ForecastOptions) -> int:
    """The horizon to forecast, or an error for what this artifact cannot do; cheap, so it runs first."""
    horizon = options.horizon or forecaster.horizon
    if horizon > forecaster.horizon:
        raise ValueError(
            f"horizon {horizon} is longer than the artifact's {forecaster.horizon}; "
            "export the model with a longer horizon"
        )
    if config.fill == "none" and not takes_nan(forecaster):
        raise ValueError(
            f"fill='none' leaves missing values as NaN, which a {forecaster.manifest.family} artifact cannot "
            "take; choose ffill, interpolate, zero or error"
        )
    if options.quantiles and not forecaster.quantile_levels:
        raise ValueError(
            f"this {forecaster.manifest.family} artifact has no quantile output (point forecasts only); "
            "forecast without quantiles"
        )
    return horizon


def forecast_panel(
    forecaster: Forecaster,
    panel: Panel,
    options: ForecastOptions = ForecastOptions(),
    seconds: dict | None = None,
) -> pd.DataFrame:
    """The forecast rows of every series of ``panel``; stage times are added to ``seconds`` if given."""
    horizon = check_request(forecaster, PanelConfig(), options)
    seconds = {} if seconds is None else seconds
    start = time.perf_counter()
    pad = "nan" if takes_nan(forecaster) else ("first" if options.pad else "error")
    batch = panel.contexts(forecaster.context_length, pad)
    batched = time.perf_counter()
    point, quantiles = _run(forecaster, batch, options, horizon)
    ran = time.perf_counter()
    frame = _rows(panel, point, quantiles, forecaster, horizon)
    seconds.update(batch=batched - start, model=ran - batched, assemble=time.perf_counter() - ran)
    return frame


def forecast_frame(
    forecaster: Forecaster,
    df: pd.DataFrame,
    horizon: int | None = None,
    id_column: str | None = None,
    timestamp_column: str | None = None,
    target_column: str | list[str] | None = None,
    freq: str | None = None,
    fill: str = "error",
    quantiles: bool = False,
    pad: bool = False,
) -> pd.DataFrame:
    """Forecasts for the panel in ``df`` (long or wide); see :meth:`Forecaster.forecast_frame`."""
    config = PanelConfig(id_column, timestamp_column, target_column, freq, fill)
    options = ForecastOptions(horizon=horizon, quantiles=quantiles, pad=pad)
    check_request(forecaster, config, options)
    return forecast_panel(forecaster, load_panel(df, config), options)


def forecast_file(
    forecaster: Forecaster,
    data: str | Path,
    out: str | Path,
    config: PanelConfig | None = None,
    options: ForecastOptions | None = None,
    per_series_fill: bool = False,
) -> dict:
    """Read ``data``, forecast every series, write ``out`` (CSV/Parquet by extension); a summary back.

    Nothing is written unless every check passed and every series was forecast. The summary
    holds the counts (series, rows read and written, values filled), the seconds of each stage
    (``read``, ``validate``, ``fill``, ``batch``, ``model``, ``assemble``, ``write``) and series/s.
    """
    config, options = config or PanelConfig(), options or ForecastOptions()
    table_format(out)  # an unknown output extension fails before any work
    check_request(forecaster, config, options)
    start = time.perf_counter()
    frame = read_panel(data, config)
    seconds = {"read": time.perf_counter() - start}
    panel = load_panel(frame, config, where=str(data))
    seconds.update(panel.seconds)
    forecasts = forecast_panel(forecaster, panel, options, seconds)
    written = time.perf_counter()
    write_table(forecasts, out)
    seconds["write"] = time.perf_counter() - written
    summary = run_summary(
        str(data),
        out,
        len(panel),
        panel.rows,
        len(forecasts),
        int(panel.filled.sum()),
        config.fill,
        time.perf_counter() - start,
        seconds,
        model=forecaster.manifest.source_model,
    )
    if per_series_fill:
        summary["filled_per_series"] = panel.fill_report()
    return summary


def run_summary(
    data: str,
    out: str | Path,
    series: int,
    rows_read: int,
    rows_written: int,
    filled: int,
    fill: str,
    total: float,
    seconds: dict[str, float],
    **first: object,
) -> dict:
    """The summary ``prunecast forecast`` prints, for either engine; ``first`` goes after data and out."""
    return {
        "data": data,
        "out": str(out),
        **first,
        "series": series,
        "rows_read": rows_read,
        "rows_written": rows_written,
        "horizon": rows_written // max(1, series),
        "values_filled": filled,
        "fill": fill,
        "seconds": round(total, 4),
        "series_per_s": round(series / total, 1) if total > 0 else None,
        "stage_seconds": {k: round(v, 4) for k, v in seconds.items()},
    }


def _run(
    forecaster: Forecaster, batch: np.ndarray, options: ForecastOptions, horizon: int
) -> tuple[np.ndarray, np.ndarray | None]:
    """Point forecasts ``[N, horizon]`` and, when asked, quantiles ``[N, Q, horizon]``, chunk by chunk."""
    n = len(batch)
    step = options.batch_size or forecaster.backend.max_batch
    show = options.show_progress
    if show is None and n < PROGRESS_MIN_SERIES:
        show = False
    point = np.empty((n, horizon), dtype=np.float32)
    quantiles = None
    if options.quantiles:
        quantiles = np.empty((n, len(forecaster.quantile_levels), horizon), dtype=np.float32)
    for start in progress(range(0, n, step), total=math.ceil(n / step), desc="forecast", enabled=show):
        chunk = batch[start : start + step]
        if quantiles is None:
            point[start : start + step] = forecaster.predict_batch(chunk)[:, :horizon]
            continue
        outputs = forecaster.predict_batch_outputs(chunk, (FORECAST, QUANTILES))  # one model run for both
        point[start : start + step] = outputs[FORECAST][:, :horizon]
        quantiles[start : start + step] = outputs[QUANTILES][:, :, :horizon]
    return point, quantiles


def _rows(
    panel: Panel, point: np.ndarray, quantiles: np.ndarray | None, forecaster: Forecaster, horizon: int
) -> pd.DataFrame:
    """The long output table: one row per series and future step."""
    levels = forecaster.quantile_levels if quantiles is not None else ()
    names = [panel.id_name, panel.timestamp_name, FORECAST_COLUMN, *map(quantile_column, levels)]
    if len(set(names)) < len(names):
        raise DataError(f"the id or timestamp column is named like an output column: {names}")
    series = np.repeat(np.arange(len(panel)), horizon)
    columns = {
        panel.id_name: panel.ids.take(series),
        panel.timestamp_name: panel.future_timestamps(horizon),
        FORECAST_COLUMN: point.ravel(),
    }
    for j, level in enumerate(levels):
        columns[quantile_column(level)] = quantiles[:, j, :].ravel()
    return pd.DataFrame(columns)


def quantile_column(level: float) -> str:
    """``q0.1`` for the 0.1 quantile."""
    return f"q{level:g}"
