"""Triton model repositories: configs parse with Triton's own protobuf schema and match the ONNX graph."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import onnx
import pytest
import torch
from google.protobuf import text_format

from prunecast.cli import main
from prunecast.export import ExportError, load_manifest
from prunecast.export.manifest import EngineEntry, sha256_file
from prunecast.export.onnx_export import export_onnx
from prunecast.export.triton import TritonConfig, export_triton
from prunecast.models.ttm import TTMAdapter
from tests.conftest import small_ttm_config


def _triton_schema():
    """Triton's ModelConfig protobuf module, read from its file: importing ``tritonclient.grpc``
    itself needs grpcio, which the schema does not."""
    tritonclient = pytest.importorskip("tritonclient", reason="tritonclient not installed (dev extra)")
    path = Path(tritonclient.__file__).parent / "grpc" / "model_config_pb2.py"
    spec = importlib.util.spec_from_file_location("triton_model_config_pb2", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


model_config_pb2 = _triton_schema()


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    torch.manual_seed(0)
    module = TTMAdapter().from_config(small_ttm_config(), context_length=64, horizon=16)
    art = tmp_path_factory.mktemp("triton") / "small_ttm"
    export_onnx(module, art)
    return art


def _parse(path):
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def test_onnxruntime_repository_matches_graph(artifact, tmp_path, capsys):
    repo = tmp_path / "repo"
    assert main(["export-triton", str(artifact), "--repo", str(repo), "--max-batch", "128", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    model_dir = repo / "small_ttm"
    assert result["model_dir"] == str(model_dir)
    assert sorted(result["files"]) == ["1/model.onnx", "config.pbtxt"]
    assert sha256_file(model_dir / "1" / "model.onnx") == load_manifest(artifact).files["model.onnx"]

    config = _parse(model_dir / "config.pbtxt")
    assert config.name == "small_ttm" and config.backend == "onnxruntime"
    assert config.max_batch_size == 128
    assert config.dynamic_batching.max_queue_delay_microseconds == 100
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    graph = onnx.load(model_dir / "1" / "model.onnx").graph
    for declared, actual in ((config.input, graph.input), (config.output, graph.output)):
        assert [t.name for t in declared] == [t.name for t in actual]
        for d, a in zip(declared, actual, strict=True):
            dims = a.type.tensor_type.shape.dim
            assert dims[0].dim_param  # batch axis: Triton's, hence not in dims
            assert list(d.dims) == [dim.dim_value for dim in dims[1:]]
            assert d.data_type == model_config_pb2.TYPE_FP32


def test_tensorrt_repository_uses_the_engine(artifact, tmp_path):
    art = tmp_path / "art"
    art.mkdir()
    for path in artifact.rglob("*"):
        if path.is_file():
            (art / path.relative_to(artifact)).parent.mkdir(parents=True, exist_ok=True)
            (art / path.relative_to(artifact)).write_bytes(path.read_bytes())
    with pytest.raises(ExportError, match="no TensorRT engine in the artifact"):
        export_triton(art, tmp_path / "repo", TritonConfig(backend="tensorrt"))
    # record an engine as build-engine would (its bytes are only copied here, never run)
    (art / "model.fp16.plan").write_bytes(b"serialized engine")
    manifest = load_manifest(art)
    entry = EngineEntry(
        "model.fp16.plan", "fp16", "10.8.0", "9.0", 1, 64, 512, sha256_file(art / "model.fp16.plan")
    )
    manifest.engines.append(entry)
    manifest.files[entry.file] = entry.sha256
    manifest.save(art)

    with pytest.raises(ExportError, match="serves batches 1-512"):
        export_triton(art, tmp_path / "repo", TritonConfig(backend="tensorrt", max_batch_size=1024))
    model_dir = export_triton(art, tmp_path / "repo", TritonConfig(backend="tensorrt", model_name="ttm_trt"))
    assert (model_dir / "1" / "model.plan").read_bytes() == b"serialized engine"
    config = _parse(model_dir / "config.pbtxt")
    assert (config.name, config.backend, config.max_batch_size) == ("ttm_trt", "tensorrt", 512)
    assert list(config.input[0].dims) == [64] and list(config.output[0].dims) == [16]
    with pytest.raises(ExportError, match="already exists"):
        export_triton(art, tmp_path / "repo", TritonConfig(backend="tensorrt", model_name="ttm_trt"))


def test_bad_options_are_refused(artifact, tmp_path):
    for config, message in (
        (TritonConfig(backend="openvino"), "unknown Triton backend"),
        (TritonConfig(max_batch_size=0), "max batch size must be positive"),
        (TritonConfig(model_name="a/b"), "may hold only"),
        (TritonConfig(backend="tensorrt", kind="KIND_CPU"), "GPUs only"),
    ):
        with pytest.raises(ExportError, match=message):
            export_triton(artifact, tmp_path / "repo", config)
    assert not (tmp_path / "repo").exists()
