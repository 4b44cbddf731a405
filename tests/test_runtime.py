"""The in-process runtime: input validation, the Forecaster on each backend, and the micro-batcher."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import threading
import time
import warnings

import numpy as np
import pytest

from prunecast.export.manifest import ArtifactError, EngineEntry, load_manifest
from prunecast.runtime import (
    BackendError,
    BatcherClosed,
    BatcherConfig,
    Forecaster,
    InputError,
    MicroBatcher,
    Overloaded,
    RequestTimeout,
    prepare_batch,
)
from prunecast.runtime.backends.trt import pick_engine

L = 64  # the small artifact's context length
H = 16


def series(n: int, length: int = 80, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(length)
    return (np.sin(t / 6)[None, :] * rng.uniform(0.5, 2, (n, 1)) + rng.normal(0, 0.1, (n, length))).astype(
        np.float32
    )


@pytest.fixture(scope="module")
def forecaster(small_artifact) -> Forecaster:
    return Forecaster.load(small_artifact, backend="onnxruntime", threads=1)


# ---------------------------------------------------------------- validation


def test_prepare_batch_takes_the_last_context_points_of_each_series():
    ragged = [np.arange(100.0), list(range(70)), np.arange(64.0) * 2]
    batch = prepare_batch(ragged, L)
    assert batch.shape == (3, L) and batch.dtype == np.float32 and batch.flags.c_contiguous
    np.testing.assert_array_equal(batch[0], np.arange(36.0, 100.0))
    np.testing.assert_array_equal(batch[1], np.arange(6.0, 70.0))
    np.testing.assert_array_equal(batch[2], np.arange(64.0) * 2)


def test_prepare_batch_uses_a_ready_array_without_copying_and_slices_longer_ones():
    ready = series(4, L)
    assert prepare_batch(ready, L) is ready
    longer = series(4, 100).astype(np.float64)
    out = prepare_batch(longer, L)
    np.testing.assert_array_equal(out, longer[:, -L:].astype(np.float32))
    assert out.flags.c_contiguous


def test_short_series_is_an_error_naming_it_unless_padding_is_asked():
    data = [np.ones(80), np.arange(1.0, 11.0)]
    with pytest.raises(
        InputError, match=r"series 1: has 10 points, fewer than the model's context length 64"
    ):
        prepare_batch(data, L)
    padded = prepare_batch(data, L, pad=True)
    np.testing.assert_array_equal(padded[1], np.concatenate([np.ones(54), np.arange(1.0, 11.0)]))
    with pytest.raises(InputError, match="series 0: has 10 points"):
        prepare_batch(np.ones((2, 10)), L)
    assert prepare_batch(np.ones((2, 10)), L, pad=True).shape == (2, L)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ([np.ones(70), [1.0] * 69 + [None]], r"series 1: missing value \(NaN or null\) at position 69"),
        ([np.ones(70), np.ones(70), np.r_[np.ones(69), np.nan]], "series 2: missing value"),
        ([np.r_[np.ones(69), np.inf]], "series 0: value at position 69 is infinite"),
        ([[1e300] * 70], "series 0: value at position 6 is infinite or beyond float32 range"),
        ([np.ones(70), ["a"] * 70], "series 1: contains a value that is not a number"),
        ([np.ones(70), {"x": 1}], "series 1: expected a list of numbers, got dict"),
        ([np.ones(70), "1,2,3"], "series 1: expected a list of numbers, got str"),
        ([np.ones(70), np.ones((70, 2))], r"series 1: expected a 1-D series, got shape \(70, 2\)"),
        ([np.ones(70), []], "series 1: is empty"),
        ([], "no series given"),
        (np.ones((0, 70)), "no series given"),
        (np.ones(70), r"series must be 2-D \[N, T\], got an array of shape \(70,\)"),
        (np.ones((2, 70, 1)), "series must be 2-D"),
        (np.array([["a"] * 70]), "series must hold real numbers, got an array of dtype <U1"),
        ("1,2,3", "series must be a 2-D array or a list of 1-D series, got str"),
        (7, "got int"),
    ],
)
def test_bad_input_is_a_value_error_naming_the_series(bad, message):
    with pytest.raises(ValueError, match=message):
        prepare_batch(bad, L)


def test_nan_in_history_before_the_context_is_ignored():
    values = series(2, 100)
    values[1, 5] = np.nan  # outside the last 64 points
    assert np.isfinite(prepare_batch(values, L)).all()
    assert np.isfinite(prepare_batch(list(values), L)).all()
    values[1, 50] = np.nan
    with pytest.raises(InputError, match="series 1: missing value .* at position 50"):
        prepare_batch(values, L)


# ---------------------------------------------------------------- forecaster


def test_onnxruntime_matches_pytorch_on_the_same_artifact(small_artifact, forecaster):
    reference = Forecaster.load(small_artifact, backend="torch")
    x = series(9, 90)
    onnx_out = forecaster.predict(x)
    torch_out = reference.predict(x)
    assert onnx_out.shape == (9, H) and onnx_out.dtype == np.float32
    np.testing.assert_allclose(onnx_out, torch_out, atol=1e-5, rtol=1e-4)
    assert reference.describe()["backend"] == "torch"


def test_large_batches_are_split_to_the_backend_max_and_keep_their_order(small_artifact, forecaster):
    small_max = Forecaster.load(small_artifact, backend="onnxruntime", threads=1, max_batch=5)
    x = series(23, 70, seed=3)
    whole = forecaster.predict(x)
    split = small_max.predict(x)
    np.testing.assert_allclose(split, whole, atol=1e-6)
    one_by_one = np.concatenate([forecaster.predict(x[i : i + 1]) for i in range(len(x))])
    np.testing.assert_allclose(split, one_by_one, atol=1e-5)


def test_large_batches_run_as_parts_on_every_thread_with_the_same_forecasts(small_artifact, forecaster):
    split = Forecaster.load(small_artifact, backend="onnxruntime", threads=3)
    whole = Forecaster.load(small_artifact, backend="onnxruntime", threads=3, split_batches=False)
    assert split.describe()["split_batches"] and not whole.describe()["split_batches"]
    assert not forecaster.describe()["split_batches"]  # one thread: nothing to split across
    parts = []
    run_single = split.backend._run_single
    split.backend._run_single = lambda chunk, names: parts.append(len(chunk)) or run_single(chunk, names)
    # a batch too small to split runs whole on the single-threaded session
    for n, expected_parts in ((37, [12, 12, 13]), (16, [8, 8]), (15, [15]), (1, [1])):
        parts.clear()
        x = series(n, 70, seed=n)
        np.testing.assert_allclose(split.predict(x), forecaster.predict(x), atol=1e-6)
        np.testing.assert_allclose(split.predict(x), whole.predict(x), atol=1e-6)
        assert sorted(parts) == sorted(expected_parts * 2)  # predicted twice above


def test_predict_is_safe_from_several_threads(forecaster):
    inputs = [series(3 + i, 70, seed=i) for i in range(8)]
    expected = [forecaster.predict(x) for x in inputs]
    results: dict[int, np.ndarray] = {}

    def work(i: int) -> None:
        for _ in range(5):
            results[i] = forecaster.predict(inputs[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, want in enumerate(expected):
        np.testing.assert_array_equal(results[i], want)


def test_predict_rejects_bad_input_with_the_series_index(forecaster):
    with pytest.raises(ValueError, match="series 2: missing value"):
        forecaster.predict([np.ones(64), np.ones(64), [1.0] * 63 + [None]])
    with pytest.raises(ValueError, match="series 0: has 10 points"):
        forecaster.predict([np.ones(10)])
    assert forecaster.predict([np.ones(10)], pad=True).shape == (1, H)


def test_onnxruntime_session_reports_what_it_really_uses(forecaster):
    info = forecaster.describe()
    assert info["backend"] == "onnxruntime"
    assert info["providers"][0] == "CPUExecutionProvider" and info["device"] == "cpu"
    assert info["threads"] == 1 and info["fallback"] is None
    assert (info["context_length"], info["horizon"], info["model"]) == (L, H, "small-ttm")


def test_asking_for_cuda_without_it_falls_back_to_cpu_and_says_so(small_artifact):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA: no fallback to observe")
    with pytest.warns(RuntimeWarning, match="cuda requested, running on CPU"):
        fc = Forecaster.load(small_artifact, backend="onnxruntime", device="cuda")
    assert fc.backend.device == "cpu" and "onnxruntime-gpu" in fc.backend.fallback
    assert fc.predict(series(2)).shape == (2, H)


def test_auto_picks_onnxruntime_without_engines_and_never_imports_torch(small_artifact):
    code = (
        "import sys, numpy as np\n"
        "from prunecast.runtime import Forecaster\n"
        f"fc = Forecaster.load({str(small_artifact)!r})\n"
        "out = fc.predict(np.ones((3, 64), dtype=np.float32))\n"
        "assert out.shape == (3, 16), out.shape\n"
        "assert fc.backend.name == 'onnxruntime', fc.backend.name\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_tensorrt_backend_says_what_is_missing(small_artifact):
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        with pytest.raises(BackendError, match="needs TensorRT"):
            Forecaster.load(small_artifact, backend="tensorrt")
    else:
        with pytest.raises(BackendError, match="no TensorRT engine"):
            Forecaster.load(small_artifact, backend="tensorrt")
    with pytest.raises(BackendError, match="runs on a GPU"):
        Forecaster.load(small_artifact, backend="tensorrt", device="cpu")


def _engine(file: str, precision: str, version: str, cc: str) -> EngineEntry:
    return EngineEntry(file, precision, version, cc, 1, 64, 256, "0" * 64)


def test_engine_choice_refuses_engines_built_for_another_gpu_or_tensorrt(small_artifact):
    manifest = load_manifest(small_artifact)
    manifest.engines = [
        _engine("fp32.plan", "fp32", "10.3.0", "9.0"),
        _engine("fp16.plan", "fp16", "10.3.0", "9.0"),
        _engine("old.plan", "fp16", "10.1.0", "8.0"),
    ]
    assert pick_engine(manifest, "10.3.0", "9.0").file == "fp16.plan"  # FP16 preferred
    assert pick_engine(manifest, "10.1.0", "8.0").file == "old.plan"
    with pytest.raises(
        BackendError, match=r"no engine fits this machine \(TensorRT 10.3.0, compute capability 8.6\)"
    ):
        pick_engine(manifest, "10.3.0", "8.6")
    with pytest.raises(BackendError, match="fp32.plan \\(TensorRT 10.3.0, compute capability 9.0\\)"):
        pick_engine(manifest, "11.0.0", "9.0")
    manifest.engines = []
    with pytest.raises(BackendError, match="build-engine"):
        pick_engine(manifest, "10.3.0", "9.0")


@pytest.mark.skip(reason="TensorRT and a CUDA GPU cannot be installed on this machine; run on a GPU host")
def test_tensorrt_engine_matches_onnxruntime(small_artifact):  # pragma: no cover - needs a GPU
    fc = Forecaster.load(small_artifact, backend="tensorrt")
    x = series(300, 70)
    np.testing.assert_allclose(
        fc.predict(x), Forecaster.load(small_artifact, "onnxruntime").predict(x), atol=1e-3
    )


def test_changed_or_malformed_artifacts_are_refused_by_name(small_artifact, tmp_path):
    art = tmp_path / "art"
    shutil.copytree(small_artifact, art)
    with open(art / "model.onnx", "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(ArtifactError, match="model.onnx was changed after export"):
        Forecaster.load(art)
    with pytest.raises(ArtifactError, match="onnxruntime cannot load it"):
        Forecaster.load(art, verify=False)
    with pytest.raises(ArtifactError, match="no such artifact directory"):
        Forecaster.load(tmp_path / "missing")


def test_bad_options_are_clear_errors(small_artifact):
    with pytest.raises(ValueError, match="unknown backend 'tflite'"):
        Forecaster.load(small_artifact, backend="tflite")
    with pytest.raises(ValueError, match="device must be one of"):
        Forecaster.load(small_artifact, device="gpu")
    with pytest.raises(ValueError, match="threads must be at least 1"):
        Forecaster.load(small_artifact, threads=0)


# ---------------------------------------------------------------- micro-batcher


class Recorder:
    """A model stand-in for the batcher: forecasts are the first 2 context points doubled; rows
    with a negative first point make the whole call fail; ``gate`` can hold calls back."""

    def __init__(self) -> None:
        self.calls: list[np.ndarray] = []
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.gate.wait(10)
        self.calls.append(batch.copy())
        if (batch[:, 0] < 0).any():
            raise RuntimeError("negative input")
        return batch[:, :2] * 2


def rows(*values: float) -> np.ndarray:
    return np.array([[v, v + 1, 0, 0] for v in values], dtype=np.float32)


def run(coro):
    return asyncio.run(coro)


def test_concurrent_requests_are_merged_into_batches_up_to_the_max():
    async def scenario():
        model = Recorder()
        batcher = MicroBatcher(model, BatcherConfig(max_batch_size=4, max_wait_ms=50))
        await batcher.start()
        requests = [rows(i) for i in range(9)] + [rows(100, 101)]
        outs = await asyncio.gather(*(batcher.submit(r) for r in requests))
        await batcher.close()
        return model, requests, outs

    model, requests, outs = run(scenario())
    for request, out in zip(requests, outs, strict=True):
        np.testing.assert_array_equal(out, request[:, :2] * 2)
    sizes = [len(c) for c in model.calls]
    assert sum(sizes) == 11 and max(sizes) <= 4 and len(sizes) <= 4


def test_a_lone_request_waits_at_most_max_wait():
    async def scenario():
        batcher = MicroBatcher(Recorder(), BatcherConfig(max_batch_size=64, max_wait_ms=30))
        await batcher.start()
        start = time.perf_counter()
        await batcher.submit(rows(1))
        waited = time.perf_counter() - start
        await batcher.close()
        return waited

    assert 0.025 <= run(scenario()) < 1.0


def test_a_full_queue_refuses_new_work_at_once():
    async def scenario():
        model = Recorder()
        model.gate.clear()  # the first batch blocks, so later requests pile up
        batcher = MicroBatcher(model, BatcherConfig(max_batch_size=1, max_wait_ms=0, max_queue=2))
        await batcher.start()
        first = asyncio.ensure_future(batcher.submit(rows(0)))
        await asyncio.sleep(0.05)  # the first is running, the queue is empty
        queued = [asyncio.ensure_future(batcher.submit(rows(i))) for i in (1, 2)]
        await asyncio.sleep(0)
        start = time.perf_counter()
        with pytest.raises(Overloaded, match="queue full"):
            await batcher.submit(rows(3))
        refused_in = time.perf_counter() - start
        assert batcher.depth == 2
        model.gate.set()
        outs = await asyncio.gather(first, *queued)
        await batcher.close()
        return refused_in, outs

    refused_in, outs = run(scenario())
    assert refused_in < 0.05
    assert [o[0, 0] for o in outs] == [0, 2, 4]


def test_a_request_past_its_timeout_fails_alone_and_is_never_run():
    async def scenario():
        model = Recorder()
        model.gate.clear()
        batcher = MicroBatcher(model, BatcherConfig(max_batch_size=1, max_wait_ms=0))
        await batcher.start()
        first = asyncio.ensure_future(batcher.submit(rows(0)))
        await asyncio.sleep(0.02)
        with pytest.raises(RequestTimeout, match="not answered within 0.05 s"):
            await batcher.submit(rows(7), timeout_s=0.05)
        later = asyncio.ensure_future(batcher.submit(rows(8)))
        model.gate.set()
        await asyncio.gather(first, later)
        await batcher.close()
        return model

    model = run(scenario())
    assert [c[0, 0] for c in model.calls] == [0, 8]  # 7 timed out in the queue and never ran


def test_one_bad_request_never_fails_the_others_in_its_batch():
    async def scenario():
        model = Recorder()
        batcher = MicroBatcher(model, BatcherConfig(max_batch_size=8, max_wait_ms=50))
        await batcher.start()
        outs = await asyncio.gather(
            batcher.submit(rows(1)), batcher.submit(rows(-1)), batcher.submit(rows(3)), return_exceptions=True
        )
        await batcher.close()
        return outs

    good, bad, other = run(scenario())
    np.testing.assert_array_equal(good, rows(1)[:, :2] * 2)
    np.testing.assert_array_equal(other, rows(3)[:, :2] * 2)
    assert isinstance(bad, RuntimeError) and "negative input" in str(bad)


def test_close_answers_everything_queued_then_refuses_new_work():
    async def scenario():
        batcher = MicroBatcher(Recorder(), BatcherConfig(max_batch_size=64, max_wait_ms=10_000))
        await batcher.start()
        pending = [asyncio.ensure_future(batcher.submit(rows(i))) for i in range(5)]
        await asyncio.sleep(0.01)
        start = time.perf_counter()
        await batcher.close()  # does not wait out the 10 s max wait
        closed_in = time.perf_counter() - start
        assert all(p.done() and p.exception() is None for p in pending)
        with pytest.raises(BatcherClosed):
            await batcher.submit(rows(9))
        return closed_in

    assert run(scenario()) < 2


@pytest.mark.parametrize("slots", [1, 2])
def test_concurrent_batches_bounds_the_model_calls_in_flight(slots):
    lock = threading.Lock()
    state = {"now": 0, "most": 0}

    def slow(batch: np.ndarray) -> np.ndarray:
        with lock:
            state["now"] += 1
            state["most"] = max(state["most"], state["now"])
        time.sleep(0.05)
        with lock:
            state["now"] -= 1
        return batch[:, :2]

    async def scenario():
        batcher = MicroBatcher(slow, BatcherConfig(max_batch_size=1, max_wait_ms=0, concurrent_batches=slots))
        await batcher.start()
        outs = await asyncio.gather(*(batcher.submit(rows(i)) for i in range(6)))
        await batcher.close()
        return outs

    outs = run(scenario())
    assert [o[0, 0] for o in outs] == list(range(6))
    assert state["most"] == slots


def test_the_next_batch_is_on_the_model_before_the_last_ones_answers_are_delivered():
    async def scenario():
        model = Recorder()
        batcher = MicroBatcher(model, BatcherConfig(max_batch_size=2, max_wait_ms=0))
        await batcher.start()
        queued_when_answered = {}

        async def one(i: int) -> np.ndarray:
            out = await batcher.submit(rows(i))
            queued_when_answered[i] = batcher.depth
            return out

        outs = await asyncio.gather(*(one(i) for i in range(4)))
        await batcher.close()
        return model, outs, queued_when_answered

    model, outs, queued = run(scenario())
    assert [c[:, 0].tolist() for c in model.calls] == [[0, 1], [2, 3]]
    assert [o[0, 0] for o in outs] == [0, 2, 4, 6]
    # the first batch's requests hear back after the second batch left the queue for the model,
    # so the model does not wait while the event loop writes the first batch's responses
    assert queued == {0: 0, 1: 0, 2: 0, 3: 0}


def test_batcher_config_is_checked():
    with pytest.raises(ValueError, match="max_batch_size"):
        BatcherConfig(max_batch_size=0)
    with pytest.raises(ValueError, match="max_queue"):
        BatcherConfig(max_queue=0)
    with pytest.raises(ValueError, match="concurrent_batches"):
        BatcherConfig(concurrent_batches=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        BatcherConfig(max_wait_ms=0)
