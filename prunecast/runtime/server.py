"""The HTTP service: ``/v1/forecast`` and the Open Inference Protocol (``/v2``), one micro-batcher.

Both protocols' requests go through the same batcher, so their rows merge into the same
model calls. ``/v1/forecast`` status codes: 200 forecasts; 400 a body that is not JSON; 413 a
body over the size limit; 422 JSON that is not a valid request (the message names the series
and the problem); 503 overloaded (queue full) or shutting down; 504 the request's timeout
passed. ``/v2`` (see :mod:`prunecast.runtime.oip`): 400 for any invalid request, 404 for an
unknown model or version, 413, 503 and 504 as for v1; health endpoints answer 200 or 503
with an empty body, as the protocol has it. Shutdown stops listening first and answers every
request already accepted before exiting; readiness turns false as it starts.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import orjson
from aiohttp import web

from prunecast.runtime import oip
from prunecast.runtime.batcher import BatcherClosed, BatcherConfig, MicroBatcher, Overloaded, RequestTimeout
from prunecast.runtime.forecaster import Forecaster
from prunecast.runtime.metrics import CONTENT_TYPE, ServerMetrics
from prunecast.runtime.validation import InputError, prepare_batch

FORECAST_PATH = "/v1/forecast"
MODEL_VERSION = "1"
#: event loops ``serve`` can run on; ``auto`` is uvloop when it is installed, as in uvicorn
LOOPS = ("auto", "asyncio", "uvloop")


def _check_loop(loop: str) -> None:
    if loop not in LOOPS:
        raise ValueError(f"loop must be one of {', '.join(LOOPS)}, got {loop!r}")


@dataclass(frozen=True)
class ServeConfig:
    """Where to listen and how to batch. ``max_body_bytes`` bounds one request (413 beyond it);
    ``shutdown_timeout_s`` bounds how long shutdown waits for requests in flight. ``drain_s``:
    how long shutdown keeps serving while readiness already says no, so a load balancer (a
    Kubernetes readiness probe) stops sending before the port closes. ``model_name`` is the
    model's name on ``/v2`` (default: the artifact directory's name). ``loop``: the event loop
    :func:`serve` runs on (one of :data:`LOOPS`; see :func:`resolve_loop`). On an idle 2-core machine
    uvloop served 8-21% more than asyncio's loop at 64 clients and as much at 256
    (``benchmarks/results/serve_load_loops.json``), which is why ``auto`` prefers it."""

    host: str = "127.0.0.1"
    port: int = 8000
    batcher: BatcherConfig = field(default_factory=BatcherConfig)
    max_body_bytes: int = 8 * 1024 * 1024
    shutdown_timeout_s: float = 60.0
    drain_s: float = 0.0
    model_name: str | None = None
    loop: str = "auto"

    def __post_init__(self) -> None:
        _check_loop(self.loop)


def model_info(forecaster: Forecaster, name: str | None = None) -> oip.ModelInfo:
    """How the Open Inference Protocol describes ``forecaster`` (named ``name`` or its artifact directory)."""
    backend = forecaster.backend.name
    return oip.ModelInfo(
        name=name or forecaster.art_dir.resolve().name,
        version=MODEL_VERSION,
        platform=oip.PLATFORMS.get(backend, backend),
        context_length=forecaster.context_length,
        horizon=forecaster.horizon,
        quantile_levels=forecaster.quantile_levels,
    )


def served_outputs(forecaster: Forecaster) -> Callable[[np.ndarray], dict[str, np.ndarray]]:
    """The batcher's model call: every output the model has (``forecast``, and ``quantiles`` for a
    quantile model), by its v2 name, from one run. A merged batch serves requests wanting different
    outputs, so it computes them all; the graph computes the quantiles for the median forecast anyway."""
    names = forecaster.manifest.output_names
    if names == (oip.FORECAST,):
        return lambda batch: {oip.FORECAST: forecaster.predict_batch(batch)}
    return lambda batch: forecaster.predict_batch_outputs(batch, names)


class _Service:
    """The handlers, over one forecaster, one batcher and one metrics registry."""

    def __init__(self, forecaster: Forecaster, config: ServeConfig):
        self.forecaster = forecaster
        self.config = config
        self.info = model_info(forecaster, config.model_name)
        self.batcher = MicroBatcher(served_outputs(forecaster), config.batcher, on_batch=self._on_batch)
        described = forecaster.describe()
        self.metrics = ServerMetrics(
            lambda: self.batcher.depth,
            {
                "model": self.info.name,
                "source_model": forecaster.manifest.source_model,
                "backend": described["backend"],
                "device": described["device"],
                "precision": forecaster.manifest.precision,
                "version": self.info.version,
            },
        )
        self.model = forecaster.manifest.source_model
        self.started = False
        self.closing = False

    @property
    def ready(self) -> bool:
        return self.started and not self.closing

    def _on_batch(self, size: int, compute_s: float, queued_s: list[float]) -> None:
        self.metrics.observe_batch(size, compute_s, queued_s)

    # --- /v1 ---------------------------------------------------------------------------------

    async def forecast(self, request: web.Request) -> web.Response:
        loop = asyncio.get_running_loop()
        start = loop.time()
        series = 0
        try:
            batch, timeout_s = await self._parse(request)
            series = len(batch)
            out = await self.batcher.submit(batch, timeout_s)
            body = orjson.dumps(
                {"forecast": np.ascontiguousarray(out[oip.FORECAST]), "model": self.model},
                option=orjson.OPT_SERIALIZE_NUMPY,
            )
            response = web.Response(body=body, content_type="application/json")
        except InputError as exc:
            response = _error(422, str(exc))
        except Exception as exc:  # noqa: BLE001 - mapped to its status; a model failure is a 500
            response = _failure(exc)
        self.metrics.observe_request(
            "v1", response.status, loop.time() - start, series if response.status == 200 else 0
        )
        return response

    async def _parse(self, request: web.Request):
        """The validated batch and timeout of a forecast request, or a :class:`_Refused` / InputError."""
        raw = await self._read(request)
        try:
            payload = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise _Refused(400, f"body is not valid JSON: {exc}") from None
        if not isinstance(payload, dict) or "series" not in payload:
            raise InputError('expected a JSON object {"series": [[...], ...]}')
        unknown = set(payload) - {"series", "pad", "timeout_s"}
        if unknown:
            raise InputError(f"unknown fields {sorted(unknown)}; expected series, pad, timeout_s")
        pad = payload.get("pad", False)
        if not isinstance(pad, bool):
            raise InputError(f"pad must be true or false, got {pad!r}")
        timeout_s = payload.get("timeout_s")
        if timeout_s is not None and (
            isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or timeout_s <= 0
        ):
            raise InputError(f"timeout_s must be a positive number of seconds, got {timeout_s!r}")
        if not isinstance(payload["series"], list):
            raise InputError(f"series must be a list of series, got {type(payload['series']).__name__}")
        return prepare_batch(payload["series"], self.forecaster.context_length, pad), timeout_s

    async def _read(self, request: web.Request) -> bytes:
        """The request body, or a 413 :class:`_Refused` over the size limit."""
        limit = self.config.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            raise _Refused(
                413, f"request body of {request.content_length} bytes is over the {limit}-byte limit"
            )
        try:
            return await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise _Refused(413, f"request body is over the {limit}-byte limit") from None

    async def healthz(self, request: web.Request) -> web.Response:
        status = "draining" if self.closing else "ok"
        body = {"status": status, **self.forecaster.describe(), "queue_depth": self.batcher.depth}
        return web.json_response(body, status=200 if status == "ok" else 503)

    async def metrics_text(self, request: web.Request) -> web.Response:
        response = web.Response(body=self.metrics.render())
        response.headers["Content-Type"] = CONTENT_TYPE
        return response

    # --- /v2: the Open Inference Protocol -------------------------------------------------------

    async def live(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def server_ready(self, request: web.Request) -> web.Response:
        return web.Response(status=200 if self.ready else 503)

    async def server_metadata(self, request: web.Request) -> web.Response:
        return web.json_response(oip.server_metadata())

    async def model_metadata(self, request: web.Request) -> web.Response:
        refused = self._unknown_model(request)
        return refused or web.json_response(self.info.metadata())

    async def model_ready(self, request: web.Request) -> web.Response:
        refused = self._unknown_model(request)
        return refused or web.Response(status=200 if self.ready else 503)

    async def infer(self, request: web.Request) -> web.Response:
        loop = asyncio.get_running_loop()
        start = loop.time()
        series = 0
        response = self._unknown_model(request)
        if response is None:
            try:
                body = await self._read(request)
                parsed = oip.parse_infer(body, request.headers.get(oip.HEADER_LENGTH), self.info)
                series = len(parsed.context)
                out = await self.batcher.submit(parsed.context, parsed.timeout_s)
                response = _infer_response(*oip.encode_infer(parsed, out, self.info))
            except oip.ProtocolError as exc:
                response = _error(400, str(exc))
            except Exception as exc:  # noqa: BLE001 - mapped to its status; a model failure is a 500
                response = _failure(exc)
        self.metrics.observe_request(
            "v2", response.status, loop.time() - start, series if response.status == 200 else 0
        )
        return response

    def _unknown_model(self, request: web.Request) -> web.Response | None:
        """A 404 for a model name or version this server does not serve, else None."""
        name, version = request.match_info["name"], request.match_info.get("version")
        if name != self.info.name:
            return _error(404, f"unknown model {name!r}; this server serves {self.info.name!r}")
        if version is not None and version != self.info.version:
            return _error(404, f"model {name!r} has no version {version!r}; it has {self.info.version!r}")
        return None

    # --- lifecycle -------------------------------------------------------------------------------

    async def on_startup(self, app: web.Application) -> None:
        await self.batcher.start()
        self.started = True

    async def on_shutdown(self, app: web.Application) -> None:
        self.closing = True  # not ready, /healthz says "draining"; queued and in-flight requests still run

    async def on_cleanup(self, app: web.Application) -> None:
        await self.batcher.close()


class _Refused(Exception):
    """A request refused before validation (bad JSON, too large): status and message."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _error(status: int, message: str, headers: dict | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


