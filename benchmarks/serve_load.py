"""Load test of ``prunecast serve`` on loopback, per protocol, against the in-process Forecaster.

For each artifact, starts ``prunecast serve ART_DIR`` in a subprocess on a free 127.0.0.1
port (its own process, as deployed, so the load generator does not share its interpreter),
then for each concurrency level and protocol runs that many clients (one keep-alive
connection each, through a minimal HTTP/1.1 client so the load generator costs the shared
cores little), sending a bounded number of requests back to back (one series per request by
default: the server's batcher has to do the merging). Protocols:

- ``v1``: JSON ``POST /v1/forecast``.
- ``v2-binary``: ``POST /v2/models/NAME/infer`` with the binary tensor extension, the body
  framed exactly as Triton's HTTP client (``tritonclient.http``) sends it: its JSON header,
  then the raw FP32 bytes, ``Inference-Header-Content-Length`` saying where the JSON ends;
  the forecast asked back binary. Bodies are built once per request up front; one is checked
  byte for byte against ``tritonclient``'s own when it is installed.

``--floor`` adds the same v2-binary levels against ``serve_floor.py``: aiohttp on the same event
loop answering with a fixed reply, no parsing and no model, so the most an aiohttp server can
answer on this machine beside this load generator (a target above it needs more than a cheaper
model path).

Every level reports throughput (series/s), p50/p95/p99 latency, the mean batch size the
server formed (from ``/metrics``), the server process's CPU time per request (from
``/proc/PID/stat``), the model's compute time per request, the load generator's CPU per
request, and errors. It is compared with ``Forecaster.predict`` throughput in this process
(the best of all threads with and without spinning and one thread) at ``--in-process-batches``,
batch 64 re-measured just before each concurrency level so the ratio compares figures taken
side by side. Served forecasts of both protocols are checked against in-process ``predict``.
Each server is stopped with SIGTERM.

    flock /tmp/prunecast-bench.lock python benchmarks/serve_load.py ART_DIR [ART_DIR ...] [--protocols v1 v2-binary]
        [--concurrency 1 8 64 256] [--requests 3000] [--out benchmarks/results/serve_load_v2.json]

ART_DIR comes from ``prunecast export``; each is labelled by its directory name. Writes the
JSON and a PNG beside it (series/s against clients per protocol, one panel per artifact,
with the in-process batch-64 line). Client and server share the machine's cores, so on a
small machine the client's own cost is part of what is measured; the load average before and
after is recorded, since other work on the machine moves every figure.
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
from prunecast.runtime.server import LOOPS, resolve_loop, run_on_loop

RESULTS = Path(__file__).resolve().parent / "results"
PRUNECAST = [sys.executable, "-c", "import sys; from prunecast.cli import main; sys.exit(main())"]
PROTOCOLS = ("v1", "v2-binary")
HEADER_LENGTH = "Inference-Header-Content-Length"
TARGET = {"protocol": "v2-binary", "concurrency": 64, "vs_in_process_batch64": 0.7}
CLOCK_TICK_S = 1 / os.sysconf("SC_CLK_TCK")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "art_dirs", nargs="+", metavar="ART_DIR", help="artifact directories from `prunecast export`"
    )
    p.add_argument("--protocols", nargs="+", choices=PROTOCOLS, default=list(PROTOCOLS))
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 64, 256])
    p.add_argument(
        "--requests", type=int, default=3000, help="requests per level (default 3000; a tenth at c=1)"
    )
    p.add_argument("--series-per-request", type=int, default=1)
    p.add_argument("--max-batch", type=int, default=64, help="server --max-batch (default 64)")
    p.add_argument("--max-wait-ms", type=float, default=2.0, help="server --max-wait-ms (default 2)")
    p.add_argument("--threads", type=int, default=None, help="server model threads (default: all)")
    p.add_argument(
        "--concurrent-batches", type=int, default=1, help="server --concurrent-batches (default 1)"
    )
    p.add_argument(
        "--in-process-batches",
        type=int,
        nargs="+",
        default=[64],
        help="in-process reference batches (default 64)",
    )
    p.add_argument(
        "--server-loop",
        nargs="+",
        default=["auto"],
        choices=LOOPS,
        help="server --loop (default auto: uvloop when installed); several: one server each, loaded "
        "side by side at every level (the target is judged on the first)",
    )
    p.add_argument(
        "--client-loop",
        default="auto",
        choices=LOOPS,
        help="the load generator's event loop (default auto: uvloop when installed, so the client "
        "takes less of the shared cores)",
    )
    p.add_argument(
        "--floor",
        action="store_true",
        help="also load serve_floor.py (aiohttp answering v2 infer with no parsing and no model) at each "
        "level: the most an aiohttp server can answer here beside this load generator",
    )
    p.add_argument("--seconds", type=float, default=3.0, help="time per in-process batch size (default 3)")
    p.add_argument("--out", default=str(RESULTS / "serve_load_v2.json"))
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
    """``prunecast serve`` in a subprocess, on a free loopback port, serving ``name`` on /v2
    (``floor_horizon``: the no-work floor server of ``serve_floor.py`` instead, answering as if
    for that horizon)."""

    def __init__(
        self,
        art_dir: str,
        name: str,
        args: argparse.Namespace,
        loop: str,
        floor_horizon: int | None = None,
    ):
        if floor_horizon is None:
            cmd = [*PRUNECAST, "serve", art_dir, "--name", name, "--host", "127.0.0.1", "--port", "0"]
            cmd += ["--json", "--backend", "onnxruntime", "--max-batch", str(args.max_batch)]
            cmd += [
                "--max-wait-ms",
                str(args.max_wait_ms),
                "--concurrent-batches",
                str(args.concurrent_batches),
            ]
            if args.threads:
                cmd += ["--threads", str(args.threads)]
        else:
            cmd = [sys.executable, str(Path(__file__).with_name("serve_floor.py")), name, str(floor_horizon)]
        cmd += ["--loop", loop]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.name = name
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"server exited with {self.proc.wait()} before listening")
        self.info = json.loads(line)
        self.host, port = self.info["url"].removeprefix("http://").split(":")
        self.port = int(port)

    def cpu_s(self) -> float:
        """User + system CPU time of the server process so far (all its threads)."""
        stat = Path(f"/proc/{self.proc.pid}/stat").read_text()
        fields = stat.rpartition(")")[2].split()  # after "pid (comm)": state is fields[0]
        return (int(fields[11]) + int(fields[12])) * CLOCK_TICK_S  # utime, stime (stat fields 14, 15)

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

    async def request(self, raw: bytes) -> tuple[int, bytes, bytes]:
        """Send ``raw`` (a whole request); the status, the response head and its body."""
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        return status, head, await self.reader.readexactly(length)

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


def header(head: bytes, name: str) -> str | None:
    """One header's value from a response head."""
    prefix = name.lower().encode() + b":"
    for line in head.split(b"\r\n"):
        if line.lower().startswith(prefix):
            return line[len(prefix) :].strip().decode()
    return None


