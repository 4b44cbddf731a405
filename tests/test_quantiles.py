"""Quantile outputs through export and runtime: Chronos-Bolt and TimesFM artifacts (small random
weights) carry ``quantiles [batch, Q, H]`` beside ``forecast``; TTM artifacts stay point-only."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnxruntime as ort
import pytest
import torch

pytest.importorskip("chronos")
pytest.importorskip("timesfm")

from prunecast.export import ArtifactError, load_manifest  # noqa: E402
from prunecast.export.onnx_export import ExportConfig, export_onnx  # noqa: E402
from prunecast.models.chronos_bolt import ChronosBoltAdapter  # noqa: E402
from prunecast.runtime import Forecaster  # noqa: E402
from tests.test_models_chronos_bolt import QUANTILES, small_bolt_config  # noqa: E402
from tests.test_models_timesfm import make as make_timesfm  # noqa: E402

L = 64
PARITY_BATCHES = (1, 7, 33)


def _bolt(horizon: int = 24):
    torch.manual_seed(0)  # horizon 24 > the checkpoint's 16: two blocks, the median fed back
    return ChronosBoltAdapter().from_config(small_bolt_config(), context_length=L, horizon=horizon)


def _timesfm():
    return make_timesfm(context=L, horizon=16, std=0.1)


FAMILIES = {"chronos_bolt": _bolt, "timesfm": _timesfm}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def exported(request, tmp_path_factory):
    """``(module, artifact dir)`` for each quantile family."""
    module = FAMILIES[request.param]()
    art = tmp_path_factory.mktemp("quantiles") / request.param
    export_onnx(module, art, ExportConfig(batch_sizes=PARITY_BATCHES, source_model=request.param))
    return module, art


def _series(n: int, length: int = 90, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(length)
    level = rng.uniform(-1, 3, (n, 1))
    return (level + np.sin(t / 5)[None, :] + rng.normal(0, 0.2, (n, length))).astype(np.float32)


def test_manifest_records_levels_second_output_and_its_parity(exported):
    module, art = exported
    manifest = load_manifest(art)
    h = module.horizon
    assert manifest.quantile_levels == tuple(QUANTILES)
    assert [(o.name, o.shape) for o in manifest.outputs] == [
        ("forecast", ["batch", h]),
        ("quantiles", ["batch", 9, h]),
    ]
    for parity in (manifest.parity, manifest.quantile_parity):
        assert parity.batch_sizes == list(PARITY_BATCHES)
        assert 0 <= parity.rel_err <= parity.tolerance == 1e-4
    assert manifest.fp16_quantile_parity is None
    saved = json.loads((art / "manifest.json").read_text())
    assert saved["quantile_levels"] == QUANTILES and "max_abs_err" in saved["quantile_parity"]


def test_onnx_quantiles_equal_the_module_and_hold_the_forecast(exported):
    module, art = exported
    x = _series(5, L, seed=1)
    if module.family == "chronos_bolt":
        x[0, :9] = np.nan  # Chronos-Bolt masks missing values itself, in ONNX too
    session = ort.InferenceSession(str(art / "model.onnx"), providers=["CPUExecutionProvider"])
    forecast, quantiles = session.run(["forecast", "quantiles"], {"context": x})
    with torch.inference_mode():
        want = module.quantiles(torch.from_numpy(x)).numpy()
    assert quantiles.shape == (5, 9, module.horizon) and np.isfinite(quantiles).all()
    np.testing.assert_allclose(quantiles, want, atol=1e-4 * max(1.0, float(np.abs(want).max())))
    np.testing.assert_array_equal(forecast, quantiles[:, QUANTILES.index(0.5)])  # one pass, one median


def test_predict_quantiles_matches_the_torch_backend_and_predict(exported):
    module, art = exported
    fc = Forecaster.load(
        art, backend="onnxruntime", threads=2, max_batch=24
    )  # 40 series: 2 calls, split parts
    reference = Forecaster.load(art, backend="torch")
    x = _series(40, seed=2)
    got = fc.predict_quantiles(x)
    assert fc.quantile_levels == tuple(QUANTILES) == reference.quantile_levels
    assert got.shape == (40, 9, module.horizon) and got.dtype == np.float32
    np.testing.assert_allclose(got, reference.predict_quantiles(x), atol=1e-4, rtol=1e-4)
    median = fc.quantile_levels.index(0.5)
    np.testing.assert_array_equal(got[:, median], fc.predict(x))
    forecast, quantiles = fc.predict_with_quantiles(x)
    np.testing.assert_array_equal(forecast, fc.predict(x))
    np.testing.assert_array_equal(quantiles, got)
    torch_forecast, torch_quantiles = reference.predict_with_quantiles(x)
    np.testing.assert_array_equal(torch_forecast, reference.predict(x))
    np.testing.assert_array_equal(torch_quantiles[:, median], torch_forecast)
    one = fc.predict_quantiles([x[3, -70:]])  # lists of series, as predict takes them
    np.testing.assert_allclose(one[0], got[3], atol=1e-5)
    with pytest.raises(ValueError, match="series 1: missing value"):
        fc.predict_quantiles([x[0], np.full(L, np.nan)])
    with pytest.raises(ValueError, match="fewer than the model's context length"):
        fc.predict_quantiles(x[:, :10])
    assert fc.predict_quantiles(x[:, :10], pad=True).shape == (40, 9, module.horizon)


def test_ttm_artifact_has_one_output_and_refuses_quantiles(small_artifact):
    manifest = load_manifest(small_artifact)
    assert manifest.quantile_levels == () and manifest.quantile_parity is None
    assert [o.name for o in manifest.outputs] == ["forecast"]
    fc = Forecaster.load(small_artifact, backend="onnxruntime", threads=1)
    assert fc.quantile_levels == ()
    for call in (fc.predict_quantiles, fc.predict_with_quantiles):
        with pytest.raises(ValueError, match=r"has no quantile output \(TTM point forecasts\)"):
            call(_series(2))
    with pytest.raises(ValueError, match="no output 'quantiles'"):
        fc.predict_batch_outputs(_series(2, L), ("quantiles",))


def test_manifests_without_the_field_load_as_point_models(small_artifact, tmp_path):
    art = shutil.copytree(small_artifact, tmp_path / "old")
    data = json.loads((art / "manifest.json").read_text())
    del data["quantile_levels"]  # as written before quantile outputs existed
    (art / "manifest.json").write_text(json.dumps(data))
    assert load_manifest(art).quantile_levels == ()
    assert Forecaster.load(art, threads=1).predict(_series(2)).shape == (2, 16)


def test_manifest_levels_must_match_the_quantile_output(exported, tmp_path):
    _, source = exported
    art = shutil.copytree(source, tmp_path / "art")
    data = json.loads((art / "manifest.json").read_text())
    data["quantile_levels"] = data["quantile_levels"][1:]
    (art / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match=r"outputs are .*'quantiles', \['batch', 8,"):
        load_manifest(art)
    data["quantile_levels"] = []
    (art / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match="quantile_levels and quantile_parity must be given together"):
        load_manifest(art)


def test_fp16_export_and_triton_config_keep_both_outputs(tmp_path):
    from google.protobuf import text_format

    from prunecast.export.triton import export_triton
    from tests.test_triton import model_config_pb2

    # horizon 24: past the checkpoint's 16-step block, the roll-out's IsInf check stays FP32
    module = _bolt(horizon=24)
    art = tmp_path / "fp16"
    manifest = export_onnx(module, art, ExportConfig(batch_sizes=(1, 7), fp16=True))
    assert manifest.fp16_parity is not None and manifest.fp16_quantile_parity is not None
    assert manifest.fp16_quantile_parity.rel_err <= manifest.fp16_quantile_parity.tolerance == 1e-2
    fc = Forecaster.load(art, threads=1)
    x = _series(3, seed=4)
    with torch.inference_mode():
        want = module.quantiles(torch.from_numpy(x[:, -L:])).numpy()
    np.testing.assert_allclose(fc.predict_quantiles(x), want, atol=1e-2 * max(1.0, float(np.abs(want).max())))

    model_dir = export_triton(art, tmp_path / "repo")
    config = text_format.Parse((model_dir / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert [(o.name, list(o.dims)) for o in config.output] == [("forecast", [24]), ("quantiles", [9, 24])]
    assert all(o.data_type == model_config_pb2.TYPE_FP32 for o in config.output)