def _failure(exc: Exception) -> web.Response:
    """The response for a request that failed after parsing (or was refused before it)."""
    if isinstance(exc, _Refused):
        return _error(exc.status, str(exc))
    if isinstance(exc, Overloaded):
        return _error(503, f"overloaded: {exc}", {"Retry-After": "1"})
    if isinstance(exc, BatcherClosed):
        return _error(503, str(exc))
    if isinstance(exc, RequestTimeout):
        return _error(504, f"timed out: {exc}")
    return _error(500, f"forecast failed: {type(exc).__name__}: {exc}")


def _infer_response(body: bytes, header_length: int | None) -> web.Response:
    if header_length is None:
        return web.Response(body=body, content_type="application/json")
    response = web.Response(body=body, content_type="application/octet-stream")
    response.headers[oip.HEADER_LENGTH] = str(header_length)
    return response


def create_app(forecaster: Forecaster, config: ServeConfig = ServeConfig()) -> web.Application:
    """The aiohttp application serving ``forecaster``; the batcher starts and stops with it."""
    service = _Service(forecaster, config)
    # aiohttp's own body limit is set just above ours, so our handler reports 413 as JSON
    app = web.Application(client_max_size=config.max_body_bytes + 1)
    # aiohttp tries the /v2/models/{name}... patterns in the order added: infer, the hot path, first
    models = ("/v2/models/{name}", "/v2/models/{name}/versions/{version}")
    for model in models:
        app.router.add_post(model + "/infer", service.infer)
    app.router.add_post(FORECAST_PATH, service.forecast)
    app.router.add_get("/healthz", service.healthz)
    app.router.add_get("/metrics", service.metrics_text)
    app.router.add_get("/v2", service.server_metadata)
    app.router.add_get("/v2/health/live", service.live)
    app.router.add_get("/v2/health/ready", service.server_ready)
    for model in models:
        app.router.add_get(model, service.model_metadata)
        app.router.add_get(model + "/ready", service.model_ready)
    app.on_startup.append(service.on_startup)
    app.on_shutdown.append(service.on_shutdown)
    app.on_cleanup.append(service.on_cleanup)
    app[SERVICE] = service
    return app


