"""``prunecast evaluate``: test MSE/MAE of a model on a benchmark's standard test split."""

from __future__ import annotations

import argparse
import time

from prunecast.cli.common import add_model_data_args, emit, load_model_and_data


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="test MSE/MAE on a benchmark's test split (scaled data)")
    add_model_data_args(p)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N test windows")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from prunecast.evaluate import evaluate

    model, data = load_model_and_data(args)
    start = time.perf_counter()
    metrics = evaluate(model, data.test, batch_size=args.batch_size, limit=args.limit)
    result = {
        **metrics.to_dict(),
        "model": args.model,
        "revision": args.revision,
        "data": str(data.benchmark.path),
        "context_length": model.context_length,
        "horizon": args.horizon,
        "head": model.head_info(),
        "seconds": round(time.perf_counter() - start, 2),
    }
    emit(
        result,
        args.json,
        [
            f"{data.benchmark.name} test, horizon {args.horizon}, context {model.context_length}: "
            f"{metrics.windows} windows; {model.head_info()['native_horizon']}-step head, "
            f"{model.head_info()['passes']} pass(es)",
            f"MSE {metrics.mse:.4f}  MAE {metrics.mae:.4f}  ({result['seconds']} s)",
        ],
    )
    return 0
