"""INT8 export: QDQ graph in the runtime, calibration on training windows only, and the accuracy guard."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from prunecast.cli import main
from prunecast.compress import save_model
from prunecast.data import prepare_windows, split_borders
from prunecast.evaluate.metrics import evaluate
from prunecast.export import ArtifactError, Manifest, load_manifest
from prunecast.export import int8 as int8_mod
from prunecast.export.onnx_export import ExportConfig, export_onnx
from prunecast.models.base import ForecastModule
from prunecast.models.ttm import TTMAdapter
from prunecast.runtime import Forecaster
from tests.conftest import small_ttm_config
from tests.test_export import LinearForecast  # fitted by least squares: an optimum INT8 can only leave

L, H = 64, 16


def _small_ttm() -> ForecastModule:
    torch.manual_seed(0)
    return TTMAdapter().from_config(small_ttm_config(), context_length=L, horizon=H)


def _ops(path) -> set[str]:
    return {node.op_type for node in onnx.load(str(path)).graph.node}


@pytest.fixture(scope="module")
def data():
    return prepare_windows("ETTh1", L, H)


@pytest.fixture(scope="module")
def int8_artifact(tmp_path_factory):
    """The small random TTM exported with --int8 and a guard wide enough to accept it."""
    module = _small_ttm()
    art = tmp_path_factory.mktemp("int8") / "ttm"
    export_onnx(module, art, ExportConfig(source_model="small-ttm", int8=True, int8_tolerance=1.0))
    return module, art


@pytest.fixture(scope="module")
def least_squares(data):
    """A linear forecaster fitted to the validation windows themselves: the guard's own optimum."""
    contexts, targets = data.val.gather(np.arange(len(data.val)))
    design = np.hstack([contexts, np.ones((len(contexts), 1), np.float32)]).astype(np.float64)
    beta = np.linalg.lstsq(design, targets.astype(np.float64), rcond=None)[0]
    linear = nn.Linear(L, H)
    with torch.no_grad():
        linear.weight.copy_(torch.from_numpy(beta[:-1].T))
        linear.bias.copy_(torch.from_numpy(beta[-1]))
    return LinearForecast(linear, L, H).eval()


def test_int8_artifact_loads_in_forecaster_close_to_fp32(int8_artifact, data):
    module, art = int8_artifact
    assert {"QuantizeLinear", "DequantizeLinear"} <= _ops(art / "model.onnx")
    int8_weights = [
        t
        for t in onnx.load(str(art / "model.onnx")).graph.initializer
        if t.data_type == onnx.TensorProto.INT8
    ]
    assert int8_weights  # the weights are stored as INT8, not only wrapped in Q/DQ
    forecaster = Forecaster.load(art, backend="onnxruntime", device="cpu")
    assert forecaster.describe()["precision"] == "int8"
    contexts, _ = data.test.gather(np.linspace(0, len(data.test) - 1, 300).round().astype(np.int64))
    got = forecaster.predict(contexts)
    with torch.inference_mode():
        want = module(torch.from_numpy(contexts)).numpy()
    error = np.abs(got - want).max()
    assert got.shape == (300, H) and got.dtype == np.float32
    assert 1e-5 < error < 0.1 * max(1.0, np.abs(want).max())  # quantised, yet close
    # the torch backend serves the artifact's saved FP32 module, and says so
    eager = Forecaster.load(art, backend="torch", device="cpu")
    assert eager.describe()["precision"] == "fp32"
    np.testing.assert_allclose(eager.predict(contexts), want, atol=1e-6)


def test_manifest_records_precision_parity_and_calibration(int8_artifact, data):
    module, art = int8_artifact
    manifest = load_manifest(art)
    record = manifest.int8
    assert manifest.precision == "int8" and record.accepted
    assert record.decision.startswith("INT8 accepted: validation MSE")
    assert (record.calibration_split, record.calibration_windows) == ("train", 256)
    borders = split_borders("ETTh1", data.benchmark.num_rows)
    assert record.split_rows == {s: list(getattr(borders, s)) for s in ("train", "val", "test")}
    first, end = record.calibration_rows
    assert borders.train[0] <= first < end <= borders.train[1]
    assert (record.quant_format, record.per_channel, record.op_types) == ("QDQ", True, ["MatMul", "Gemm"])
    assert manifest.parity.max_abs_err < 1e-4  # the FP32 check still ran before quantising
    # the guard's FP32 figure is the PyTorch model's MSE on the whole validation split
    assert record.val_windows == len(data.val)
    assert record.fp32_val_mse == pytest.approx(evaluate(module, data.val).mse, rel=1e-4)
    contexts, targets = data.val.gather(np.arange(len(data.val)))
    with torch.inference_mode():
        forecasts = module(torch.from_numpy(contexts)).numpy()
    mse = float(np.mean(np.square(Forecaster.load(art).predict(contexts).astype(np.float64) - targets)))
    assert record.int8_val_mse == pytest.approx(mse, rel=1e-4)
    # parity against FP32 over the same windows, relative to the FP32 output scale
    assert 0 < record.max_abs_err < 0.1 * max(1.0, np.abs(forecasts).max())
    assert record.rel_err == pytest.approx(record.max_abs_err / max(1.0, np.abs(forecasts).max()), rel=1e-3)
    saved = json.loads((art / "manifest.json").read_text())
    assert saved["precision"] == "int8" and saved["int8"]["calibration_split"] == "train"


