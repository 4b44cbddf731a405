"""``prunecast build-engine``: a TensorRT engine from an artifact's ONNX, recorded in its manifest."""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict

from prunecast.cli.common import emit


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("build-engine", help="build a TensorRT engine for this GPU from an artifact")
    p.add_argument("artifact", help="artifact directory written by `prunecast export`")
    p.add_argument("--fp16", action="store_true", help="FP16 engine (TensorRT 11: needs an --fp16 export)")
    p.add_argument("--min-batch", type=int, default=1)
    p.add_argument("--opt-batch", type=int, default=64)
    p.add_argument("--max-batch", type=int, default=1024)
    p.add_argument("--workspace-gib", type=float, default=4.0, help="builder workspace (default 4 GiB)")
    p.add_argument("--json", action="store_true", help="print the engine entry as one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from prunecast.export.tensorrt import EngineConfig, build_engine

    config = EngineConfig(
        fp16=args.fp16,
        min_batch=args.min_batch,
        opt_batch=args.opt_batch,
        max_batch=args.max_batch,
        workspace_gib=args.workspace_gib,
    )
    start = time.perf_counter()
    entry = build_engine(args.artifact, config)
    seconds = round(time.perf_counter() - start, 2)
    emit(
        {**asdict(entry), "seconds": seconds},
        args.json,
        [
            f"built {entry.file} ({entry.precision}, batches {entry.min_batch}/{entry.opt_batch}/{entry.max_batch}) "
            f"with TensorRT {entry.tensorrt_version} for compute capability {entry.compute_capability} "
            f"in {seconds} s"
        ],
    )
    return 0
