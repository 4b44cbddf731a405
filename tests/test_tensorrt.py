"""TensorRT engines: version/GPU checks, precision rules for TensorRT 10 and 11, and a real build on a GPU."""

from __future__ import annotations

import dataclasses
import importlib.util
import shutil

import pytest
import torch

from prunecast.cli import main
from prunecast.export import ArtifactError, ExportError, load_manifest
from prunecast.export.manifest import EngineEntry
from prunecast.export.onnx_export import ExportConfig, export_onnx
from prunecast.export.tensorrt import EngineConfig, check_engine, engine_precision
from prunecast.models.ttm import TTMAdapter
from tests.conftest import small_ttm_config

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None
HAS_GPU = shutil.which("nvidia-smi") is not None
NO_TENSORRT = "TensorRT is not installed (needs an NVIDIA GPU and CUDA; pip install 'prunecast[trt]')"

ENTRY = EngineEntry("model.fp32.plan", "fp32", "10.8.0.43", "9.0", 1, 64, 1024, "0" * 64)


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    torch.manual_seed(0)
    module = TTMAdapter().from_config(small_ttm_config(), context_length=64, horizon=16)
    root = tmp_path_factory.mktemp("trt")
    export_onnx(module, root / "fp32")
    export_onnx(module, root / "fp16", ExportConfig(fp16=True))
    return root


def test_engine_for_another_tensorrt_or_gpu_is_refused():
    check_engine(ENTRY, "10.8.0.43", "9.0")
    with pytest.raises(ArtifactError, match=r"built with TensorRT 10.8.0.43, this machine has 10.9.0"):
        check_engine(ENTRY, "10.9.0", "9.0")
    with pytest.raises(ArtifactError, match=r"compute capability 9.0, this GPU is 8.0"):
        check_engine(ENTRY, "10.8.0.43", "8.0")


def test_precision_rules_for_tensorrt_10_and_11(artifacts):
    fp32, fp16 = load_manifest(artifacts / "fp32"), load_manifest(artifacts / "fp16")
    assert engine_precision(fp32, EngineConfig(), 10) == "fp32"
    assert engine_precision(fp32, EngineConfig(fp16=True), 10) == "fp16"  # builder flag
    with pytest.raises(ExportError, match="TensorRT 11 has no FP16 builder flag"):
        engine_precision(fp32, EngineConfig(fp16=True), 11)
    for major in (10, 11):
        assert engine_precision(fp16, EngineConfig(), major) == "fp16"  # from the graph
    int8 = dataclasses.replace(fp32, precision="int8")
    with pytest.raises(ExportError, match="build TensorRT engines from an FP32 or --fp16 export"):
        engine_precision(int8, EngineConfig(), 10)


def test_engine_config_is_validated():
    with pytest.raises(ExportError, match="min batch <= opt batch <= max batch"):
        EngineConfig(min_batch=8, opt_batch=4, max_batch=16).validate()


@pytest.mark.skipif(HAS_TENSORRT, reason="TensorRT is installed here")
def test_build_engine_says_plainly_when_tensorrt_is_missing(artifacts, capsys):
    assert main(["build-engine", str(artifacts / "fp32")]) == 2
    assert "TensorRT is not installed" in capsys.readouterr().err
    assert load_manifest(artifacts / "fp32").engines == []


@pytest.mark.skipif(not (HAS_TENSORRT and HAS_GPU), reason=NO_TENSORRT)
def test_build_engine_records_it_in_the_manifest(artifacts, tmp_path):
    from prunecast.export.tensorrt import build_engine, load_engine

    art = shutil.copytree(artifacts / "fp32", tmp_path / "art")
    entry = build_engine(art, EngineConfig(min_batch=1, opt_batch=8, max_batch=256))
    manifest = load_manifest(art)
    assert manifest.engines == [entry] and manifest.files[entry.file] == entry.sha256
    assert load_engine(art, "fp32") is not None
