"""``prunecast bench``: latency of models across backends, side by side in one run."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from prunecast.cli.common import add_time_axis_args, emit, time_axis_from_args
from prunecast.common.defaults import DEFAULT_DATA


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="latency of models (artifacts, model dirs or HF ids) on each backend")
    p.add_argument(
        "models",
        nargs="+",
        metavar="[NAME=]MODEL",
        help="artifact directory, model directory or HF id; NAME defaults to model1, model2, ...; "
        "speedups are against the first",
    )
    p.add_argument("--backends", nargs="+", choices=("torch", "onnxruntime", "tensorrt"), default=None)
    p.add_argument("--batches", type=int, nargs="+", default=None, help="batch sizes (default 1 8 64 256)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for every backend (default 2)")
    p.add_argument("--data", default=DEFAULT_DATA, help="benchmark whose scaled test windows are the inputs")
    add_time_axis_args(p)
    p.add_argument("--revision", default=None, help="HF branch, tag or commit of the models given as HF ids")
    p.add_argument("--out", type=Path, default=None, help="also write the full result as JSON here")
    p.add_argument("--json", action="store_true", help="print the full result as JSON")
    p.set_defaults(func=run)


def parse_models(specs: list[str]) -> dict[str, str]:
    models: dict[str, str] = {}
    for i, spec in enumerate(specs, 1):
        name, sep, source = spec.partition("=")
        if not sep:
            name, source = f"model{i}", spec
        if not name or not source:
            raise ValueError(f"bad model {spec!r}: expected NAME=PATH or PATH")
        if name in models:
            raise ValueError(f"model name {name!r} given twice")
        models[name] = source
    return models


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from prunecast.bench import BenchConfig, bench

    config = BenchConfig(
        data=args.data,
        time_axis=time_axis_from_args(args),
        backends=tuple(args.backends) if args.backends else None,
        revision=args.revision,
    )
    if args.batches:
        config = replace(config, batch_sizes=tuple(args.batches))
    if args.threads:
        config = replace(config, threads=args.threads)
    result = bench(parse_models(args.models), config)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"{'model':<12}{'backend':<13}{'batch':>6}{'p50 ms':>10}{'p99 ms':>10}{'series/s':>11}  parity"]
    for r in result["rows"]:
        parity = "" if r["parity_max_abs_err"] is None else f"{r['parity_max_abs_err']:.1e}"
        lines.append(
            f"{r['model']:<12}{r['backend']:<13}{r['batch']:>6}{r['p50_ms']:>10.2f}{r['p99_ms']:>10.2f}"
            f"{r['series_per_s']:>11,.0f}  {parity}"
        )
    lines.append(f"speedups (p50) vs {result['speedups']['baseline']}:")
    for key, by_batch in result["speedups"]["p50_ratio"].items():
        lines.append(f"  {key}: " + ", ".join(f"batch {b}: {r:.2f}x" for b, r in by_batch.items()))
    emit(result, args.json, lines)
    return 0
