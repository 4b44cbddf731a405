"""``prunecast forecast --engine ray``: the same panel forecast, spread over a Ray cluster with Ray Data.

Ray Data reads the panel (CSV or Parquet, a file or a directory of them), every row is given a
bucket by a hash of its series id, ``groupby(bucket).map_groups`` hands each bucket (many whole
series) to an actor pool, and each actor, which loaded the artifact once, runs the in-process
engine's own :func:`~prunecast.data.panel.load_panel` and
:func:`~prunecast.runtime.frame.forecast_panel` on it: one copy of the checks, the time grid, the
fill and the model batching, so the columns, values and error messages are those of
``--engine local``. The forecasts come back to the driver, are put in the order the series first
appear in the data (as the local engine orders them) and written to one CSV/Parquet file; an
``--out`` without extension is a directory Ray Data writes Parquet parts into, in no set order,
without collecting the forecasts on the driver.

Long tables only: a wide table (one series per column) is bounded by its column count and fits in
one process, so it is refused with a pointer to ``--engine local``. An error names the same series,
timestamp and problem as locally, with two differences that come from the buckets: line numbers
(``data row N``) count the rows of the bad series' bucket, not of the file, and a message listing
several series (those shorter than the context) lists those of one bucket; with several bad series,
which one is reported first may differ. On a multi-node cluster (``address``) prunecast must be
installed on every node and the artifact and data paths readable there (a shared filesystem).
Nothing here imports ray until a forecast runs, and nothing imports torch.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from prunecast.data.columns import resolve_layout
from prunecast.data.errors import DataError
from prunecast.data.panel import PanelConfig, load_panel
from prunecast.data.tables import CSV_SUFFIXES, PARQUET_SUFFIXES, table_format, write_table
from prunecast.runtime.frame import ForecastOptions, check_request, forecast_panel, run_summary

if TYPE_CHECKING:
    import pyarrow as pa

BUCKET = "__prunecast_bucket"
FILLED = "__prunecast_filled"
"""Per output row: the values filled in its series on the series' first row, 0 on the others."""
SERIES_PER_BUCKET = 1024
"""About this many series go to one actor call: large model batches, few Ray tasks."""


@dataclass(frozen=True)
class RayConfig:
    """Where and how wide to run. ``address`` None: start a local cluster for the command's duration."""

    address: str | None = None
    num_workers: int | None = None
    """Most actors (artifact copies) forecasting at once; None, and at most: the cluster's CPUs less
    one (kept for Ray Data's tasks), divided by ``threads``."""
    threads: int = 1
    """Backend threads per actor; each actor reserves this many CPUs."""
    backend: str = "auto"
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.num_workers is not None and self.num_workers < 1:
            raise ValueError(f"num_workers must be at least 1, got {self.num_workers}")
        if self.threads < 1:
            raise ValueError(f"threads must be at least 1, got {self.threads}")


class BucketFailed(Exception):
    """A bucket's :class:`ValueError` (a :class:`DataError` naming the series), carried through Ray.

    The error travels as ``args[0]``, not as a message: Ray Data appends retry advice to a string
    ``args[0]``, and the user should read the local engine's message, word for word.
    """


