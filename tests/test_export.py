"""ONNX export: artifact contents, parity at batch 1/7/256 on real windows, FP16, integrity and bad input."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from prunecast.cli import main
from prunecast.compress import load_model
from prunecast.data import prepare_windows
from prunecast.export import ArtifactError, ExportError, load_manifest
from prunecast.export.fp16 import convert_to_fp16, fp16_region
from prunecast.export.onnx_export import ExportConfig, export_onnx
from prunecast.models.base import ForecastModule
from tests.conftest import TTM_ID, small_ttm_config

BATCHES = (1, 7, 256)


class LinearForecast(ForecastModule):
    """A toy family: one Linear layer, exported in a second or two."""

    family = "toy"

    def forward(self, context: torch.Tensor) -> torch.Tensor:
        return self.model(context)

    def config_dict(self) -> dict:
        return {}


class BranchyForecast(LinearForecast):
    """Control flow on the data: torch.export cannot trace it."""

    def forward(self, context: torch.Tensor) -> torch.Tensor:
        if context.mean() > 0:
            return self.model(context)
        return -self.model(context)


@pytest.fixture(scope="module")
def ttm_artifact(pretrained_ttm, tmp_path_factory):
    art = tmp_path_factory.mktemp("export") / "ttm"
    export_onnx(pretrained_ttm, art, ExportConfig(source_model=TTM_ID))
    return art


@pytest.fixture(scope="module")
def val_contexts():
    """Real scaled windows the export's parity check did not use (validation split)."""
    val = prepare_windows("ETTh1", 512, 96).val
    contexts, _ = val.gather(np.random.default_rng(1).choice(len(val), max(BATCHES), replace=False))
    return contexts


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_ttm_artifact_manifest(ttm_artifact, pretrained_ttm):
    manifest = load_manifest(ttm_artifact)
    data = json.loads((ttm_artifact / "manifest.json").read_text())
    assert data["format"] == "prunecast-artifact" and data["format_version"] == 1
    assert (manifest.family, manifest.source_model) == ("ttm", TTM_ID)
    assert (manifest.context_length, manifest.horizon, manifest.precision) == (512, 96, "fp32")
    assert data["inputs"] == [{"name": "context", "shape": ["batch", 512], "dtype": "float32"}]
    assert data["outputs"] == [{"name": "forecast", "shape": ["batch", 96], "dtype": "float32"}]
    assert manifest.parameters == sum(p.numel() for p in pretrained_ttm.parameters())
    assert manifest.opset == 18
    assert set(manifest.versions) == {"torch", "onnx", "onnxruntime", "prunecast"}
    assert manifest.versions["torch"] == torch.__version__
    assert {"model.onnx", "torch/model.safetensors", "torch/config.json"} <= set(manifest.files)
    assert manifest.parity.batch_sizes == list(BATCHES)
    assert manifest.parity.max_abs_err < 1e-4
    assert manifest.fp16_parity is None and manifest.engines == []
    assert not (ttm_artifact / "model.onnx.data").exists()  # one file under 2 GB


def test_ttm_graph_has_symbolic_batch_and_parity_holds(ttm_artifact, pretrained_ttm, val_contexts):
    graph = onnx.load(ttm_artifact / "model.onnx").graph
    ops = {node.op_type for node in graph.node}
    assert "Gemm" in ops and "Pow" not in ops  # the export's graph rewrites ran; parity below covers them
    for value in (graph.input[0], graph.output[0]):
        batch_dim = value.type.tensor_type.shape.dim[0]
        assert batch_dim.dim_param and not batch_dim.HasField("dim_value")
    session = _session(ttm_artifact / "model.onnx")
    for batch in BATCHES:
        x = val_contexts[:batch]
        got = session.run(None, {"context": x})[0]
        with torch.inference_mode():
            want = pretrained_ttm(torch.from_numpy(x)).numpy()
        assert got.shape == (batch, 96)
        assert np.abs(got - want).max() < 1e-4


def test_torch_dir_in_artifact_loads_the_same_model(ttm_artifact, pretrained_ttm, val_contexts):
    loaded = load_model(str(ttm_artifact / "torch"))
    x = torch.from_numpy(val_contexts[:7])
    with torch.inference_mode():
        assert torch.equal(loaded(x), pretrained_ttm(x))


