"""The HTTP floor of ``prunecast serve`` on this machine: aiohttp answering v2 infer with no work.

``benchmarks/serve_load.py --floor`` starts this in a subprocess. It serves
``POST /v2/models/NAME/infer`` the way ``prunecast serve`` does (aiohttp, the same event loop
choice, one process) but reads the body and answers with a fixed response of the size a real
binary forecast reply has, with no parsing, no batching and no model. Its throughput is the
most any aiohttp server can answer on this machine with the same load generator beside it, so
a serving target above it cannot be met by a cheaper model path, only by more cores, fewer
requests (more series per request) or a cheaper HTTP stack.

    python benchmarks/serve_floor.py NAME HORIZON [--loop auto|asyncio|uvloop]

prints one JSON line ``{"url": ...}`` once listening on a free loopback port; SIGTERM stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal

import numpy as np
from aiohttp import web

from prunecast.runtime import oip
from prunecast.runtime.server import LOOPS, run_on_loop


def fixed_reply(name: str, horizon: int) -> tuple[bytes, int]:
    """What ``prunecast serve`` answers for one series asked back binary: body and JSON length."""
    model = oip.ModelInfo(name, "1", "onnx_onnxv1", context_length=1, horizon=horizon)
    request = oip.InferRequest(np.zeros((1, 1), np.float32), {oip.FORECAST: True})
    return oip.encode_infer(request, {oip.FORECAST: np.zeros((1, horizon), np.float32)}, model)


async def main(name: str, horizon: int) -> None:
    body, header_length = fixed_reply(name, horizon)

    async def infer(request: web.Request) -> web.Response:
        await request.read()
        response = web.Response(body=body, content_type="application/octet-stream")
        response.headers[oip.HEADER_LENGTH] = str(header_length)
        return response

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(text="")

    app = web.Application()
    app.router.add_post("/v2/models/{name}/infer", infer)
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    print(json.dumps({"url": f"http://{host}:{port}"}), flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await runner.cleanup()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name")
    p.add_argument("horizon", type=int)
    p.add_argument("--loop", default="auto", choices=LOOPS)
    args = p.parse_args()
    run_on_loop(main(args.name, args.horizon), args.loop)
