"""``prunecast export-triton``: a Triton Inference Server model repository from an artifact."""

from __future__ import annotations

import argparse

from prunecast.cli.common import emit


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export-triton", help="write a Triton model repository entry for an artifact")
    p.add_argument("artifact", help="artifact directory written by `prunecast export`")
    p.add_argument("--repo", required=True, help="Triton model repository directory")
    p.add_argument("--backend", choices=("onnxruntime", "tensorrt"), default="onnxruntime")
    p.add_argument(
        "--max-batch", type=int, default=None, help="max batch size (default 256, or the engine's max batch)"
    )
    p.add_argument("--queue-delay-us", type=int, default=100, help="dynamic batching max queue delay")
    p.add_argument("--name", default=None, help="model name in the repository (default: artifact dir name)")
    p.add_argument("--instances", type=int, default=1, help="model instances (default 1)")
    p.add_argument("--cpu", action="store_true", help="KIND_CPU instances (onnxruntime backend only)")
    p.add_argument("--engine-precision", choices=("fp32", "fp16"), default=None, help="engine to serve")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from prunecast.export.triton import TritonConfig, export_triton

    config = TritonConfig(
        backend=args.backend,
        max_batch_size=args.max_batch,
        max_queue_delay_us=args.queue_delay_us,
        model_name=args.name,
        instance_count=args.instances,
        kind="KIND_CPU" if args.cpu else "KIND_GPU",
        engine_precision=args.engine_precision,
    )
    model_dir = export_triton(args.artifact, args.repo, config)
    files = sorted(str(p.relative_to(model_dir)) for p in model_dir.rglob("*") if p.is_file())
    emit(
        {"model_dir": str(model_dir), "backend": args.backend, "files": files},
        args.json,
        [f"wrote Triton model {model_dir.name} ({args.backend}) to {model_dir}: {', '.join(files)}"],
    )
    return 0