def http_post(server: Server, path: str, body: bytes, headers: dict[str, str]) -> bytes:
    """A whole HTTP/1.1 POST request, as bytes."""
    lines = [f"POST {path} HTTP/1.1", f"Host: {server.host}:{server.port}"]
    lines += [f"{key}: {value}" for key, value in headers.items()]
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def v1_request(server: Server, batch: np.ndarray) -> bytes:
    body = json.dumps({"series": batch.tolist()}).encode()
    return http_post(server, "/v1/forecast", body, {"Content-Type": "application/json"})


def v2_binary_body(batch: np.ndarray) -> tuple[bytes, int]:
    """The body ``tritonclient.http`` sends for ``batch`` as a binary ``context`` with the forecast
    asked back binary (its JSON header, then the raw bytes), and the JSON header's length."""
    request = {
        "inputs": [
            {
                "name": "context",
                "shape": list(batch.shape),
                "datatype": "FP32",
                "parameters": {"binary_data_size": batch.nbytes},
            }
        ],
        "outputs": [{"name": "forecast", "parameters": {"binary_data": True}}],
    }
    head = json.dumps(request, separators=(",", ":"))  # compact, as tritonclient's rapidjson writes it
    return head.encode() + np.ascontiguousarray(batch, dtype="<f4").tobytes(), len(head)


def v2_request(server: Server, batch: np.ndarray) -> bytes:
    body, json_size = v2_binary_body(batch)
    headers = {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(json_size)}
    return http_post(server, f"/v2/models/{server.name}/infer", body, headers)


BUILDERS = {"v1": v1_request, "v2-binary": v2_request}


