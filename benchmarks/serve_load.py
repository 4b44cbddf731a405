"""Load test of ``prunecast serve`` on loopback, against the in-process Forecaster.

Starts ``prunecast serve ART_DIR`` in a subprocess on a free 127.0.0.1 port (its own
process, as deployed, so the load generator does not share its interpreter), then for each
concurrency level runs that many clients (one keep-alive connection each, through a
minimal HTTP/1.1 client so the load generator costs the shared cores little), sending a
bounded number of requests back to back (one series per request by default: the server's
batcher has to do the merging).
Every level reports throughput (series/s), p50/p95/p99 latency, the mean batch size the
server formed (from ``/metrics``) and errors; it is compared with ``Forecaster.predict``
throughput in this process at batch 1, 8, 64 and 256: the best of all threads with and
without spinning and one thread (batch 64 re-measured just before each level). A sample of served forecasts is
checked against in-process ``predict``. The server is stopped with SIGTERM at the end.

    python benchmarks/serve_load.py ART_DIR [--concurrency 1 8 64 256] [--requests 3000]

ART_DIR comes from ``prunecast export`` (e.g. TTM r2: ``prunecast export
ibm-granite/granite-timeseries-ttm-r2 --out /tmp/ttm_r2``). Writes
``benchmarks/results/serve_load.json`` and ``serve_load.png``. Client and server share the
machine's cores, so on a small machine the client's own cost is part of what is measured.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np

from prunecast.data import prepare_windows
from prunecast.runtime import Forecaster

RESULTS = Path(__file__).resolve().parent / "results"
PRUNECAST = [sys.executable, "-c", "import sys; from prunecast.cli import main; sys.exit(main())"]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("art_dir", help="artifact directory from `prunecast export`")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 64, 256])
    p.add_argument("--requests", type=int, default=3000, help="requests per level (default 3000; 300 at c=1)")
    p.add_argument("--series-per-request", type=int, default=1)
    p.add_argument("--max-batch", type=int, default=64, help="server --max-batch (default 64)")
    p.add_argument("--max-wait-ms", type=float, default=2.0, help="server --max-wait-ms (default 2)")
    p.add_argument("--threads", type=int, default=None, help="server model threads (default: all)")
    p.add_argument(
        "--concurrent-batches", type=int, default=1, help="server --concurrent-batches (default 1)"
    )
    p.add_argument("--seconds", type=float, default=3.0, help="time per in-process batch size (default 3)")
    p.add_argument("--out", default=str(RESULTS / "serve_load.json"))
    return p.parse_args()


def real_contexts(context_length: int, horizon: int, count: int) -> np.ndarray:
    """``count`` scaled ETTh1 test windows, as ``[count, L]`` float32."""
    test = prepare_windows("ETTh1", context_length, horizon).test
    index = np.linspace(0, len(test) - 1, count).astype(int)
    return np.ascontiguousarray(test.gather(index)[0], dtype=np.float32)


def in_process(forecasters: dict[str, Forecaster], contexts: np.ndarray, batch: int, seconds: float) -> dict:
    """Steady-state ``predict`` throughput at one batch size for each forecaster setting, and the best.

    Which setting wins depends on how busy the machine is (spinning ORT threads win on an
    idle one and lose badly on a busy one), so the reference is the best of them, measured
    side by side.
    """
    x = np.ascontiguousarray(np.resize(contexts, (batch, contexts.shape[1])))
    out: dict = {"batch": batch}
    for name, forecaster in forecasters.items():
        for _ in range(3):
            forecaster.predict(x)
        times = []
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            t = time.perf_counter()
            forecaster.predict(x)
            times.append(time.perf_counter() - t)
        out[name] = {
            "series_per_s": round(batch * len(times) / sum(times), 1),
            "latency_ms_p50": round(1000 * float(np.median(times)), 3),
        }
    out["series_per_s"] = max(v["series_per_s"] for k, v in out.items() if k != "batch")
    return out


class Server:
    """``prunecast serve`` in a subprocess, on a free loopback port."""

    def __init__(self, art_dir: str, args: argparse.Namespace):
        cmd = [*PRUNECAST, "serve", art_dir, "--host", "127.0.0.1", "--port", "0", "--json"]
        cmd += [
            "--backend",
            "onnxruntime",
            "--max-batch",
            str(args.max_batch),
            "--max-wait-ms",
            str(args.max_wait_ms),
        ]
        cmd += ["--concurrent-batches", str(args.concurrent_batches)]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"server exited with {self.proc.wait()} before listening")
        self.info = json.loads(line)
        self.url = self.info["url"]

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)


class Connection:
    """A minimal keep-alive HTTP/1.1 client for one connection: the load generator shares the
    machine with the server, so it does as little per request as a client can (no parsing
    beyond the status line and Content-Length)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        return cls(*await asyncio.open_connection(host, port))

    async def request(self, raw: bytes) -> tuple[int, bytes]:
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        return status, await self.reader.readexactly(length)

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