def test_calibration_reads_only_training_windows(tmp_path, monkeypatch, data):
    yielded: list[np.ndarray] = []
    get_next = int8_mod.WindowReader.get_next

    def spy(self):
        feed = get_next(self)
        if feed is not None:
            yielded.append(feed["context"])
        return feed

    monkeypatch.setattr(int8_mod.WindowReader, "get_next", spy)
    export_onnx(
        _small_ttm(), tmp_path / "art", ExportConfig(int8=True, int8_tolerance=1.0, calibration_windows=40)
    )
    contexts = np.concatenate(yielded)
    assert contexts.shape == (40, L)

    def keys(windows):
        return {row.tobytes() for row in windows.gather(np.arange(len(windows)))[0]}

    train, held_out = keys(data.train), keys(data.val) | keys(data.test)
    assert all(row.tobytes() in train for row in contexts)
    assert not any(row.tobytes() in held_out for row in contexts)
    # spread over the whole training split, not its first rows
    first, last = data.train.gather(np.array([0, len(data.train) - 1]))[0]
    np.testing.assert_array_equal(contexts[0], first)
    np.testing.assert_array_equal(contexts[-1], last)


def test_guard_keeps_fp32_when_int8_raises_validation_mse(least_squares, tmp_path, data):
    art = tmp_path / "strict"
    manifest = export_onnx(least_squares, art, ExportConfig(int8=True, int8_tolerance=0.0))
    record = manifest.int8
    assert not record.accepted and manifest.precision == "fp32"
    assert record.int8_val_mse > record.fp32_val_mse
    assert record.decision.startswith("INT8 rejected, keeping FP32: validation MSE")
    assert "QuantizeLinear" not in _ops(art / "model.onnx")  # the shipped graph is the FP32 one
    reloaded = load_manifest(art)
    assert reloaded.precision == "fp32" and reloaded.int8 == record
    contexts, _ = data.test.gather(np.arange(64))
    with torch.inference_mode():
        want = least_squares(torch.from_numpy(contexts)).numpy()
    assert np.abs(Forecaster.load(art).predict(contexts) - want).max() < 1e-4
    # the same model with a tolerance above the rise it causes is shipped in INT8
    rise = record.int8_val_mse / record.fp32_val_mse - 1
    loose = export_onnx(least_squares, tmp_path / "loose", ExportConfig(int8=True, int8_tolerance=2 * rise))
    assert loose.precision == "int8" and loose.int8.accepted
    assert "QuantizeLinear" in _ops(tmp_path / "loose" / "model.onnx")


def test_cli_export_int8_says_what_it_shipped(tmp_path, capsys):
    save_model(_small_ttm(), tmp_path / "model")
    argv = ["export", str(tmp_path / "model"), "--int8", "--calibration-windows", "16"]
    assert main([*argv, "--out", str(tmp_path / "a"), "--int8-tolerance", "1"]) == 0
    out = capsys.readouterr().out
    assert "INT8 accepted: validation MSE" in out and "int8" in out.splitlines()[0]
    assert main([*argv, "--out", str(tmp_path / "b"), "--fp16"]) == 2
    assert "--fp16 and --int8 exclude each other" in capsys.readouterr().err
    assert main([*argv, "--out", str(tmp_path / "c"), "--calibration-windows", "0"]) == 2
    assert "--calibration-windows must be at least 1" in capsys.readouterr().err


def test_manifest_refuses_precision_that_contradicts_the_int8_record(int8_artifact):
    data = json.loads((int8_artifact[1] / "manifest.json").read_text())
    data["precision"] = "fp32"
    with pytest.raises(ArtifactError, match="precision 'fp32' contradicts the int8 record"):
        Manifest.from_dict(data)  # accepted INT8 must be what model.onnx holds
    data["precision"], data["int8"]["accepted"] = "int8", False
    with pytest.raises(ArtifactError, match="precision 'int8' contradicts the int8 record"):
        Manifest.from_dict(data)
    del data["int8"]
    with pytest.raises(ArtifactError, match="precision 'int8' contradicts the int8 record"):
        Manifest.from_dict(data)


def test_quantize_artifact_matches_exporting_with_int8(int8_artifact, tmp_path, data):
    from prunecast.export import quantize_artifact

    module, exported = int8_artifact
    fp32 = tmp_path / "fp32"
    export_onnx(module, fp32, ExportConfig(source_model="small-ttm"))
    out = tmp_path / "from_artifact"
    manifest = quantize_artifact(fp32, out, ExportConfig(int8_tolerance=1.0))
    want = load_manifest(exported)
    assert manifest.precision == want.precision == "int8"
    assert manifest.int8.fp32_val_mse == pytest.approx(want.int8.fp32_val_mse, rel=1e-6)
    assert manifest.int8.int8_val_mse == pytest.approx(want.int8.int8_val_mse, rel=1e-6)
    assert load_manifest(out).files == manifest.files  # hashed and verified as written
    assert (out / "torch").is_dir() and load_manifest(fp32).precision == "fp32"  # the source is untouched
    x = data.test.gather(np.arange(32))[0]
    got = Forecaster.load(out, backend="onnxruntime", threads=1).predict(x)
    np.testing.assert_allclose(
        got, Forecaster.load(exported, backend="onnxruntime", threads=1).predict(x), atol=1e-5
    )

    with pytest.raises(ValueError, match="its precision is int8; INT8 is quantised from an FP32 artifact"):
        quantize_artifact(out, tmp_path / "again")
    with pytest.raises(ValueError, match="already exists"):
        quantize_artifact(fp32, out)
