"""Arguments several commands share, so each is spelled and defaulted one way."""

from __future__ import annotations

import argparse
import json
import sys

from prunecast.common.defaults import DEFAULT_DATA, DEFAULT_HORIZON, DEFAULT_MODEL


def add_revision_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--revision",
        default=None,
        help="HF branch, tag or commit of --model (TTM r2: 512-192-r2, 512-336-r2, 512-720-r2, "
        "1024-96-r2, 1536-96-r2, ...; default: the main branch)",
    )


def add_model_data_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", default=DEFAULT_MODEL, help=f"HF id or local directory (default {DEFAULT_MODEL})"
    )
    add_revision_arg(parser)
    parser.add_argument("--family", default=None, help="model family, when config.json cannot tell it")
    parser.add_argument(
        "--data", default=DEFAULT_DATA, help=f"benchmark CSV, or a bundled name (default {DEFAULT_DATA})"
    )
    parser.add_argument(
        "--columns", nargs="+", default=None, help="series columns to use (default: all numeric)"
    )
    add_time_axis_args(parser)
    parser.add_argument("--horizon", type=int, default=DEFAULT_HORIZON, help="forecast steps (default 96)")
    parser.add_argument("--context", type=int, default=None, help="context length (default: the model's)")


def add_time_axis_args(parser: argparse.ArgumentParser) -> None:
    """The opt-ins for a benchmark file whose time axis has known defects (weather.csv has both)."""
    parser.add_argument(
        "--duplicates",
        choices=("error", "first"),
        default="error",
        help="a timestamp on more than one row: refuse naming the rows (default), or keep the first row",
    )
    parser.add_argument(
        "--fill",
        choices=("error", "ffill", "interpolate", "zero"),
        default="error",
        help="timestamps missing from the data's regular grid: refuse naming them (default), or fill "
        "every column there",
    )


def time_axis_from_args(args: argparse.Namespace):
    """The :class:`~prunecast.data.TimeAxisPolicy` that :func:`add_time_axis_args`' options describe."""
    from prunecast.data import TimeAxisPolicy

    return TimeAxisPolicy(duplicates=args.duplicates, fill=args.fill)


def add_kinds_arg(parser: argparse.ArgumentParser) -> None:
    """``--kinds``: the unit kinds pruning may remove (all by default)."""
    from prunecast.common.defaults import UNIT_KINDS

    parser.add_argument(
        "--kinds",
        nargs="+",
        choices=UNIT_KINDS,
        default=list(UNIT_KINDS),
        help="unit kinds that may be pruned (block: whole residual blocks, depth pruning)",
    )


def add_budget_args(parser: argparse.ArgumentParser, threads: bool = True) -> None:
    """``--budget`` and ``--target``, and where ``--target latency`` measures (``--latency-backend``,
    ``--latency-batch``, and ``--threads`` unless the command has its own)."""
    from prunecast.common.defaults import (
        DEFAULT_BUDGET,
        DEFAULT_LATENCY_BATCH,
        DEFAULT_TARGET,
        LATENCY_BACKENDS,
        MEASURED_BUDGET,
        TARGETS,
    )

    parser.add_argument(
        "--budget",
        type=float,
        default=None,
        help=f"fraction of the target to keep (default {MEASURED_BUDGET} of measured latency, "
        f"{DEFAULT_BUDGET} of the others)",
    )
    parser.add_argument(
        "--target",
        choices=TARGETS,
        default=DEFAULT_TARGET,
        help="what the budget is a fraction of: latency measured on the serving backend (default), "
        "latency-estimate (MACs plus activation work, when measuring is impossible), MACs or parameters",
    )
    parser.add_argument(
        "--latency-backend",
        choices=LATENCY_BACKENDS,
        default="onnxruntime",
        help="--target latency: the backend the model will be served on (default onnxruntime)",
    )
    parser.add_argument(
        "--latency-batch",
        type=int,
        default=DEFAULT_LATENCY_BATCH,
        help=f"--target latency: the serving batch to measure at (default {DEFAULT_LATENCY_BATCH})",
    )
    if threads:
        parser.add_argument(
            "--threads", type=int, default=None, help="--target latency: serving threads (default 2)"
        )


def budget_from_args(args: argparse.Namespace) -> float:
    """``--budget``, or the default of ``--target``."""
    from prunecast.common.defaults import default_budget

    return default_budget(args.target) if args.budget is None else args.budget


def latency_settings_from_args(args: argparse.Namespace):
    """The :class:`~prunecast.bench.latency_model.LatencySettings` of :func:`add_budget_args`' options."""
    from prunecast.bench.latency_model import LatencySettings

    return LatencySettings(
        backend=args.latency_backend,
        batch=args.latency_batch,
        threads=args.threads or LatencySettings.threads,
        data=args.data,
        time_axis=time_axis_from_args(args),
    )


def emit(result: dict, as_json: bool, lines: list[str]) -> None:
    """Print a result as one JSON object, or as readable lines."""
    if as_json:
        print(json.dumps(result))
    else:
        print("\n".join(lines))
    sys.stdout.flush()


def load_model_from_args(args: argparse.Namespace):
    """The model that :func:`add_model_data_args`' model options (``--model``, ``--horizon``,
    ``--context``, ``--family``, ``--revision``) describe."""
    from prunecast.compress import load_model

    return load_model(
        args.model,
        horizon=args.horizon,
        context_length=args.context,
        family=args.family,
        revision=args.revision,
    )


def load_model_and_data(args: argparse.Namespace):
    """The model and the benchmark windows that :func:`add_model_data_args` describe."""
    from prunecast.data import prepare_windows

    model = load_model_from_args(args)
    return model, prepare_windows(
        args.data, model.context_length, args.horizon, columns=args.columns, policy=time_axis_from_args(args)
    )
