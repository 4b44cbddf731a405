"""``prunecast run``: the main job, end to end, on defaults that need no arguments."""

from __future__ import annotations

import argparse
from pathlib import Path

from prunecast.cli.common import (
    add_budget_args,
    add_revision_arg,
    add_time_axis_args,
    budget_from_args,
    emit,
    latency_settings_from_args,
    time_axis_from_args,
)
from prunecast.common.defaults import (
    DEFAULT_DATA,
    DEFAULT_DISTILL,
    DEFAULT_HORIZON,
    DEFAULT_MODEL,
    IMPORTANCES,
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run",
        help="zero-shot eval, prune, fine-tune, export, latency benchmark and report, end to end",
    )
    p.add_argument(
        "--model", default=DEFAULT_MODEL, help=f"HF id or local directory (default {DEFAULT_MODEL})"
    )
    add_revision_arg(p)
    p.add_argument(
        "--data", default=DEFAULT_DATA, help=f"benchmark CSV or bundled name (default {DEFAULT_DATA})"
    )
    add_time_axis_args(p)
    p.add_argument(
        "--horizon",
        type=int,
        default=DEFAULT_HORIZON,
        help="forecast steps; past the checkpoint's own, zero-shot rolls its head out and fine-tuning "
        "trains a head of this length",
    )
    add_budget_args(p, threads=False)
    p.add_argument("--importance", choices=IMPORTANCES, default="loss")
    p.add_argument("--epochs", type=int, default=None, help="fine-tuning epochs (default: finetune's)")
    p.add_argument("--compare-full-finetune", action="store_true", help="also fine-tune the unpruned model")
    p.add_argument(
        "--distill",
        type=float,
        default=DEFAULT_DISTILL,
        help="weight of the original model's forecast in the pruned model's fine-tuning target "
        f"(default {DEFAULT_DISTILL}; 0: the truth alone)",
    )
    p.add_argument("--test-limit", type=int, default=None, help="evaluate only the first N test windows")
    p.add_argument(
        "--batches", type=int, nargs="+", default=None, help="latency batch sizes (default 1 8 64 256)"
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads for every backend, and for --target latency's measurements (default 2)",
    )
    p.add_argument(
        "--no-int8",
        dest="int8",
        action="store_false",
        help="do not try an INT8 artifact as a candidate to ship (default: try it behind the accuracy guard)",
    )
    p.add_argument(
        "--int8-tolerance",
        type=float,
        default=0.005,
        help="relative validation-MSE rise the INT8 candidate may cost over FP32 (default 0.005)",
    )
    p.add_argument(
        "--out", type=Path, default=Path("runs/latest"), help="output directory (default runs/latest)"
    )
    p.add_argument("--json", action="store_true", help="print the report's headline figures as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from prunecast.bench import BenchConfig
    from prunecast.compress import FinetuneConfig, PruneConfig, distributed
    from prunecast.pipeline import RunConfig
    from prunecast.pipeline import run as run_pipeline
    from prunecast.pipeline.deploy import deploy_line

    prune_cfg = PruneConfig(budget=budget_from_args(args), target=args.target, importance=args.importance)
    ft_cfg = FinetuneConfig(distill=args.distill)
    if args.epochs is not None:
        ft_cfg = replace(ft_cfg, epochs=args.epochs)
    bench_cfg = BenchConfig()
    if args.batches:
        bench_cfg = replace(bench_cfg, batch_sizes=tuple(args.batches))
    if args.threads:
        bench_cfg = replace(bench_cfg, threads=args.threads)
    config = RunConfig(
        out=args.out,
        model=args.model,
        revision=args.revision,
        data=args.data,
        time_axis=time_axis_from_args(args),
        horizon=args.horizon,
        prune=prune_cfg,
        latency=latency_settings_from_args(args),
        finetune=ft_cfg,
        compare_full_finetune=args.compare_full_finetune,
        test_limit=args.test_limit,
        bench=bench_cfg,
        int8=args.int8,
        int8_tolerance=args.int8_tolerance,
    )
    with distributed.process_group():  # a no-op outside torchrun
        report = run_pipeline(config)
        if not distributed.is_main():
            return 0  # rank 0 alone evaluates, exports, benchmarks and reports
    headline = {
        v: {k: report[v][k] for k in ("mse", "mae", "params", "macs")}
        for v in ("zero_shot", "full_finetune", "pruned_finetune")
        if v in report
    }
    emit(
        {"out": str(args.out), **headline, "speedups": report["speedups"], "deploy": report["deploy"]},
        args.json,
        [f"{v}: MSE {h['mse']:.4f}  MAE {h['mae']:.4f}  MACs {h['macs']:,}" for v, h in headline.items()]
        + [deploy_line(report["deploy"]).replace("**", ""), f"report: {args.out / 'report.md'}"],
    )
    return 0