class BucketForecaster:
    """The actor: loads the artifact once, then forecasts bucket after bucket of whole series."""

    def __init__(
        self, art_dir: str, ray_config: RayConfig, config: PanelConfig, options: ForecastOptions, where: str
    ):
        from prunecast.runtime.forecaster import Forecaster

        self.forecaster = Forecaster.load(
            art_dir, backend=ray_config.backend, device=ray_config.device, threads=ray_config.threads
        )
        self.config, self.options, self.where = config, options, where

    def __call__(self, group: pd.DataFrame) -> pd.DataFrame:
        try:
            panel = load_panel(group.drop(columns=BUCKET), self.config, self.where)
            out = forecast_panel(self.forecaster, panel, self.options)
        except ValueError as exc:
            raise BucketFailed(exc) from None
        filled = np.zeros(len(out), dtype=np.int64)
        filled[:: len(out) // len(panel)] = panel.filled
        out[FILLED] = filled
        return out


def forecast_file_ray(
    art_dir: str | Path,
    data: str | Path,
    out: str | Path,
    config: PanelConfig | None = None,
    options: ForecastOptions | None = None,
    ray_config: RayConfig | None = None,
    per_series_fill: bool = False,
) -> dict:
    """:func:`~prunecast.runtime.frame.forecast_file` on Ray: same output, same summary keys.

    A Ray cluster already connected in this process (``ray.init`` by the caller) is used as is
    and left running; otherwise one is started (or ``address`` joined) and shut down at the end.
    """
    from prunecast.runtime.forecaster import Forecaster

    config, options, ray_config = (
        config or PanelConfig(),
        options or ForecastOptions(),
        ray_config or RayConfig(),
    )
    if Path(out).suffix:
        table_format(out)  # an unknown output extension fails before any work
    source = _source(data)
    local = Forecaster.load(art_dir, backend=ray_config.backend, device=ray_config.device, threads=1)
    check_request(local, config, options)
    with _cluster(ray_config) as workers, _data_context():
        summary = _forecast(
            str(art_dir), source, Path(out), config, options, ray_config, workers, per_series_fill
        )
    summary.update(
        model=local.manifest.source_model, backend=local.backend.name, engine="ray", workers=workers
    )
    return summary


def _forecast(
    art_dir: str,
    source: tuple[str, Path],
    out: Path,
    config: PanelConfig,
    options: ForecastOptions,
    ray_config: RayConfig,
    workers: int,
    per_series_fill: bool,
) -> dict:
    import ray

    kind, data = source
    where = str(data)
    start = time.perf_counter()
    read = ray.data.read_parquet if kind == "parquet" else ray.data.read_csv
    suffixes = PARQUET_SUFFIXES if kind == "parquet" else CSV_SUFFIXES
    ds = read(str(data), file_extensions=[s.lstrip(".") for s in suffixes])
    ds = _run(ds.materialize, where)
    schema = ds.schema()
    rows = ds.count()  # a materialized dataset knows its row count
    if schema is None or rows == 0:
        raise DataError(f"{where}: the table has no rows (empty series)")
    layout = resolve_layout(
        schema.names, config.id_column, config.timestamp_column, config.target_column, where
    )
    if layout.wide:
        raise DataError(
            f"{where}: a wide table (timestamp column {layout.timestamp!r} and one column per series) "
            "is forecast in-process: use --engine local, or melt it to long (id, timestamp, value) for Ray"
        )
    ident = str(layout.id)
    ids = pd.unique(
        _run(
            ds.select_columns([ident])
            .map_batches(_first_ids, fn_kwargs={"column": ident}, batch_format="pyarrow")
            .to_pandas,
            where,
        )[ident]
    )
    seconds = {"read": time.perf_counter() - start}
    buckets = max(workers, math.ceil(len(ids) / SERIES_PER_BUCKET))
    resolved = replace(
        config, id_column=ident, timestamp_column=layout.timestamp, target_column=layout.targets[0]
    )
    forecasts = (
        ds.map_batches(
            _add_bucket,
            fn_kwargs={"column": ident, "timestamp": layout.timestamp, "buckets": buckets},
            batch_format="pyarrow",
        )
        .groupby(BUCKET, num_partitions=buckets)
        .map_groups(
            BucketForecaster,
            fn_constructor_args=(art_dir, ray_config, resolved, options, where),
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=workers),
            num_cpus=ray_config.threads,
            batch_format="pandas",
        )
    )
    forecast_start = time.perf_counter()
    collect = _collect_to_file if out.suffix else _write_directory
    rows_written, series_filled, written = collect(forecasts, out, ident, ids, where, seconds, forecast_start)
    seconds["write"] = time.perf_counter() - written
    summary = run_summary(
        where,
        out,
        len(ids),
        rows,
        rows_written,
        int(sum(series_filled.values())),
        config.fill,
        time.perf_counter() - start,
        seconds,
    )
    if per_series_fill:
        summary["filled_per_series"] = series_filled
    return summary


def _collect_to_file(forecasts, out: Path, ident: str, ids, where: str, seconds: dict, start: float):
    """All forecasts on the driver, in the order the series first appear, written as one file."""
    frame = _run(forecasts.to_pandas, where)
    order = np.argsort(pd.Index(ids).get_indexer(frame[ident]), kind="stable")
    frame = frame.take(order).reset_index(drop=True)
    filled = frame[FILLED].to_numpy()
    series_filled = dict(zip(frame[ident].astype(str)[filled > 0], filled[filled > 0].tolist(), strict=True))
    frame = frame.drop(columns=FILLED)
    seconds["forecast"] = time.perf_counter() - start
    written = time.perf_counter()
    write_table(frame, out)
    return len(frame), series_filled, written


def _write_directory(forecasts, out: Path, ident: str, ids, where: str, seconds: dict, start: float):
    """The forecasts written by the workers as Parquet parts under ``out``; only fill counts come back."""
    materialized = _run(forecasts.materialize, where)
    hits = _run(
        materialized.map_batches(_filled_rows, fn_kwargs={"column": ident}, batch_format="pandas").to_pandas,
        where,
    )
    series_filled = {}  # no series filled: an empty result without columns
    if len(hits):
        series_filled = dict(zip(hits[ident].astype(str), hits[FILLED].tolist(), strict=True))
    seconds["forecast"] = time.perf_counter() - start
    written = time.perf_counter()
    _run(lambda: materialized.drop_columns([FILLED]).write_parquet(str(out)), where)
    return materialized.count(), series_filled, written


def _source(data: str | Path) -> tuple[str, Path]:
    """The format (csv or parquet) of a panel file, or of the files in a panel directory."""
    path = Path(data)
    if path.is_file():
        return table_format(path), path
    if not path.is_dir():
        raise DataError(f"{path}: no such file or directory")
    kinds = {
        table_format(f)
        for f in path.rglob("*")
        if f.is_file() and f.suffix.lower() in CSV_SUFFIXES + PARQUET_SUFFIXES
    }
    if len(kinds) != 1:
        found = "no" if not kinds else "both CSV and Parquet"
        raise DataError(f"{path}: a panel directory holds CSV or Parquet files, found {found} files")
    return kinds.pop(), path


