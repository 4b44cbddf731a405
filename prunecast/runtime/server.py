"""The HTTP service: ``POST /v1/forecast`` through the micro-batcher, ``/healthz`` and ``/metrics``.

Status codes: 200 forecasts; 400 a body that is not JSON; 413 a body over the size limit;
422 JSON that is not a valid request (the message names the series and the problem);
503 overloaded (queue full) or shutting down; 504 the request's timeout passed.
Shutdown stops listening first and answers every request already accepted before exiting.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import orjson
from aiohttp import web

from prunecast.runtime.batcher import BatcherClosed, BatcherConfig, MicroBatcher, Overloaded, RequestTimeout
from prunecast.runtime.forecaster import Forecaster
from prunecast.runtime.metrics import ServerMetrics
from prunecast.runtime.validation import InputError, prepare_batch

FORECAST_PATH = "/v1/forecast"


@dataclass(frozen=True)
class ServeConfig:
    """Where to listen and how to batch. ``max_body_bytes`` bounds one request (413 beyond it);
    ``shutdown_timeout_s`` bounds how long shutdown waits for requests in flight."""

    host: str = "127.0.0.1"
    port: int = 8000
    batcher: BatcherConfig = field(default_factory=BatcherConfig)
    max_body_bytes: int = 8 * 1024 * 1024
    shutdown_timeout_s: float = 60.0


class _Service:
    """The handlers, over one forecaster, one batcher and one metrics registry."""

    def __init__(self, forecaster: Forecaster, config: ServeConfig):
        self.forecaster = forecaster
        self.config = config
        self.batcher = MicroBatcher(forecaster.predict_batch, config.batcher, on_batch=self._on_batch)
        self.metrics = ServerMetrics(lambda: self.batcher.depth)
        self.model = forecaster.manifest.source_model
        self.closing = False

    def _on_batch(self, size: int) -> None:
        self.metrics.batch_size.observe(size)

    async def forecast(self, request: web.Request) -> web.Response:
        loop = asyncio.get_running_loop()
        start = loop.time()
        series = 0
        try:
            batch, timeout_s = await self._parse(request)
            series = len(batch)
            out = await self.batcher.submit(batch, timeout_s)
            body = orjson.dumps(
                {"forecast": np.ascontiguousarray(out), "model": self.model},
                option=orjson.OPT_SERIALIZE_NUMPY,
            )
            response = web.Response(body=body, content_type="application/json")
        except _Refused as refused:
            response = _error(refused.status, str(refused))
        except InputError as exc:
            response = _error(422, str(exc))
        except Overloaded as exc:
            response = _error(503, f"overloaded: {exc}", {"Retry-After": "1"})
        except BatcherClosed as exc:
            response = _error(503, str(exc))
        except RequestTimeout as exc:
            response = _error(504, f"timed out: {exc}")
        except Exception as exc:  # noqa: BLE001 - a model failure is this request's 500, not the server's
            response = _error(500, f"forecast failed: {type(exc).__name__}: {exc}")
        self.metrics.observe_request(
            response.status, loop.time() - start, series if response.status == 200 else 0
        )
        return response

    async def _parse(self, request: web.Request):
        """The validated batch and timeout of a forecast request, or a :class:`_Refused` / InputError."""
        limit = self.config.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            raise _Refused(
                413, f"request body of {request.content_length} bytes is over the {limit}-byte limit"
            )
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise _Refused(413, f"request body is over the {limit}-byte limit") from None
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

    async def healthz(self, request: web.Request) -> web.Response:
        status = "draining" if self.closing else "ok"
        body = {"status": status, **self.forecaster.describe(), "queue_depth": self.batcher.depth}
        return web.json_response(body, status=200 if status == "ok" else 503)

    async def metrics_text(self, request: web.Request) -> web.Response:
        return web.Response(text=self.metrics.render(), content_type="text/plain", charset="utf-8")

    async def on_startup(self, app: web.Application) -> None:
        await self.batcher.start()

    async def on_shutdown(self, app: web.Application) -> None:
        self.closing = True  # /healthz says "draining"; queued and in-flight requests still run

    async def on_cleanup(self, app: web.Application) -> None:
        await self.batcher.close()


class _Refused(Exception):
    """A request refused before validation (bad JSON, too large): status and message."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _error(status: int, message: str, headers: dict | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


def create_app(forecaster: Forecaster, config: ServeConfig = ServeConfig()) -> web.Application:
    """The aiohttp application serving ``forecaster``; the batcher starts and stops with it."""
    service = _Service(forecaster, config)
    # aiohttp's own body limit is set just above ours, so our handler reports 413 as JSON
    app = web.Application(client_max_size=config.max_body_bytes + 1)
    app.router.add_post(FORECAST_PATH, service.forecast)
    app.router.add_get("/healthz", service.healthz)
    app.router.add_get("/metrics", service.metrics_text)
    app.on_startup.append(service.on_startup)
    app.on_shutdown.append(service.on_shutdown)
    app.on_cleanup.append(service.on_cleanup)
    return app


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
        """Stop listening, answer every accepted request, then stop the batcher."""
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

    asyncio.run(main())
