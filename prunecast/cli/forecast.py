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
            "timestamp: the id column, the timestamp column, `forecast` and with --quantiles q0.1 ... q0.9."
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
    p.add_argument("--data", required=True, help="the panel: a .csv, .parquet or .pq file")
    p.add_argument("--out", required=True, help="where to write the forecasts: .csv, .parquet or .pq")
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
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: all)")
    p.add_argument(
        "--batch-size", type=int, default=None, help="series per model call (default: the backend's max)"
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
    with tempfile.TemporaryDirectory(prefix="prunecast-forecast-") as tmp:
        art_dir = _artifact(args.model, Path(tmp))
        forecaster = Forecaster.load(art_dir, backend=args.backend, device=args.device, threads=args.threads)
        summary = forecast_file(forecaster, args.data, args.out, config, options, args.per_series_fill)
    summary["backend"] = forecaster.backend.name
    lines = [
        f"wrote {summary['rows_written']:,} rows ({summary['series']:,} series x {summary['horizon']} steps) "
        f"to {args.out} in {summary['seconds']} s ({summary['series_per_s']:,} series/s)",
        f"values filled: {summary['values_filled']:,} (fill={summary['fill']})",
    ]
    for name, count in summary.get("filled_per_series", {}).items():
        lines.append(f"  {name}: {count}")
    emit(summary, args.json, lines)
    return 0


def _artifact(model: str, workdir: Path) -> Path:
    """``model`` itself when it is an artifact directory, else a temporary export of it."""
    from prunecast.export.manifest import MANIFEST_NAME

    if (Path(model) / MANIFEST_NAME).is_file():
        return Path(model)
    from prunecast.bench.runner import ensure_artifact

    return ensure_artifact(model, workdir, "model")