SERVICE = web.AppKey("service", _Service)


@dataclass
class RunningServer:
    """A started server: its base URL, and :meth:`stop` for a graceful shutdown."""

    runner: web.AppRunner
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def stop(self) -> None:
        """Say not ready and keep serving for ``drain_s``, then stop listening, answer every
        accepted request, and stop the batcher."""
        service = self.runner.app[SERVICE]
        if service.closing:
            return  # stopped, or stopping
        service.closing = True
        if service.config.drain_s > 0:
            await asyncio.sleep(service.config.drain_s)
        await self.runner.cleanup()


async def start_server(forecaster: Forecaster, config: ServeConfig = ServeConfig()) -> RunningServer:
    """Start serving on the running loop; ``port=0`` picks a free port (see ``.port``)."""
    runner = web.AppRunner(
        create_app(forecaster, config), access_log=None, shutdown_timeout=config.shutdown_timeout_s
    )
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.port)
    await site.start()
    port = runner.addresses[0][1]
    return RunningServer(runner, config.host, port)


def serve(
    forecaster: Forecaster, config: ServeConfig = ServeConfig(), on_ready: Callable[[str], None] | None = None
) -> None:
    """Serve until SIGINT or SIGTERM, then shut down gracefully. ``on_ready(url)`` runs once listening."""

    async def main() -> None:
        server = await start_server(forecaster, config)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        if on_ready is not None:
            on_ready(server.url)
        await stop.wait()
        await server.stop()

    run_on_loop(main(), config.loop)


def resolve_loop(loop: str) -> str:
    """The event loop ``loop`` means here: ``auto`` is uvloop when it is installed, else asyncio.
    Asking for uvloop without it installed is an error that says how to install it."""
    _check_loop(loop)
    if loop == "asyncio":
        return loop
    try:
        import uvloop  # noqa: F401
    except ImportError:
        if loop == "uvloop":
            raise RuntimeError(
                "--loop uvloop needs uvloop: pip install 'prunecast[serve]' (uvloop runs on Linux and macOS)"
            ) from None
        return "asyncio"
    return "uvloop"


def run_on_loop(coroutine, loop: str = "auto"):
    """Run ``coroutine`` to completion on a new event loop of the kind ``loop`` resolves to; its result."""
    if resolve_loop(loop) == "uvloop":
        import uvloop

        return uvloop.run(coroutine)
    return asyncio.run(coroutine)
