"""``prunecast serve ART_DIR``: the HTTP forecasting service with dynamic batching, on its own
``/v1/forecast`` and on the Open Inference Protocol (KServe v2 / Triton HTTP) at ``/v2``."""

from __future__ import annotations

import argparse

from prunecast.cli.common import emit


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve forecasts from an artifact over HTTP, with dynamic batching")
    p.add_argument("art_dir", metavar="ART_DIR", help="artifact directory (from `prunecast export`)")
    p.add_argument(
        "--name", default=None, help="the model's name on /v2 (default: the artifact directory's name)"
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    p.add_argument("--backend", default="auto", choices=("auto", "onnxruntime", "tensorrt", "torch"))
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads per batch (default: all)")
    p.add_argument("--max-batch", type=int, default=64, help="series per model call (default 64)")
    p.add_argument(
        "--max-wait-ms",
        type=float,
        default=2.0,
        help="longest a request waits for a batch to fill (default 2)",
    )
    p.add_argument(
        "--max-queue", type=int, default=1024, help="queued requests before new ones get 503 (default 1024)"
    )
    p.add_argument(
        "--concurrent-batches",
        type=int,
        default=1,
        help="model calls in flight at once (default 1; e.g. 2 with --threads 1 on a busy 2-core CPU)",
    )
    p.add_argument("--timeout-s", type=float, default=None, help="default per-request timeout (default none)")
    p.add_argument(
        "--drain-s",
        type=float,
        default=0.0,
        help="on SIGTERM, seconds to keep serving while /v2/health/ready says 503 (default 0)",
    )
    p.add_argument("--max-body-mb", type=float, default=8.0, help="largest request body (default 8 MB)")
    p.add_argument(
        "--loop",
        default="auto",
        choices=("auto", "asyncio", "uvloop"),
        help="event loop (default auto: uvloop when installed, else asyncio)",
    )
    p.add_argument("--json", action="store_true", help="print the startup line as one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from prunecast.runtime import BatcherConfig, Forecaster
    from prunecast.runtime.server import ServeConfig, model_info, resolve_loop, serve

    batcher = BatcherConfig(
        max_batch_size=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        max_queue=args.max_queue,
        timeout_s=args.timeout_s,
        concurrent_batches=args.concurrent_batches,
    )
    config = ServeConfig(
        host=args.host,
        port=args.port,
        batcher=batcher,
        max_body_bytes=int(args.max_body_mb * 1024 * 1024),
        model_name=args.name,
        drain_s=args.drain_s,
        loop=args.loop,
    )
    loop = resolve_loop(args.loop)  # before loading the model: a missing uvloop fails at once
    # spinning off: idle ORT threads would otherwise steal the CPU the event loop needs
    forecaster = Forecaster.load(
        args.art_dir, backend=args.backend, device=args.device, threads=args.threads, spinning=False
    )

    v2 = model_info(forecaster, args.name)

    def ready(url: str) -> None:
        info = {
            "url": url,
            **forecaster.describe(),
            "name": v2.name,
            "version": v2.version,
            "v2_url": f"{url}/v2/models/{v2.name}",
            "max_batch_size": args.max_batch,
            "max_wait_ms": args.max_wait_ms,
            "concurrent_batches": args.concurrent_batches,
            "loop": loop,
        }
        emit(
            info,
            args.json,
            [
                f"serving {info['model']} ({info['context_length']} -> {info['horizon']}) on {url}",
                f"backend {info['backend']} on {info['device']}"
                + (f" ({info['fallback']})" if info.get("fallback") else "")
                + f"; batches up to {args.max_batch} series, waiting at most {args.max_wait_ms} ms"
                + f"; event loop {loop}",
                f"Open Inference Protocol: model {v2.name!r} version {v2.version} at {info['v2_url']}",
                "POST /v1/forecast  GET /healthz  GET /metrics; Ctrl-C stops after answering requests in flight",
            ],
        )

    serve(forecaster, config, on_ready=ready)
    return 0
