"""``prunecast finetune``: fine-tune a model (pretrained or pruned) with early stopping on validation."""

from __future__ import annotations

import argparse

from prunecast.cli.common import add_model_data_args, emit, load_model_and_data
from prunecast.common.defaults import DEFAULT_DISTILL


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("finetune", help="fine-tune a model or pruned directory; best val weights are kept")
    add_model_data_args(p)
    p.add_argument(
        "--out", "-o", dest="output", required=True, help="directory to save the fine-tuned model to"
    )
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: chosen on validation)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument(
        "--windows-per-epoch", type=int, default=8192, help="training windows per epoch (0 for all)"
    )
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--patience", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--teacher",
        default=None,
        help="model to distil from (HF id or directory; e.g. the model before pruning)",
    )
    p.add_argument("--teacher-revision", default=None, help="HF branch, tag or commit of --teacher")
    p.add_argument(
        "--distill",
        type=float,
        default=DEFAULT_DISTILL,
        help=f"weight of the teacher's forecast in the training target (default {DEFAULT_DISTILL})",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from prunecast.compress import distributed

    with distributed.process_group():  # a no-op outside torchrun
        return _finetune(args)


def _finetune(args: argparse.Namespace) -> int:
    from prunecast.compress import FinetuneConfig, count_macs, count_params, distributed, finetune, save_model

    model, data = load_model_and_data(args)
    teacher = None
    if args.teacher is not None:
        from prunecast.compress import load_model

        teacher = load_model(args.teacher, horizon=model.horizon, revision=args.teacher_revision)
    config = FinetuneConfig(
        distill=args.distill,
        lr=args.lr,
        epochs=args.epochs,
        windows_per_epoch=args.windows_per_epoch or None,
        batch_size=args.batch_size,
        patience=args.patience,
        seed=args.seed,
    )
    report = finetune(model, data.train, data.val, config, teacher=teacher)
    if not distributed.is_main():
        return 0
    summary = report.to_dict()
    summary["world_size"] = distributed.world_size()
    save_model(
        model,
        args.output,
        metadata={
            "source": args.model,
            "revision": args.revision,
            "teacher": args.teacher,
            "data": str(data.benchmark.path),
            "finetune": summary,
        },
    )
    result = {
        "output": args.output,
        "model": args.model,
        "revision": args.revision,
        "data": str(data.benchmark.path),
        "teacher": args.teacher,
        "params": count_params(model),
        "macs": count_macs(model),
        **summary,
    }
    emit(
        result,
        args.json,
        [
            f"fine-tuned {args.model} on {data.benchmark.name}: lr {report.lr:g}, "
            f"{len(report.epochs)} epochs ({report.seconds:.1f} s)",
            f"head: {report.head['native_horizon']} steps x {report.head['passes']} pass(es)"
            + (" (grown to the horizon, trained)" if report.grown_head else ""),
            f"val MSE {report.val_loss_before:.4f} -> {report.best_val_loss:.4f} (best epoch {report.best_epoch})",
            f"saved to {args.output}",
        ],
    )
    return 0