def post_bytes(host: str, port: int, path: str, body: bytes) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def batch_metrics(host: str, port: int) -> tuple[float, float]:
    """``(model calls, series batched)`` so far, from ``/metrics``."""
    conn = await Connection.open(host, port)
    _, text = await conn.request(f"GET /metrics HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
    await conn.close()
    values = dict(line.rsplit(" ", 1) for line in text.decode().splitlines() if not line.startswith("#"))
    return float(values["prunecast_batch_size_count"]), float(values["prunecast_batch_size_sum"])


async def load_level(url: str, bodies: list[bytes], concurrency: int, requests: int, series: int) -> dict:
    """``concurrency`` clients, one connection each, sharing ``requests`` requests back to back."""
    host, port = url.removeprefix("http://").split(":")
    port = int(port)
    raws = [post_bytes(host, port, "/v1/forecast", body) for body in bodies]
    conns = await asyncio.gather(*(Connection.open(host, port) for _ in range(concurrency)))
    await asyncio.gather(*(conn.request(raws[k % len(raws)]) for k, conn in enumerate(conns)))  # warm up
    calls0, batched0 = await batch_metrics(host, port)
    latencies: list[float] = []
    errors: dict[str, int] = {}
    remaining = [requests]

    async def client(k: int, conn: Connection) -> None:
        while remaining[0] > 0:
            remaining[0] -= 1
            raw = raws[(k + remaining[0]) % len(raws)]
            t = time.perf_counter()
            try:
                status, _ = await asyncio.wait_for(conn.request(raw), 120)
            except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError) as exc:
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                return
            if status == 200:
                latencies.append(time.perf_counter() - t)
            else:
                errors[str(status)] = errors.get(str(status), 0) + 1

    start = time.perf_counter()
    await asyncio.gather(*(client(k, conn) for k, conn in enumerate(conns)))
    wall = time.perf_counter() - start
    calls1, batched1 = await batch_metrics(host, port)
    await asyncio.gather(*(conn.close() for conn in conns))
    lat = np.array(latencies) * 1000
    return {
        "concurrency": concurrency,
        "requests": requests,
        "series_per_request": series,
        "ok": len(latencies),
        "errors": errors,
        "seconds": round(wall, 3),
        "series_per_s": round(len(latencies) * series / wall, 1),
        "latency_ms_p50": round(float(np.percentile(lat, 50)), 2) if len(lat) else None,
        "latency_ms_p95": round(float(np.percentile(lat, 95)), 2) if len(lat) else None,
        "latency_ms_p99": round(float(np.percentile(lat, 99)), 2) if len(lat) else None,
        "mean_batch_size": round((batched1 - batched0) / (calls1 - calls0), 2) if calls1 > calls0 else None,
    }


