"""The HTTP service on a real loopback port: every endpoint and status code, batching, and shutdown."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys

import aiohttp
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from prunecast.runtime import Backend, BatcherConfig, Forecaster
from prunecast.runtime.server import FORECAST_PATH, ServeConfig, resolve_loop, start_server

L, H = 64, 16
HAS_UVLOOP = importlib.util.find_spec("uvloop") is not None
PRUNECAST = [sys.executable, "-c", "import sys; from prunecast.cli import main; sys.exit(main())"]


@pytest.fixture(scope="module")
def forecaster(small_artifact) -> Forecaster:
    return Forecaster.load(small_artifact, backend="onnxruntime", threads=1, spinning=False)


def series(n: int, length: int = 70, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.sin(np.arange(length) / 5)[None, :] + rng.normal(0, 0.2, (n, length))


def serving(forecaster, scenario, **batcher):
    """Run ``scenario(session, url, server)`` against a fresh server on a free loopback port."""
    max_body = batcher.pop("max_body_bytes", 8 * 1024 * 1024)
    config = ServeConfig(
        port=0, batcher=BatcherConfig(**batcher), max_body_bytes=max_body, shutdown_timeout_s=10
    )

    async def main():
        server = await start_server(forecaster, config)
        try:
            timeout = aiohttp.ClientTimeout(total=30)
            async with aiohttp.ClientSession(timeout=timeout) as session:
                return await scenario(session, server.url, server)
        finally:
            await server.stop()

    return asyncio.run(main())


async def post(session, url, payload=None, data=None):
    body = data if data is not None else json.dumps(payload)
    async with session.post(
        url + FORECAST_PATH, data=body, headers={"Content-Type": "application/json"}
    ) as r:
        return r.status, await r.json()


def test_served_forecasts_equal_in_process_predict(forecaster):
    x = series(5, 90)
    short = [list(np.arange(20.0))]

    async def scenario(session, url, server):
        return await post(session, url, {"series": x.tolist()}), await post(
            session, url, {"series": short, "pad": True}
        )

    (status, body), (pad_status, pad_body) = serving(forecaster, scenario)
    assert status == 200 and body["model"] == "small-ttm"
    served = np.array(body["forecast"], dtype=np.float32)
    assert served.shape == (5, H)
    np.testing.assert_array_equal(served, forecaster.predict(x))
    assert pad_status == 200
    np.testing.assert_array_equal(
        np.array(pad_body["forecast"], np.float32), forecaster.predict(short, pad=True)
    )


def test_concurrent_clients_are_batched_and_each_gets_its_own_forecast(forecaster):
    inputs = [series(1 + i % 3, 64 + i, seed=i) for i in range(40)]

    async def scenario(session, url, server):
        replies = await asyncio.gather(*(post(session, url, {"series": x.tolist()}) for x in inputs))
        async with session.get(url + "/metrics") as r:
            return replies, await r.text()

    replies, metrics = serving(forecaster, scenario, max_batch_size=16, max_wait_ms=20)
    for x, (status, body) in zip(inputs, replies, strict=True):
        assert status == 200
        # merged into other batches: equal up to float32 rounding of batch-size-dependent kernels
        np.testing.assert_allclose(np.array(body["forecast"], np.float32), forecaster.predict(x), atol=1e-6)
    total = sum(len(x) for x in inputs)
    calls = _metric(metrics, "prunecast_batch_size_count")
    assert _metric(metrics, "prunecast_batch_size_sum") == total
    assert calls < len(inputs)  # requests were merged into batches
    assert _metric(metrics, "prunecast_batch_size_bucket", le="16.0") == calls  # none above the max
    assert _metric(metrics, "prunecast_execution_total") == calls
    assert _metric(metrics, "prunecast_inference_total") == total


def _metric(text: str, name: str, **labels: str) -> float:
    """The value of sample ``name`` with exactly ``labels``, parsed by prometheus_client's own parser."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    raise AssertionError(f"{name}{labels} not in /metrics:\n{text}")


