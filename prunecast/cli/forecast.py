"""``prunecast forecast MODEL --data FILE --out FILE``: forecasts for every series of a user's panel."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from prunecast.cli.common import emit
from prunecast.common.defaults import FILL_POLICIES
from prunecast.runtime.backends import BACKENDS


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "forecast",
        help="forecast every series of a CSV/Parquet panel into a CSV/Parquet table of future rows",
        description=(
            "Forecast each series of a long (id, timestamp, value) or wide (timestamp + one column per "
            "series) table from its last context-length points, and write one row per series and future "
            "timestamp: the id column, the timestamp column, `forecast` and with --quantiles q0.1 ... q0.9. "
            "--engine ray runs the same checks and model on a Ray cluster (Ray Data reads --data, groups "
            "the rows by series id and forecasts them in a pool of actors); long tables only."
        ),
    )
    p.add_argument(
        "model",
        metavar="MODEL",
        help=(
            "an artifact directory from `prunecast export` (the normal case); a prunecast-saved model "
            "directory or an HF id is first exported to a temporary FP32 ONNX artifact (parity-checked, "
            "needs torch) and then run on --backend like any artifact"
        ),
    )
    p.add_argument(
        "--data",
        required=True,
        help="the panel: a .csv, .parquet or .pq file (--engine ray: also a directory of such files)",
    )
    p.add_argument(
        "--out",
        required=True,
        help=(
            "where to write the forecasts: .csv, .parquet or .pq (--engine ray: also a path without "
            "extension, a directory of Parquet parts written by the workers, rows in no set order)"
        ),
    )
    p.add_argument("--horizon", type=int, default=None, help="steps to forecast (default: the artifact's)")
    p.add_argument(
        "--id-column", default=None, help="series id column (default: detected; none = wide table)"
    )
    p.add_argument("--timestamp-column", default=None, help="timestamp column (default: detected)")
    p.add_argument(
        "--target-column",
        nargs="+",
        default=None,
        help="value column of a long table, or the series columns to use of a wide one (default: detected / all)",
    )
    p.add_argument("--freq", default=None, help="pandas frequency for every series, e.g. 10min, h, D, W, MS")
    p.add_argument(
        "--fill",
        default="error",
        choices=FILL_POLICIES,
        help="missing values: error (default), ffill, interpolate, zero, or none (models that take NaN)",
    )
    p.add_argument(
        "--pad",
        action="store_true",
        help="left-pad series shorter than the context with their first value (NaN-masking models pad with NaN anyway)",
    )
    p.add_argument(
        "--quantiles", action="store_true", help="also write the model's quantiles (q0.1 ... q0.9)"
    )
    p.add_argument("--backend", default="auto", choices=BACKENDS, help="runtime backend (default auto)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads (default: all; --engine ray: per worker, default 1)",
    )
    p.add_argument(
        "--batch-size", type=int, default=None, help="series per model call (default: the backend's max)"
    )
    p.add_argument(
        "--engine",
        default="local",
        choices=("local", "ray"),
        help=(
            "local (default): in this process; ray: on a Ray cluster, same columns, values and errors, "
            "for long tables (a wide table: melt it, or use local); needs the `ray` extra"
        ),
    )
    p.add_argument(
        "--address", default=None, help="--engine ray: the cluster to join (default: start a local one)"
    )
    p.add_argument(
        "--num-workers",
        type=int,
        default=None,
        help=(
            "--engine ray: actors forecasting at once, each with --threads (default 1) CPUs; a local "
            "cluster gets their CPUs plus one for Ray Data's tasks (default and at most: the CPUs less one)"
        ),
    )
    p.add_argument("--per-series-fill", action="store_true", help="list the values filled in each series")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from prunecast.data.panel import PanelConfig
    from prunecast.runtime import Forecaster
    from prunecast.runtime.frame import ForecastOptions, forecast_file

    target = args.target_column
    config = PanelConfig(
        id_column=args.id_column,
        timestamp_column=args.timestamp_column,
        target_column=target[0] if target and len(target) == 1 else target,
        freq=args.freq,
        fill=args.fill,
    )
    options = ForecastOptions(
        horizon=args.horizon,
        quantiles=args.quantiles,
        pad=args.pad,
        batch_size=args.batch_size,
        show_progress=False if args.json else None,
    )
    if args.engine != "ray" and (args.address or args.num_workers):
        raise ValueError("--address and --num-workers are options of --engine ray")
    with tempfile.TemporaryDirectory(prefix="prunecast-forecast-") as tmp:
        art_dir = _artifact(args.model, Path(tmp))
        if args.engine == "ray":
            summary = _forecast_ray(args, art_dir, config, options)
        else:
            forecaster = Forecaster.load(
                art_dir, backend=args.backend, device=args.device, threads=args.threads
            )
            summary = forecast_file(forecaster, args.data, args.out, config, options, args.per_series_fill)
            summary["backend"] = forecaster.backend.name
    lines = [
        f"wrote {summary['rows_written']:,} rows ({summary['series']:,} series x {summary['horizon']} steps) "
        f"to {args.out} in {summary['seconds']} s ({summary['series_per_s']:,} series/s)",
        f"values filled: {summary['values_filled']:,} (fill={summary['fill']})",
    ]
    if args.engine == "ray":
        lines.append(f"engine: ray, up to {summary['workers']} workers")
    for name, count in summary.get("filled_per_series", {}).items():
        lines.append(f"  {name}: {count}")
    emit(summary, args.json, lines)
    return 0


def _forecast_ray(args: argparse.Namespace, art_dir: Path, config, options) -> dict:
    try:
        import ray  # noqa: F401
    except ImportError:
        raise RuntimeError("--engine ray needs Ray Data: pip install 'prunecast[ray]'") from None
    from prunecast.runtime.ray_engine import RayConfig, forecast_file_ray

    ray_config = RayConfig(
        address=args.address,
        num_workers=args.num_workers,
        threads=args.threads or 1,
        backend=args.backend,
        device=args.device,
    )
    return forecast_file_ray(art_dir, args.data, args.out, config, options, ray_config, args.per_series_fill)


def _artifact(model: str, workdir: Path) -> Path:
    """``model`` itself when it is an artifact directory, else a temporary export of it."""
    from prunecast.export.manifest import MANIFEST_NAME

    if (Path(model) / MANIFEST_NAME).is_file():
        return Path(model)
    from prunecast.bench.runner import ensure_artifact

    return ensure_artifact(model, workdir, "model")