def test_fp16_conversion_keeps_io_and_scaler_in_fp32(ttm_artifact, pretrained_ttm, val_contexts):
    fp32 = onnx.load(ttm_artifact / "model.onnx")
    fp16 = convert_to_fp16(fp32)
    assert [i.type.tensor_type.elem_type for i in fp16.graph.input] == [onnx.TensorProto.FLOAT]
    assert [o.type.tensor_type.elem_type for o in fp16.graph.output] == [onnx.TensorProto.FLOAT]
    sizes = {onnx.TensorProto.FLOAT: 0, onnx.TensorProto.FLOAT16: 0}
    for t in fp16.graph.initializer:
        sizes[t.data_type] = sizes.get(t.data_type, 0) + int(np.prod(t.dims))
    assert sizes[onnx.TensorProto.FLOAT16] > 0.9 * (
        sizes[onnx.TensorProto.FLOAT16] + sizes[onnx.TensorProto.FLOAT]
    )
    # TTM's std scaler (sums of squares, sqrt) comes before the first MatMul: outside the FP16 region
    region = fp16_region(fp32.graph)
    first_matmul = next(i for i, n in enumerate(fp32.graph.node) if n.op_type in ("MatMul", "Gemm"))
    assert {"Sqrt", "ReduceSum"} <= {n.op_type for n in fp32.graph.node[:first_matmul]}
    assert not any(region[:first_matmul])
    session = ort.InferenceSession(fp16.SerializeToString(), providers=["CPUExecutionProvider"])
    # unscaled, offset data: in FP16 the scaler's sum of squares would overflow to inf
    for x in (val_contexts, val_contexts * 50 + 1000):
        got = session.run(None, {"context": x})[0]
        with torch.inference_mode():
            want = pretrained_ttm(torch.from_numpy(x)).numpy()
        assert got.dtype == np.float32 and np.isfinite(got).all()
        assert np.abs(got - want).max() < 1e-2 * np.abs(want).max()


def test_changed_or_missing_file_is_refused_by_name(ttm_artifact, tmp_path):
    art = shutil.copytree(ttm_artifact, tmp_path / "art")
    load_manifest(art)
    weights = art / "torch" / "model.safetensors"
    original = weights.read_bytes()
    weights.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    with pytest.raises(ArtifactError, match=r"torch/model.safetensors was changed"):
        load_manifest(art)
    load_manifest(art, verify=False)  # reading the manifest alone still works
    weights.write_bytes(original)
    (art / "model.onnx").unlink()
    with pytest.raises(ArtifactError, match=r"model.onnx is missing"):
        load_manifest(art)


def test_manifest_that_does_not_match_the_model_is_refused(ttm_artifact, tmp_path):
    art = shutil.copytree(ttm_artifact, tmp_path / "art")
    data = json.loads((art / "manifest.json").read_text())
    data["horizon"] = 48
    (art / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match=r"outputs are .*expected \[\('forecast', \['batch', 48\]\)\]"):
        load_manifest(art)
    data["outputs"][0]["shape"] = ["batch", 48]  # consistent with itself, but not with model.onnx
    (art / "manifest.json").write_text(json.dumps(data))
    load_manifest(art)
    data["format_version"] = 2
    (art / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match="format_version 2 is not supported"):
        load_manifest(art)


def test_triton_refuses_manifest_that_does_not_match_graph(ttm_artifact, tmp_path, capsys):
    art = shutil.copytree(ttm_artifact, tmp_path / "art")
    data = json.loads((art / "manifest.json").read_text())
    data["horizon"], data["outputs"][0]["shape"] = 48, ["batch", 48]
    (art / "manifest.json").write_text(json.dumps(data))
    assert main(["export-triton", str(art), "--repo", str(tmp_path / "repo")]) == 2
    assert "model.onnx: output 'forecast' has width 96, manifest.json says 48" in capsys.readouterr().err


def test_missing_directories_give_clear_errors(tmp_path, capsys):
    with pytest.raises(ArtifactError, match="no such artifact directory"):
        load_manifest(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ArtifactError, match="no manifest.json"):
        load_manifest(tmp_path / "empty")
    assert main(["export", str(tmp_path / "no-model"), "--out", str(tmp_path / "art")]) == 2
    assert "prunecast export: error:" in capsys.readouterr().err
    assert not (tmp_path / "art").exists()


def test_unsupported_opset_is_refused_before_exporting(tmp_path):
    module = LinearForecast(nn.Linear(64, 16), 64, 16)
    for opset in (17, 24):
        with pytest.raises(ExportError, match=f"unsupported opset {opset}"):
            export_onnx(module, tmp_path / "art", ExportConfig(opset=opset))
    assert not (tmp_path / "art").exists()