def test_healthz_and_metrics(forecaster):
    async def scenario(session, url, server):
        async with session.get(url + "/healthz") as r:
            health = r.status, await r.json()
        await post(session, url, {"series": series(3).tolist()})
        await post(session, url, {"series": [[1.0, None] * 40]})
        async with session.get(url + "/metrics") as r:
            return health, r.status, r.headers["Content-Type"], await r.text()

    (status, health), m_status, m_type, text = serving(forecaster, scenario)
    assert status == 200 and health["status"] == "ok"
    assert health["backend"] == "onnxruntime" and health["context_length"] == L and health["horizon"] == H
    assert m_status == 200 and m_type.startswith("text/plain")
    assert _metric(text, "prunecast_requests_total", protocol="v1", code="200") == 1
    assert _metric(text, "prunecast_requests_total", protocol="v1", code="422") == 1
    assert _metric(text, "prunecast_request_errors_total", protocol="v1") == 1
    assert _metric(text, "prunecast_request_errors_total", protocol="v2") == 0
    assert _metric(text, "prunecast_series_total") == 3
    assert _metric(text, "prunecast_request_duration_seconds_count", protocol="v1") == 2
    assert _metric(text, "prunecast_request_duration_seconds_bucket", protocol="v1", le="+Inf") == 2
    assert _metric(text, "prunecast_batch_size_sum") == 3
    assert _metric(text, "prunecast_queue_depth") == 0
    assert _metric(text, "prunecast_queue_duration_seconds_count") == 1  # the one valid request
    assert _metric(text, "prunecast_compute_duration_seconds_count") == 1
    assert 0 < _metric(text, "prunecast_compute_duration_seconds_sum") < 10
    info = {"model": "small_ttm", "source_model": "small-ttm", "backend": "onnxruntime", "device": "cpu"}
    assert _metric(text, "prunecast_model_info", **info, precision="fp32", version="1") == 1
    assert "# TYPE prunecast_request_duration_seconds histogram" in text


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (
            {"series": [[1.0] * 70, [1.0] * 69 + [None]]},
            r"series 1: missing value \(NaN or null\) at position 69",
        ),
        (
            {"series": [[1.0] * 70, [1.0] * 10]},
            "series 1: has 10 points, fewer than the model's context length 64",
        ),
        ({"series": [[1.0] * 70, ["x"] * 70]}, "series 1: contains a value that is not a number"),
        ({"series": [[1.0] * 70, [[1.0]] * 70]}, "series 1: expected a 1-D series"),
        ({"series": []}, "no series given"),
        ({"series": "1,2,3"}, "series must be a list of series, got str"),
        ({"values": [[1.0] * 70]}, "expected a JSON object"),
        ([[1.0] * 70], "expected a JSON object"),
        ({"series": [[1.0] * 70], "horizon": 5}, r"unknown fields \['horizon'\]"),
        ({"series": [[1.0] * 70], "timeout_s": -1}, "timeout_s must be a positive number"),
        ({"series": [[1.0] * 70], "pad": "yes"}, "pad must be true or false"),
    ],
)
def test_bad_input_is_422_with_a_message(forecaster, payload, message):
    async def scenario(session, url, server):
        return await post(session, url, payload)

    status, body = serving(forecaster, scenario)
    assert status == 422
    assert re.search(message, body["error"]), body["error"]


def test_malformed_json_is_400_and_an_oversize_body_is_413(forecaster):
    async def scenario(session, url, server):
        bad = await post(session, url, data=b'{"series": [[1, 2,')
        big = await post(session, url, {"series": [[1.0] * 70] * 20})
        fine = await post(session, url, {"series": [[1.0] * 70]})
        return bad, big, fine

    (bad_status, bad), (big_status, big), (ok_status, _) = serving(forecaster, scenario, max_body_bytes=4000)
    assert bad_status == 400 and "not valid JSON" in bad["error"]
    assert big_status == 413 and "4000-byte limit" in big["error"]
    assert ok_status == 200


def test_a_full_queue_answers_503_and_a_late_request_504(forecaster):
    async def scenario(session, url, server):
        # the first request sits in the queue for the whole max wait, filling the 1-slot queue
        first = asyncio.ensure_future(post(session, url, {"series": [[1.0] * 64]}))
        await asyncio.sleep(0.1)
        async with session.post(url + FORECAST_PATH, json={"series": [[2.0] * 64]}) as r:
            overloaded = r.status, r.headers.get("Retry-After"), await r.json()
        return overloaded, await first

    (status, retry, body), (first_status, _) = serving(
        forecaster, scenario, max_batch_size=64, max_wait_ms=400, max_queue=1
    )
    assert status == 503 and retry == "1" and "overloaded" in body["error"]
    assert first_status == 200

    async def late(session, url, server):
        return await post(session, url, {"series": [[1.0] * 64], "timeout_s": 0.05})

    status, body = serving(forecaster, late, max_batch_size=64, max_wait_ms=500)
    assert status == 504 and "timed out" in body["error"]