def tritonclient_framing_matches(batch: np.ndarray) -> bool | None:
    """Whether :func:`v2_binary_body` is byte for byte what ``tritonclient.http`` builds (None when
    it is not installed)."""
    try:
        import tritonclient.http as httpclient
    except ImportError:
        return None
    tensor = httpclient.InferInput("context", list(batch.shape), "FP32")
    tensor.set_data_from_numpy(batch, binary_data=True)
    outputs = [httpclient.InferRequestedOutput("forecast", binary_data=True)]
    body, json_size = httpclient.InferenceServerClient.generate_request_body([tensor], outputs=outputs)
    return (body, json_size) == v2_binary_body(batch)


async def scrape(server: Server) -> dict[str, float]:
    """Every unlabelled-or-labelled sample of ``/metrics``, by its text name."""
    conn = await Connection.open(server.host, server.port)
    _, _, text = await conn.request(
        f"GET /metrics HTTP/1.1\r\nHost: {server.host}:{server.port}\r\n\r\n".encode()
    )
    await conn.close()
    samples = (
        line.rsplit(" ", 1) for line in text.decode().splitlines() if line and not line.startswith("#")
    )
    return {name: float(value) for name, value in samples}


async def load_level(server: Server, raws: list[bytes], concurrency: int, requests: int, series: int) -> dict:
    """``concurrency`` clients, one connection each, sharing ``requests`` requests back to back."""
    conns = await asyncio.gather(*(Connection.open(server.host, server.port) for _ in range(concurrency)))
    await asyncio.gather(*(conn.request(raws[k % len(raws)]) for k, conn in enumerate(conns)))  # warm up
    before = await scrape(server)
    latencies: list[float] = []
    errors: dict[str, int] = {}
    remaining = [requests]

    async def client(k: int, conn: Connection) -> None:
        while remaining[0] > 0:
            remaining[0] -= 1
            raw = raws[(k + remaining[0]) % len(raws)]
            t = time.perf_counter()
            try:
                status, _, _ = await asyncio.wait_for(conn.request(raw), 120)
            except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError) as exc:
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                return
            if status == 200:
                latencies.append(time.perf_counter() - t)
            else:
                errors[str(status)] = errors.get(str(status), 0) + 1

    cpu0, own0 = server.cpu_s(), time.process_time()
    start = time.perf_counter()
    await asyncio.gather(*(client(k, conn) for k, conn in enumerate(conns)))
    wall = time.perf_counter() - start
    cpu1, own1 = server.cpu_s(), time.process_time()
    after = await scrape(server)
    await asyncio.gather(*(conn.close() for conn in conns))

    def delta(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    lat = np.array(latencies) * 1000
    answered = len(latencies) + sum(errors.values())
    calls = delta("prunecast_execution_total")

    def pct(q: float) -> float | None:
        return round(float(np.percentile(lat, q)), 2) if len(lat) else None

    return {
        "concurrency": concurrency,
        "requests": requests,
        "series_per_request": series,
        "ok": len(latencies),
        "errors": errors,
        "seconds": round(wall, 3),
        "series_per_s": round(len(latencies) * series / wall, 1),
        "latency_ms_p50": pct(50),
        "latency_ms_p95": pct(95),
        "latency_ms_p99": pct(99),
        "mean_batch_size": round(delta("prunecast_inference_total") / calls, 2) if calls else None,
        # the whole server process (event loop, parsing, batcher, model threads) per request answered
        "server_cpu_ms_per_request": round(1000 * (cpu1 - cpu0) / max(answered, 1), 3),
        "server_cpu_cores": round((cpu1 - cpu0) / wall, 2),
        # wall time of the model calls, spread over the requests they served
        "model_compute_ms_per_request": round(
            1000 * delta("prunecast_compute_duration_seconds_sum") / max(answered, 1), 3
        ),
        "loadgen_cpu_ms_per_request": round(1000 * (own1 - own0) / max(answered, 1), 3),
        "loadavg_1m_after": round(os.getloadavg()[0], 2),
    }


async def served_parity(server: Server, contexts: np.ndarray, forecaster: Forecaster) -> dict[str, float]:
    """Largest gap between each protocol's served forecasts and in-process ``predict``."""
    want = forecaster.predict(contexts)
    conn = await Connection.open(server.host, server.port)
    try:
        status, _, reply = await conn.request(v1_request(server, contexts))
        if status != 200:
            raise RuntimeError(f"/v1 answered {status}: {reply[:200]!r}")
        v1 = np.array(json.loads(reply)["forecast"], dtype=np.float32)
        status, head, reply = await conn.request(v2_request(server, contexts))
        if status != 200:
            raise RuntimeError(f"/v2 answered {status}: {reply[:200]!r}")
        json_size = int(header(head, HEADER_LENGTH))
        (tensor,) = json.loads(reply[:json_size])["outputs"]
        v2 = np.frombuffer(reply[json_size:], dtype="<f4").reshape(tensor["shape"])
    finally:
        await conn.close()
    return {"v1": float(np.abs(v1 - want).max()), "v2-binary": float(np.abs(v2 - want).max())}


def bench_artifact(art_dir: str, args: argparse.Namespace) -> dict:
    """In-process reference and every (concurrency, protocol) level for one artifact."""
    label = Path(art_dir).resolve().name
    load = partial(Forecaster.load, art_dir, backend="onnxruntime")
    forecasters = {
        "all_threads_spinning": load(spinning=True),
        "all_threads_no_spinning": load(spinning=False),
        "one_thread": load(threads=1),
    }
    forecaster = forecasters["one_thread"]
    contexts = real_contexts(forecaster.context_length, forecaster.horizon, 512)
    reference = [in_process(forecasters, contexts, b, args.seconds) for b in args.in_process_batches]
    for ref in reference:
        print(
            f"[{label}] in-process batch {ref['batch']:>3}: {ref['series_per_s']:>8.1f} series/s", flush=True
        )

    k = args.series_per_request
    batches = [contexts[i : i + k] for i in range(0, len(contexts) - k + 1, k)]
    # one server per event loop compared, all started up front and loaded in turn at each level
    servers = {loop: Server(art_dir, label, args, loop) for loop in args.server_loop}
    server = servers[args.server_loop[0]]
    key = {
        (protocol, loop): protocol if len(servers) == 1 else f"{protocol} on {resolve_loop(loop)}"
        for protocol in args.protocols
        for loop in servers
    }
    levels: dict[str, list[dict]] = {name: [] for name in key.values()}
    try:
        parity = {
            resolve_loop(loop): run_on_loop(served_parity(srv, contexts[:64], forecaster), args.client_loop)
            for loop, srv in servers.items()
        }
        parity = parity[resolve_loop(args.server_loop[0])] if len(servers) == 1 else parity
        raws = {protocol: [BUILDERS[protocol](server, b) for b in batches] for protocol in args.protocols}
        for c in args.concurrency:
            requests = max(c, args.requests if c > 1 else args.requests // 10)
            # in-process batch 64 again just before each level (the server idles meanwhile), so the
            # ratio compares figures taken a minute apart at most on a machine whose load drifts
            adjacent = in_process(forecasters, contexts, 64, args.seconds)["series_per_s"]
            for (protocol, loop), name in key.items():
                level = run_on_loop(
                    load_level(servers[loop], raws[protocol], c, requests, k), args.client_loop
                )
                level["in_process_batch64_series_per_s"] = adjacent
                level["vs_in_process_batch64"] = round(level["series_per_s"] / adjacent, 3)
                levels[name].append(level)
                print(
                    f"[{label}] {name:>9} c={c:>3}: {level['series_per_s']:>8.1f} series/s "
                    f"({level['vs_in_process_batch64']:.0%} of in-process batch 64 = {adjacent}), "
                    f"p50 {level['latency_ms_p50']} ms, p99 {level['latency_ms_p99']} ms, "
                    f"server CPU {level['server_cpu_ms_per_request']} ms/req, "
                    f"mean batch {level['mean_batch_size']}, errors {level['errors'] or 0}",
                    flush=True,
                )
    finally:
        exit_code = max(srv.stop() for srv in servers.values())
    floor = http_floor(label, forecaster.horizon, batches, args) if args.floor else None
    primary = key.get((TARGET["protocol"], args.server_loop[0]))
    target = next((lv for lv in levels.get(primary, []) if lv["concurrency"] == TARGET["concurrency"]), None)
    return {
        "label": label,
        "art_dir": str(art_dir),
        "model": forecaster.manifest.source_model,
        "artifact": {
            "parameters": forecaster.manifest.parameters,
            "precision": forecaster.manifest.precision,
        },
        "in_process": reference,
        "protocols": levels,
        "served_vs_in_process_max_abs_err": parity,
        "http_floor": floor,
        "target": None
        if target is None
        else {
            **TARGET,
            "levels": primary,
            "measured": target["vs_in_process_batch64"],
            "errors": target["errors"],
            "met": target["vs_in_process_batch64"] >= TARGET["vs_in_process_batch64"]
            and not target["errors"],
            # the HTTP floor at the target's concurrency against the same in-process figure: above
            # the target's 0.7 or not, i.e. whether any aiohttp server could meet it here
            "http_floor_vs_in_process_batch64": _floor_ratio(floor, target),
        },
        "server_config": {
            "backend": server.info["backend"],
            "device": server.info["device"],
            "threads": server.info.get("threads"),
        },
        "server_exit_code": exit_code,
    }


def _floor_ratio(floor: list[dict] | None, target: dict) -> float | None:
    level = next((lv for lv in floor or [] if lv["concurrency"] == TARGET["concurrency"]), None)
    if level is None:
        return None
    return round(level["series_per_s"] / target["in_process_batch64_series_per_s"], 3)


def http_floor(label: str, horizon: int, batches: list[np.ndarray], args: argparse.Namespace) -> list[dict]:
    """The v2-binary levels against the no-work floor server: what HTTP alone allows here."""
    server = Server("", label, args, args.server_loop[0], floor_horizon=horizon)
    levels = []
    try:
        raws = [v2_request(server, b) for b in batches]
        for c in args.concurrency:
            requests = max(c, args.requests if c > 1 else args.requests // 10)
            level = run_on_loop(
                load_level(server, raws, c, requests, args.series_per_request), args.client_loop
            )
            levels.append(level)
            print(
                f"[{label}] HTTP floor c={c:>3}: {level['series_per_s']:>8.1f} series/s, "
                f"server CPU {level['server_cpu_ms_per_request']} ms/req, errors {level['errors'] or 0}",
                flush=True,
            )
    finally:
        server.stop()
    return levels


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = result["artifacts"]
    fig, axes = plt.subplots(1, len(runs), figsize=(5 * len(runs), 4), squeeze=False)
    for ax, run in zip(axes[0], runs, strict=True):
        for protocol, levels in run["protocols"].items():
            conc = [lv["concurrency"] for lv in levels]
            ax.plot(conc, [lv["series_per_s"] for lv in levels], "o-", label=protocol)
        if run.get("http_floor"):
            floor = run["http_floor"]
            ax.plot(
                [lv["concurrency"] for lv in floor],
                [lv["series_per_s"] for lv in floor],
                "k^--",
                lw=1,
                label="HTTP floor (no parsing, no model)",
            )
        ref = next((r["series_per_s"] for r in run["in_process"] if r["batch"] == 64), None)
        if ref is not None:
            ax.axhline(ref, ls="--", color="gray", lw=1, label="in-process batch 64")
            ax.axhline(0.7 * ref, ls=":", color="gray", lw=1, label="70% of it (target)")
        ax.set(xscale="log", xlabel="concurrent clients (1 series / request)", title=run["label"])
        ax.legend(fontsize=8)
        ax.set_ylim(bottom=0)
    axes[0][0].set_ylabel("series / s")
    load = result["loadavg_before"][0]
    fig.suptitle(
        f"prunecast serve, {runs[0]['model']} ({result['machine']}, load average {load})", fontsize=9
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    args = parse_args()
    loadavg_before = [round(v, 2) for v in os.getloadavg()]
    framing = tritonclient_framing_matches(np.zeros((args.series_per_request, 8), dtype=np.float32))
    if framing is False:
        raise SystemExit("the v2-binary request body differs from tritonclient's; fix v2_binary_body")
    runs = [bench_artifact(art_dir, args) for art_dir in args.art_dirs]
    loadavg_after = [round(v, 2) for v in os.getloadavg()]
    cpus = len(os.sched_getaffinity(0))
    result = {
        "machine": f"{platform.machine()}, {cpus} CPUs",
        "loadavg_before": loadavg_before,
        "loadavg_after": loadavg_after,
        "idle": loadavg_before[0] < 0.5 * cpus,
        "v2_binary_framing_equals_tritonclient": framing,
        "server_options": {
            "max_batch": args.max_batch,
            "max_wait_ms": args.max_wait_ms,
            "concurrent_batches": args.concurrent_batches,
            "threads": args.threads,
            "loop": [resolve_loop(loop) for loop in args.server_loop],
            "process": "separate from the load generator, same machine",
        },
        "load_generator": {
            "loop": resolve_loop(args.client_loop),
            "client": "minimal keep-alive HTTP/1.1, one connection per client",
        },
        "requests_per_level": args.requests,
        "artifacts": runs,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    plot(result, out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