def test_untraceable_forward_is_a_clear_error_and_leaves_nothing(tmp_path):
    module = BranchyForecast(nn.Linear(64, 16), 64, 16)
    with pytest.raises(ExportError, match="forward cannot be traced by torch.export"):
        export_onnx(module, tmp_path / "art", ExportConfig())
    assert list(tmp_path.iterdir()) == []


def test_parity_failure_fails_the_export(tmp_path):
    module = LinearForecast(nn.Linear(64, 16), 64, 16)
    with pytest.raises(ExportError, match=r"FP32 ONNX parity fails: max abs error .* exceeds"):
        export_onnx(module, tmp_path / "art", ExportConfig(tolerance=1e-12))
    assert list(tmp_path.iterdir()) == []  # staging removed


def test_parity_fails_on_nan_even_after_a_finite_batch(tmp_path):
    from prunecast.export.onnx_export import measure_parity

    torch.manual_seed(0)
    module = LinearForecast(nn.Linear(64, 16), 64, 16)
    export_onnx(module, tmp_path / "art", ExportConfig())
    contexts = np.random.default_rng(0).normal(size=(4, 64)).astype(np.float32)
    with torch.inference_mode():
        want = {b: module(torch.from_numpy(contexts[:b])).numpy() for b in (1, 4)}
    want[4][2, 5] = np.nan  # a NaN in the second batch only: the first batch's error must not mask it
    with pytest.raises(ExportError, match=r"max abs error nan of forecast over batches \[1, 4\]"):
        measure_parity(tmp_path / "art" / "model.onnx", contexts, {"forecast": want}, (1, 4), 1e-4)


def test_export_refuses_non_empty_out_dir(tmp_path):
    (tmp_path / "art").mkdir()
    (tmp_path / "art" / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match="not an empty directory"):
        export_onnx(LinearForecast(nn.Linear(64, 16), 64, 16), tmp_path / "art")
    assert (tmp_path / "art" / "keep.txt").read_text() == "mine"


def test_cli_exports_saved_model_dir_in_fp16(tmp_path, capsys):
    from prunecast.compress import save_model
    from prunecast.models.ttm import TTMAdapter

    torch.manual_seed(0)
    module = TTMAdapter().from_config(small_ttm_config(), context_length=64, horizon=16)
    save_model(module, tmp_path / "model")
    art = tmp_path / "art"
    assert main(["export", str(tmp_path / "model"), "--out", str(art), "--fp16", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["precision"] == "fp16" and result["source_model"] == str(tmp_path / "model")
    assert result["parity"]["max_abs_err"] < 1e-4
    assert 0 < result["fp16_parity"]["rel_err"] < 1e-2
    assert load_manifest(art).precision == "fp16"
    graph = onnx.load(art / "model.onnx").graph
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in graph.initializer)
    session = _session(art / "model.onnx")
    contexts, _ = prepare_windows("ETTh1", 64, 16).test.gather(np.arange(256))
    for batch in BATCHES:
        got = session.run(None, {"context": contexts[:batch]})[0]
        with torch.inference_mode():
            want = module(torch.from_numpy(contexts[:batch])).numpy()
        assert got.dtype == np.float32 and np.abs(got - want).max() < 1e-2 * np.abs(want).max()
    # the same out dir again is refused, and what is there is kept
    assert main(["export", str(tmp_path / "model"), "--out", str(art)]) == 2
    assert "already exists" in capsys.readouterr().err
    load_manifest(art)


def test_pruned_model_exports_with_parity(tmp_path):
    prune_mod = pytest.importorskip(
        "prunecast.compress.prune", reason="prunecast.compress.prune not landed yet"
    )
    from prunecast.models.ttm import TTMAdapter

    torch.manual_seed(0)
    module = TTMAdapter().from_config(small_ttm_config(), context_length=64, horizon=16)
    data = prepare_windows("ETTh1", 64, 16)
    config = prune_mod.PruneConfig(
        budget=0.5, importance="magnitude", macro_batch=64, micro_batch=64, val_windows=32, max_steps=2
    )
    pruned = prune_mod.prune(module, data.train, data.val, config).module
    assert sum(p.numel() for p in pruned.parameters()) < sum(
        p.numel() for p in TTMAdapter().from_config(small_ttm_config(), 64, 16).parameters()
    )
    manifest = export_onnx(pruned, tmp_path / "art")
    assert manifest.parity.max_abs_err < 1e-4
    assert manifest.parameters == sum(p.numel() for p in pruned.parameters())
    reloaded = load_model(str(tmp_path / "art" / "torch"))
    x = torch.from_numpy(data.test.gather(np.arange(7))[0])
    with torch.inference_mode():
        assert torch.allclose(reloaded(x), pruned(x))