class PoisonedBackend(Backend):
    """The real onnxruntime backend, failing any batch with a series starting at 1e6 (fault injection)."""

    def __init__(self, inner: Backend):
        self.inner, self.name, self.device, self.max_batch = inner, inner.name, inner.device, inner.max_batch

    def run_outputs(self, batch: np.ndarray, outputs: tuple[str, ...]) -> dict[str, np.ndarray]:
        if (batch[:, 0] == 1e6).any():
            raise RuntimeError("poisoned series")
        return self.inner.run_outputs(batch, outputs)


def test_a_model_failure_is_a_500_for_that_request_only(forecaster):
    poisoned = Forecaster(PoisonedBackend(forecaster.backend), forecaster.manifest, forecaster.art_dir)
    good = [series(1, 64, seed=i) for i in range(6)]
    bad = np.full((1, 64), 1e6)

    async def scenario(session, url, server):
        bodies = [{"series": x.tolist()} for x in good[:3]] + [{"series": bad.tolist()}]
        bodies += [{"series": x.tolist()} for x in good[3:]]
        return await asyncio.gather(*(post(session, url, b) for b in bodies))

    replies = serving(poisoned, scenario, max_batch_size=64, max_wait_ms=50)
    statuses = [status for status, _ in replies]
    assert statuses == [200, 200, 200, 500, 200, 200, 200]
    assert "poisoned series" in replies[3][1]["error"]
    for x, (_, body) in zip(good, replies[:3] + replies[4:], strict=True):
        np.testing.assert_allclose(np.array(body["forecast"], np.float32), forecaster.predict(x), atol=1e-6)


LOOPS = [
    "asyncio",
    pytest.param("uvloop", marks=pytest.mark.skipif(not HAS_UVLOOP, reason="uvloop not installed")),
]


@pytest.mark.parametrize("loop", LOOPS)
def test_serve_command_shuts_down_gracefully_answering_requests_in_flight(small_artifact, loop):
    # A long max wait keeps the requests queued when SIGTERM arrives; shutdown does not wait it out.
    cmd = [*PRUNECAST, "serve", str(small_artifact), "--port", "0", "--json", "--name", "tiny"]
    cmd += ["--backend", "onnxruntime", "--threads", "1", "--max-batch", "1000", "--max-wait-ms", "3000"]
    cmd += ["--loop", loop]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        ready = json.loads(proc.stdout.readline())
        url = ready["url"]
        assert ready["backend"] == "onnxruntime" and url.startswith("http://127.0.0.1:")
        assert ready["loop"] == loop
        assert ready["name"] == "tiny" and ready["v2_url"] == f"{url}/v2/models/tiny"
        inputs = [series(1, 64, seed=i) for i in range(20)]

        async def clients():
            async with aiohttp.ClientSession() as session:
                async with session.get(ready["v2_url"]) as r:
                    assert r.status == 200 and (await r.json())["name"] == "tiny"
                tasks = [asyncio.ensure_future(post(session, url, {"series": x.tolist()})) for x in inputs]
                await asyncio.sleep(0.3)
                assert not any(t.done() for t in tasks)  # all still queued
                proc.send_signal(signal.SIGTERM)
                return await asyncio.gather(*tasks)

        replies = asyncio.run(clients())
        assert proc.wait(timeout=30) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert [status for status, _ in replies] == [200] * len(inputs)  # none lost
    fc = Forecaster.load(small_artifact, backend="onnxruntime", threads=1)
    for x, (_, body) in zip(inputs, replies, strict=True):
        np.testing.assert_allclose(np.array(body["forecast"], np.float32), fc.predict(x), atol=1e-6)


def test_serve_command_reports_a_bad_artifact_clearly(tmp_path, capsys):
    from prunecast.cli import main

    assert main(["serve", str(tmp_path / "nope"), "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "prunecast serve: error:" in err and "no such artifact directory" in err


def test_the_event_loop_is_uvloop_when_installed_and_a_missing_one_is_a_clear_error(monkeypatch):
    assert resolve_loop("asyncio") == "asyncio"
    assert resolve_loop("auto") == ("uvloop" if HAS_UVLOOP else "asyncio")
    with pytest.raises(ValueError, match="loop must be one of auto, asyncio, uvloop"):
        ServeConfig(loop="trio")
    monkeypatch.setitem(sys.modules, "uvloop", None)  # as if not installed: importing it fails
    assert resolve_loop("auto") == "asyncio"
    with pytest.raises(RuntimeError, match=r"--loop uvloop needs uvloop: pip install 'prunecast\[serve\]'"):
        resolve_loop("uvloop")