async def served_parity(url: str, contexts: np.ndarray, forecaster: Forecaster) -> float:
    """Largest gap between served forecasts and in-process ``predict`` on the same series."""
    host, port = url.removeprefix("http://").split(":")
    conn = await Connection.open(host, int(port))
    body = json.dumps({"series": contexts.tolist()}).encode()
    status, reply = await conn.request(post_bytes(host, int(port), "/v1/forecast", body))
    await conn.close()
    if status != 200:
        raise RuntimeError(f"server answered {status}: {reply[:200]!r}")
    served = np.array(json.loads(reply)["forecast"], dtype=np.float32)
    return float(np.abs(served - forecaster.predict(contexts)).max())


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = result["server"]
    conc = [lv["concurrency"] for lv in levels]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(conc, [lv["series_per_s"] for lv in levels], "o-", label="HTTP server")
    for ref in result["in_process"]:
        ax1.axhline(ref["series_per_s"], ls=":", lw=1, color="gray")
        ax1.text(conc[0], ref["series_per_s"], f" in-process batch {ref['batch']}", fontsize=7, va="bottom")
    ax1.set(xscale="log", xlabel="concurrent clients", ylabel="series / s", title="throughput")
    ax1.legend()
    for key in ("latency_ms_p50", "latency_ms_p95", "latency_ms_p99"):
        ax2.plot(conc, [lv[key] for lv in levels], "o-", label=key.split("_")[-1])
    ax2.set(xscale="log", yscale="log", xlabel="concurrent clients", ylabel="ms", title="request latency")
    ax2.legend()
    fig.suptitle(f"prunecast serve, {result['model']} ({result['machine']})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    args = parse_args()
    load = partial(Forecaster.load, args.art_dir, backend="onnxruntime")
    forecasters = {
        "all_threads_spinning": load(spinning=True),
        "all_threads_no_spinning": load(spinning=False),
        "one_thread": load(threads=1),
    }
    forecaster = forecasters["one_thread"]
    contexts = real_contexts(forecaster.context_length, forecaster.horizon, 512)
    reference = [in_process(forecasters, contexts, b, args.seconds) for b in (1, 8, 64, 256)]
    for ref in reference:
        print(f"in-process batch {ref['batch']:>3}: {ref['series_per_s']:>8.1f} series/s", flush=True)

    k = args.series_per_request
    bodies = [
        json.dumps({"series": contexts[i : i + k].tolist()}).encode()
        for i in range(0, len(contexts) - k + 1, k)
    ]
    server = Server(args.art_dir, args)
    levels = []
    try:
        parity = asyncio.run(served_parity(server.url, contexts[:64], forecaster))
        for c in args.concurrency:
            requests = max(c, args.requests if c > 1 else args.requests // 10)
            # in-process batch 64 again just before each level (the server idles meanwhile), so the
            # ratio compares figures taken minutes apart at most on a machine whose load drifts
            adjacent = in_process(forecasters, contexts, 64, args.seconds)
            level = asyncio.run(load_level(server.url, bodies, c, requests, k))
            level["in_process_batch64_series_per_s"] = adjacent["series_per_s"]
            level["vs_in_process_batch64"] = round(level["series_per_s"] / adjacent["series_per_s"], 3)
            ref_same = next((r for r in reference if r["batch"] == min(c * k, args.max_batch)), None)
            if ref_same is not None:
                level["vs_in_process_same_batch"] = round(level["series_per_s"] / ref_same["series_per_s"], 3)
            levels.append(level)
            print(
                f"c={c:>3}: {level['series_per_s']:>8.1f} series/s ({level['vs_in_process_batch64']:.0%} of "
                f"in-process batch 64), p50 {level['latency_ms_p50']} ms, p99 {level['latency_ms_p99']} ms, "
                f"mean batch {level['mean_batch_size']}, errors {level['errors'] or 0}",
                flush=True,
            )
    finally:
        exit_code = server.stop()

    result = {
        "model": forecaster.manifest.source_model,
        "artifact": {
            "parameters": forecaster.manifest.parameters,
            "precision": forecaster.manifest.precision,
        },
        "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} CPUs (shared with other work: noisy)",
        "server": levels,
        "in_process": reference,
        "server_config": {
            "backend": server.info["backend"],
            "device": server.info["device"],
            "threads": server.info.get("threads"),
            "max_batch": args.max_batch,
            "max_wait_ms": args.max_wait_ms,
            "concurrent_batches": args.concurrent_batches,
            "process": "separate from the load generator, same machine",
        },
        "served_vs_in_process_max_abs_err": parity,
        "server_exit_code": exit_code,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    plot(result, out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