def _first_ids(batch: pa.Table, column: str) -> pa.Table:
    """The ids of a block in order of first appearance (blocks keep the file order: preserve_order)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    return pa.table({column: pc.unique(batch.column(column))})


def _add_bucket(batch: pa.Table, column: str, timestamp: str, buckets: int) -> pa.Table:
    """Every row's bucket, a hash of its series id, so all rows of a series meet in one actor call.

    Timestamps read as dates or in any unit become ns, so the files of a directory (one read as
    dates, one as seconds) form one schema; text timestamps stay text for the panel checks to parse.
    Arrow in and out: only the id column passes through pandas (for its stable hash).
    """
    import pyarrow as pa

    ids = batch.column(column).to_pandas().to_numpy()
    hashes = pd.util.hash_array(ids)  # rows without an id share one bucket
    index = batch.schema.get_field_index(timestamp)
    kind = batch.schema.field(index).type
    if pa.types.is_date(kind) or (pa.types.is_timestamp(kind) and kind.unit != "ns"):
        ns = pa.timestamp("ns", tz=getattr(kind, "tz", None))
        batch = batch.set_column(index, timestamp, batch.column(index).cast(ns))
    return batch.append_column(BUCKET, pa.array((hashes % np.uint64(buckets)).astype(np.int64)))


def _filled_rows(batch: pd.DataFrame, column: str) -> pd.DataFrame:
    return batch.loc[batch[FILLED] > 0, [column, FILLED]]


def _run(step, where: str):
    """``step()``, with a bucket's error re-raised as itself (no Ray traceback around it)."""
    import ray

    try:
        return step()
    except ray.exceptions.RayError as exc:
        cause = _user_error(exc)
        if isinstance(cause, BucketFailed) and isinstance(cause.args[0], ValueError):
            raise cause.args[0].with_traceback(None) from None
        if cause is not None:  # e.g. a file Arrow cannot read, or files whose columns differ in type
            message = str(cause).split("\nFailed to ")[0]  # without Ray Data's retry advice
            raise DataError(f"{where}: Ray Data cannot read or combine the table ({message})") from None
        raise


def _user_error(exc: BaseException) -> BaseException | None:
    """The exception a Ray task raised, found under Ray's wrappers (``RayTaskError.cause``, ``__cause__``)."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if not type(current).__module__.startswith("ray."):
            return current
        stack += [current.__cause__, getattr(current, "cause", None)]
    return None


@contextlib.contextmanager
def _cluster(ray_config: RayConfig) -> Iterator[int]:
    """Connect to (or start) Ray for the duration; yields the number of forecasting actors.

    One CPU of the cluster stays free of actors for Ray Data's read and shuffle tasks: actors hold
    their CPUs for the whole run, and with every CPU held the shuffle that feeds them never runs.
    A local cluster is started with the workers' CPUs plus that one.
    """
    import ray

    started = False
    if not ray.is_initialized():
        kwargs = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.ERROR}
        if ray_config.address:
            ray.init(address=ray_config.address, **kwargs)
        else:
            workers = ray_config.num_workers or max(1, (os.cpu_count() or 1) // ray_config.threads)
            cpus = workers * ray_config.threads + 1
            ray.init(address="local", num_cpus=cpus, **kwargs)  # a new cluster, even if one runs here
        started = True
    try:
        cpus = int(ray.cluster_resources().get("CPU", 0))
        room = (cpus - 1) // ray_config.threads
        if room < 1:
            raise RuntimeError(
                f"the Ray cluster has {cpus} CPU(s): --engine ray needs {ray_config.threads} per worker "
                "(--threads) and one more for Ray Data's read and shuffle tasks"
            )
        yield min(ray_config.num_workers or room, room)
    finally:
        if started:
            ray.shutdown()


@contextlib.contextmanager
def _data_context() -> Iterator[None]:
    """Ray Data set up as the engine needs it, and back as it was afterwards.

    No progress bars or log lines on the user's terminal; blocks kept in file order (for the order
    of the series); Arrow columns converted to pandas as :func:`~prunecast.data.tables.read_table`
    converts them (numpy and ``str``, not ``ArrowDtype``), so the output's dtypes are the local engine's.
    """
    import ray
    from ray.data.context import ShuffleStrategy

    ctx = ray.data.DataContext.get_current()
    names = ("enable_progress_bars", "enable_arrow_backed_pandas_conversion", "shuffle_strategy")
    saved = [getattr(ctx, name) for name in names] + [ctx.execution_options.preserve_order]
    ctx.enable_progress_bars = False
    ctx.enable_arrow_backed_pandas_conversion = False
    ctx.execution_options.preserve_order = True
    # the hash shuffle's aggregator actors wait for CPUs the forecasting actors hold on a small cluster
    ctx.shuffle_strategy = ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
    logger = logging.getLogger("ray.data")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for name, value in zip(names, saved, strict=False):
            setattr(ctx, name, value)
        ctx.execution_options.preserve_order = saved[-1]
        logger.setLevel(level)
