"""``prunecast prune``: loss-guided structured pruning of a model to a latency, MAC or parameter budget."""

from __future__ import annotations

import argparse

from prunecast.cli.common import (
    add_budget_args,
    add_kinds_arg,
    add_model_data_args,
    budget_from_args,
    emit,
    latency_settings_from_args,
    load_model_and_data,
)
from prunecast.common.defaults import IMPORTANCES


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prune", help="prune a model to a latency, MAC or parameter budget (no fine-tuning)")
    add_model_data_args(p)
    p.add_argument("--out", "-o", dest="output", required=True, help="directory to save the pruned model to")
    add_budget_args(p)
    p.add_argument("--importance", choices=IMPORTANCES, default="loss")
    add_kinds_arg(p)
    p.add_argument("--step-fraction", type=float, default=0.1, help="share of remaining units per step")
    p.add_argument("--max-steps", type=int, default=30)
    p.add_argument("--macro-batch", type=int, default=512, help="training windows scored per step")
    p.add_argument("--ema-alpha", type=float, default=0.5)
    p.add_argument("--tolerance", type=float, default=None, help="stop when val loss exceeds (1+tol) x start")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from prunecast.compress import distributed

    with distributed.process_group():  # a no-op outside torchrun
        return _prune(args)


def latency_lines(latency: dict | None) -> list[str]:
    """The measured-latency line of a prune report: predicted beside realised."""
    if latency is None:
        return []
    return [
        f"latency {latency['predicted_ms_before']:.3f} ms -> predicted {latency['predicted_ms_after']:.3f} ms, "
        f"realised {latency['realised_ms_after']:.3f} ms (goal {latency['goal_ms']:.3f} ms)"
    ]


def _prune(args: argparse.Namespace) -> int:
    from prunecast.compress import FinetuneConfig, PruneConfig, distributed, grow_head, prune, save_model

    model, data = load_model_and_data(args)
    # past the checkpoint's horizon, prune the one-pass model that fine-tuning trains and serves,
    # as `prunecast run` does, not the roll-out it replaces
    grown = grow_head(model, data.train, FinetuneConfig(seed=args.seed))
    config = PruneConfig(
        budget=budget_from_args(args),
        target=args.target,
        importance=args.importance,
        kinds=tuple(args.kinds),
        step_fraction=args.step_fraction,
        max_steps=args.max_steps,
        macro_batch=args.macro_batch,
        ema_alpha=args.ema_alpha,
        tolerance=args.tolerance,
        seed=args.seed,
    )
    latency = None
    if args.target == "latency":
        from prunecast.bench.latency_model import MeasuredLatency

        latency = MeasuredLatency(model, latency_settings_from_args(args))
    report = prune(model, data.train, data.val, config, latency=latency)
    if not distributed.is_main():
        return 0
    summary = report.to_dict()
    summary["world_size"] = distributed.world_size()
    summary["grown_head"] = grown
    summary["head"] = model.head_info()
    save_model(
        model,
        args.output,
        metadata={"source": args.model, "data": str(data.benchmark.path), "prune": summary},
    )
    result = {"output": args.output, "model": args.model, "data": str(data.benchmark.path), **summary}
    emit(
        result,
        args.json,
        [
            f"pruned {args.model} on {data.benchmark.name} in {len(report.steps)} steps ({report.seconds:.1f} s)",
            *(
                [f"head grown to {model.horizon} steps (fitted to the roll-out) before pruning"]
                if grown
                else []
            ),
            f"MACs {report.macs_before:,} -> {report.macs_after:,} ({summary['macs_reduction']:.2f}x fewer), "
            f"params {report.params_before:,} -> {report.params_after:,}",
            f"val MSE {report.val_loss_before:.4f} -> {report.val_loss_after:.4f}"
            + (" (stopped early at the tolerance)" if report.stopped_early else ""),
            *latency_lines(report.latency),
            f"saved to {args.output}",
        ],
    )
    return 0
