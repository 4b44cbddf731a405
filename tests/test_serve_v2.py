"""The Open Inference Protocol (``/v2``) on a real loopback port, driven by Triton's own HTTP client.

``tritonclient.http`` blocks (gevent), so each server runs in a thread with its own event
loop. Raw HTTP (``http.client``) covers what the client cannot send: nested JSON data and
malformed binary framing.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import re
import threading
import time
from contextlib import contextmanager

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

httpclient = pytest.importorskip("tritonclient.http", reason="tritonclient[http] not installed (dev extra)")
from tritonclient.utils import InferenceServerException  # noqa: E402

from prunecast.runtime import BatcherConfig, Forecaster  # noqa: E402
from prunecast.runtime.server import FORECAST_PATH, ServeConfig, start_server  # noqa: E402

L, H = 64, 16
NAME = "small_ttm"  # the artifact directory's name (tests/conftest.py)
INFER = f"/v2/models/{NAME}/infer"


@pytest.fixture(scope="module")
def forecaster(small_artifact) -> Forecaster:
    return Forecaster.load(small_artifact, backend="onnxruntime", threads=1, spinning=False)


@contextmanager
def served(forecaster: Forecaster, drain_s: float = 0.0, uvloop: bool = False, **batcher):
    """A started server on a free loopback port, its event loop (asyncio's, or uvloop's) in a thread
    of its own."""
    config = ServeConfig(port=0, batcher=BatcherConfig(**batcher), shutdown_timeout_s=10, drain_s=drain_s)
    loop = pytest.importorskip("uvloop").new_event_loop() if uvloop else asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server = asyncio.run_coroutine_threadsafe(start_server(forecaster, config), loop).result(30)
    server.loop = loop
    try:
        yield server
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


@pytest.fixture(scope="module")
def server(forecaster):
    with served(forecaster) as running:
        yield running


def client_for(server, concurrency: int = 1):
    return httpclient.InferenceServerClient(server.url.removeprefix("http://"), concurrency=concurrency)


@pytest.fixture(scope="module")
def client(server):
    c = client_for(server)
    yield c
    c.close()


def series(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (np.sin(np.arange(L) / 5)[None, :] + rng.normal(0, 0.2, (n, L))).astype(np.float32)


def context_input(x: np.ndarray, binary: bool = True, name: str = "context", datatype: str = "FP32"):
    tensor = httpclient.InferInput(name, list(x.shape), datatype)
    tensor.set_data_from_numpy(x, binary_data=binary)
    return tensor


def raw(server, path: str, body: bytes = b"", headers: dict | None = None, method: str = "POST"):
    """One request over a fresh connection: status, headers and body (a hang fails on the timeout)."""
    conn = http.client.HTTPConnection(server.host, server.port, timeout=10)
    try:
        conn.request(method, path, body=body if method == "POST" else None, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def metric(server, name: str, default: float | None = None, **labels: str) -> float:
    """A sample from ``/metrics``; ``default`` for a labelled counter not yet counted."""
    _, _, text = raw(server, "/metrics", method="GET")
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    if default is not None:
        return default
    raise AssertionError(f"{name}{labels} not in /metrics")


def test_health_and_metadata(client):
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(NAME) and client.is_model_ready(NAME, "1")
    assert not client.is_model_ready("nope") and not client.is_model_ready(NAME, "2")
    meta = client.get_server_metadata()
    assert meta["name"] == "prunecast" and "binary_tensor_data" in meta["extensions"]
    model = client.get_model_metadata(NAME)
    assert model == client.get_model_metadata(NAME, "1")
    assert model["name"] == NAME and model["versions"] == ["1"] and model["platform"] == "onnx_onnxv1"
    assert model["inputs"] == [{"name": "context", "datatype": "FP32", "shape": [-1, L]}]
    assert model["outputs"] == [{"name": "forecast", "datatype": "FP32", "shape": [-1, H]}]
    for name, version, message in (("nope", "", "unknown model 'nope'"), (NAME, "2", "no version '2'")):
        with pytest.raises(InferenceServerException) as info:
            client.get_model_metadata(name, version)
        assert info.value.status() == "404" and message in info.value.message()


@pytest.mark.parametrize("binary_in", [True, False], ids=["binary-in", "json-in"])
@pytest.mark.parametrize("binary_out", [True, False, None], ids=["binary-out", "json-out", "default-out"])
def test_infer_equals_in_process_predict(client, forecaster, binary_in, binary_out):
    x = series(5, seed=1)
    outputs = (
        None if binary_out is None else [httpclient.InferRequestedOutput("forecast", binary_data=binary_out)]
    )
    result = client.infer(NAME, [context_input(x, binary_in)], outputs=outputs, request_id="req-7")
    response = result.get_response()
    assert response["id"] == "req-7" and response["model_name"] == NAME and response["model_version"] == "1"
    np.testing.assert_array_equal(result.as_numpy("forecast"), forecaster.predict(x))
    (tensor,) = response["outputs"]
    assert tensor["shape"] == [5, H] and tensor["datatype"] == "FP32"
    # no outputs named: the client asks for all of them binary
    assert ("data" not in tensor) == (binary_out is not False)


def test_binary_infer_from_concurrent_clients_on_uvloop(forecaster):
    with served(forecaster, uvloop=True, max_wait_ms=50) as server:
        client = client_for(server, concurrency=4)
        try:
            xs = [series(1, seed=k) for k in range(8)]
            pending = [client.async_infer(NAME, [context_input(x)]) for x in xs]
            results = [p.get_result(timeout=30) for p in pending]
        finally:
            client.close()
        assert metric(server, "prunecast_execution_total") < len(xs)  # merged into fewer model calls
    for x, result in zip(xs, results, strict=True):
        np.testing.assert_array_equal(result.as_numpy("forecast"), forecaster.predict(x))


def test_nested_json_data_and_a_versioned_path(server, forecaster):
    x = series(2, seed=2)
    body = {
        "id": "n",
        "inputs": [{"name": "context", "shape": [2, L], "datatype": "FP32", "data": x.tolist()}],
    }
    status, headers, reply = raw(server, f"/v2/models/{NAME}/versions/1/infer", json.dumps(body).encode())
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    (tensor,) = json.loads(reply)["outputs"]
    assert tensor["name"] == "forecast" and tensor["shape"] == [2, H] and len(tensor["data"]) == 2 * H
    np.testing.assert_array_equal(np.array(tensor["data"], np.float32).reshape(2, H), forecaster.predict(x))


def test_concurrent_v2_and_v1_clients_are_merged_into_one_batch(forecaster):
    inputs = [series(1, seed=10 + i) for i in range(16)]
    v1_inputs = [series(2, seed=40 + i) for i in range(2)]
    # a long max wait: everything sent within it lands in one model call
    with served(forecaster, max_batch_size=64, max_wait_ms=1500) as server:
        client = client_for(server, concurrency=len(inputs))
        v1_replies = []

        def v1(x):
            status, _, body = raw(server, FORECAST_PATH, json.dumps({"series": x.tolist()}).encode())
            v1_replies.append((x, status, json.loads(body)))

        threads = [threading.Thread(target=v1, args=(x,)) for x in v1_inputs]
        for t in threads:
            t.start()
        pending = [client.async_infer(NAME, [context_input(x)]) for x in inputs]
        results = [p.get_result(timeout=30) for p in pending]
        for t in threads:
            t.join(30)
        client.close()
        executions = metric(server, "prunecast_execution_total")
        inferences = metric(server, "prunecast_inference_total")
        batch_max = metric(server, "prunecast_batch_size_sum")
    for x, result in zip(inputs, results, strict=True):
        # merged with others: equal up to float32 rounding of batch-size-dependent kernels
        np.testing.assert_allclose(result.as_numpy("forecast"), forecaster.predict(x), atol=1e-6)
    for x, status, body in v1_replies:
        assert status == 200
        np.testing.assert_allclose(np.array(body["forecast"], np.float32), forecaster.predict(x), atol=1e-6)
    assert inferences == batch_max == len(inputs) + 2 * len(v1_inputs)
    assert executions == 1  # 18 requests of both protocols, one model call


@pytest.mark.parametrize(
    ("tensor", "outputs", "message"),
    [
        (("context", "FP64", np.float64, L), None, "datatype 'FP64' is not supported; expected FP32"),
        (("context", "FP32", np.float32, 50), None, r"shape \[1, 50\] does not match the model's \[-1, 64\]"),
        (("ctx", "FP32", np.float32, L), None, "unknown input 'ctx'"),
        (("context", "FP32", np.float32, L), ["median"], "unknown output 'median'"),
    ],
)
def test_invalid_requests_from_the_triton_client_are_400(client, tensor, outputs, message):
    name, datatype, dtype, length = tensor
    x = np.ones((1, length), dtype=dtype)
    requested = [httpclient.InferRequestedOutput(o) for o in outputs] if outputs else None
    with pytest.raises(InferenceServerException) as info:
        client.infer(NAME, [context_input(x, name=name, datatype=datatype)], outputs=requested)
    assert info.value.status() == "400"
    assert re.search(message, info.value.message()), info.value.message()


def test_unknown_model_or_version_is_404_on_infer(client):
    for name, version in (("nope", ""), (NAME, "3")):
        with pytest.raises(InferenceServerException) as info:
            client.infer(name, [context_input(series(1))], model_version=version)
        assert info.value.status() == "404"


def _framed(header: dict, binary: bytes, header_length: int | None = None) -> tuple[bytes, dict]:
    head = json.dumps(header).encode()
    length = len(head) if header_length is None else header_length
    return head + binary, {"Inference-Header-Content-Length": str(length)}


def _binary_header(n: int = 1, size: int | None = None, **extra) -> dict:
    size = n * L * 4 if size is None else size
    tensor = {
        "name": "context",
        "shape": [n, L],
        "datatype": "FP32",
        "parameters": {"binary_data_size": size},
    }
    return {"inputs": [{**tensor, **extra}]}


def _json_body(data, shape=(1, L), **request) -> bytes:
    tensor = {"name": "context", "shape": list(shape), "datatype": "FP32", "data": data}
    return json.dumps({"inputs": [tensor], **request}).encode()


ONE = series(1).tobytes()
BAD_REQUESTS = {
    # binary framing whose sizes do not add up
    "header longer than body": (*_framed(_binary_header(), ONE, 100_000), "malformed binary framing"),
    "bytes beyond the inputs": (*_framed(_binary_header(), ONE + b"\0" * 8), "malformed binary framing"),
    "bytes missing": (*_framed(_binary_header(), ONE[:-4]), "malformed binary framing"),
    "header cut mid-JSON": (
        *_framed(_binary_header(), ONE, 20),
        r"request header \(20 bytes\) is not valid JSON",
    ),
    "header length not a number": (
        _framed(_binary_header(), ONE)[0],
        {"Inference-Header-Content-Length": "ten"},
        "must be a byte count",
    ),
    "binary data without the header": (
        json.dumps(_binary_header()).encode() + ONE,
        {},
        "not valid JSON.*binary tensors after the JSON need the Inference-Header-Content-Length header",
    ),
    "binary_data_size without the header": (
        json.dumps(_binary_header()).encode(),
        {},
        "binary_data_size but the request has no Inference-Header-Content-Length",
    ),
    "binary_data_size not the shape's": (
        *_framed(_binary_header(size=100), ONE),
        r"binary_data_size is 100 bytes, but its shape holds 64 FP32 values \(256 bytes\)",
    ),
    # the values
    "NaN in binary data": (
        *_framed(_binary_header(), np.r_[np.ones(L - 1), np.nan].astype(np.float32).tobytes()),
        r"series 0: missing value \(NaN or null\) at position 63",
    ),
    "null in JSON data": (_json_body([1.0] * (L - 1) + [None]), {}, "series 0: missing value"),
    "too few values": (
        _json_body([1.0] * 100, shape=(2, L)),
        {},
        r"data holds 100 values, but shape \[2, 64\] needs 128",
    ),
    "ragged nested data": (
        _json_body([[1.0] * L, [1.0] * 3], shape=(2, L)),
        {},
        "nested lists of equal length",
    ),
    "strings in data": (_json_body(["a"] * L), {}, "data must be numbers"),
    "no data": (
        json.dumps({"inputs": [{"name": "context", "shape": [1, L], "datatype": "FP32"}]}).encode(),
        {},
        "has no data",
    ),
    "no inputs": (b'{"outputs": []}', {}, "request must list its inputs"),
    "not JSON": (b'{"inputs": [', {}, "request body is not valid JSON"),
    "zero rows": (_json_body([], shape=(0, L)), {}, r"shape \[0, 64\] does not match"),
    "bad timeout": (
        _json_body([1.0] * L, parameters={"timeout": -5}),
        {},
        "timeout must be a positive number",
    ),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_malformed_requests_are_400_naming_the_problem(server, forecaster, case):
    body, headers, message = BAD_REQUESTS[case]
    before = metric(server, "prunecast_requests_total", protocol="v2", code="400", default=0)
    status, _, reply = raw(server, INFER, body, {"Content-Type": "application/octet-stream", **headers})
    assert status == 400
    error = json.loads(reply)["error"]
    assert re.search(message, error), error
    assert metric(server, "prunecast_requests_total", protocol="v2", code="400") == before + 1
    # the server is unharmed: a well-framed binary request on a fresh connection still works
    request = {**_binary_header(), "parameters": {"binary_data_output": True}}
    status, headers, reply = raw(server, INFER, *_framed(request, ONE))
    assert status == 200
    (tensor,) = json.loads(reply[: int(headers["Inference-Header-Content-Length"])])["outputs"]
    assert tensor["parameters"]["binary_data_size"] == H * 4
    forecast = np.frombuffer(reply[int(headers["Inference-Header-Content-Length"]) :], "<f4")
    np.testing.assert_array_equal(forecast.reshape(1, H), forecaster.predict(series(1)))


def test_a_full_queue_is_503(forecaster):
    with served(forecaster, max_batch_size=64, max_wait_ms=500, max_queue=1) as server:
        client = client_for(server, concurrency=2)
        first = client.async_infer(NAME, [context_input(series(1))])
        time.sleep(0.2)  # the first request sits in the 1-slot queue for the max wait
        with pytest.raises(InferenceServerException) as info:
            client.infer(NAME, [context_input(series(1, seed=3))])
        assert info.value.status() == "503" and "overloaded" in info.value.message()
        assert first.get_result(timeout=30).as_numpy("forecast").shape == (1, H)
        client.close()


def test_not_ready_while_draining_but_still_serving(forecaster):
    with served(forecaster, drain_s=1.5) as server:
        client = client_for(server)
        assert client.is_server_ready()
        stopping = asyncio.run_coroutine_threadsafe(server.stop(), server.loop)
        time.sleep(0.2)
        assert not client.is_server_ready() and not client.is_model_ready(NAME)
        assert client.is_server_live()
        status, _, body = raw(server, "/healthz", method="GET")
        assert status == 503 and json.loads(body)["status"] == "draining"
        # a load balancer still sending during the drain is answered
        result = client.infer(NAME, [context_input(series(1))])
        assert result.as_numpy("forecast").shape == (1, H)
        stopping.result(30)
        client.close()


# --- quantiles: a Chronos-Bolt artifact (small random weights) ------------------------------------

BOLT = "bolt"  # the artifact directory's name, so the model's name
BOLT_H, LEVELS = 24, 9


@pytest.fixture(scope="module")
def bolt(tmp_path_factory) -> Forecaster:
    """A Chronos-Bolt forecaster with ``quantiles [N, 9, 24]`` beside ``forecast``."""
    pytest.importorskip("chronos")
    import torch

    from prunecast.export.onnx_export import ExportConfig, export_onnx
    from prunecast.models.chronos_bolt import ChronosBoltAdapter
    from tests.test_models_chronos_bolt import small_bolt_config

    torch.manual_seed(0)
    module = ChronosBoltAdapter().from_config(small_bolt_config(), context_length=L, horizon=BOLT_H)
    art = tmp_path_factory.mktemp("serve_v2") / BOLT
    export_onnx(module, art, ExportConfig(batch_sizes=(1, 5), source_model="chronos_bolt"))
    return Forecaster.load(art, backend="onnxruntime", threads=1, spinning=False)


@pytest.fixture(scope="module")
def bolt_client(bolt):
    with served(bolt) as running:
        c = client_for(running)
        yield c
        c.close()


def test_quantile_model_metadata_lists_quantiles(bolt_client):
    model = bolt_client.get_model_metadata(BOLT)
    assert model["outputs"] == [
        {"name": "forecast", "datatype": "FP32", "shape": [-1, BOLT_H]},
        {"name": "quantiles", "datatype": "FP32", "shape": [-1, LEVELS, BOLT_H]},
    ]
    assert model["parameters"]["quantile_levels"] == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]


@pytest.mark.parametrize("binary_out", [True, False], ids=["binary-out", "json-out"])
def test_quantiles_alone_equal_predict_quantiles(bolt_client, bolt, binary_out):
    x = series(5, seed=20)
    outputs = [httpclient.InferRequestedOutput("quantiles", binary_data=binary_out)]
    result = bolt_client.infer(BOLT, [context_input(x, binary=binary_out)], outputs=outputs)
    (tensor,) = result.get_response()["outputs"]
    assert tensor["name"] == "quantiles" and tensor["shape"] == [5, LEVELS, BOLT_H]
    assert ("data" not in tensor) == binary_out
    assert result.as_numpy("forecast") is None
    got = result.as_numpy("quantiles")
    assert got.dtype == np.float32 and np.isfinite(got).all()
    np.testing.assert_array_equal(got, bolt.predict_quantiles(x))


def test_all_outputs_by_default_and_mixed_binary_and_json(bolt_client, bolt):
    x = series(3, seed=21)
    forecast, quantiles = bolt.predict_with_quantiles(x)
    result = bolt_client.infer(BOLT, [context_input(x)])  # no outputs named: all of them, binary
    assert [t["name"] for t in result.get_response()["outputs"]] == ["forecast", "quantiles"]
    np.testing.assert_array_equal(result.as_numpy("forecast"), forecast)
    np.testing.assert_array_equal(result.as_numpy("quantiles"), quantiles)
    outputs = [
        httpclient.InferRequestedOutput("quantiles", binary_data=True),
        httpclient.InferRequestedOutput("forecast", binary_data=False),
    ]
    result = bolt_client.infer(BOLT, [context_input(x, binary=False)], outputs=outputs)
    tensors = {t["name"]: t for t in result.get_response()["outputs"]}
    assert "data" in tensors["forecast"] and "data" not in tensors["quantiles"]
    np.testing.assert_array_equal(result.as_numpy("forecast"), forecast)
    np.testing.assert_array_equal(result.as_numpy("quantiles"), quantiles)


def test_quantile_and_v1_requests_merge_into_one_batch(bolt):
    xs = [series(1, seed=30 + i) for i in range(6)]
    v1_x = series(2, seed=40)
    with served(bolt, max_batch_size=64, max_wait_ms=1500) as server:
        client = client_for(server, concurrency=len(xs))
        v1_reply = []
        thread = threading.Thread(
            target=lambda: v1_reply.append(
                raw(server, FORECAST_PATH, json.dumps({"series": v1_x.tolist()}).encode())
            )
        )
        thread.start()
        outputs = [httpclient.InferRequestedOutput("quantiles")]
        pending = [client.async_infer(BOLT, [context_input(x)], outputs=outputs) for x in xs]
        results = [p.get_result(timeout=30) for p in pending]
        thread.join(30)
        client.close()
        executions = metric(server, "prunecast_execution_total")
    assert executions == 1
    for x, result in zip(xs, results, strict=True):
        np.testing.assert_allclose(result.as_numpy("quantiles"), bolt.predict_quantiles(x), atol=1e-5)
    ((status, _, body),) = v1_reply
    assert status == 200 and set(json.loads(body)) == {"forecast", "model"}  # /v1 unchanged: forecasts only
    np.testing.assert_allclose(
        np.array(json.loads(body)["forecast"], np.float32), bolt.predict(v1_x), atol=1e-5
    )


def test_quantiles_from_a_point_model_are_400_naming_the_output(client, server):
    outputs = [httpclient.InferRequestedOutput("quantiles")]
    with pytest.raises(InferenceServerException) as info:
        client.infer(NAME, [context_input(series(1))], outputs=outputs)
    assert info.value.status() == "400"
    assert (
        "unknown output 'quantiles': the model has 'forecast' (a point-forecast model" in info.value.message()
    )
    status, _, reply = raw(server, INFER, _json_body([1.0] * L, outputs=[{"name": "quantiles"}]))
    assert status == 400 and "unknown output 'quantiles'" in json.loads(reply)["error"]
