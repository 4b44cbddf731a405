"""Shared fixtures: the offline HF cache in ../shared, small CSVs, and a small random TTM."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
TTM_ID = "ibm-granite/granite-timeseries-ttm-r2"

if (SHARED / "hf" / "hub").is_dir():
    os.environ.setdefault("HF_HUB_CACHE", str(SHARED / "hf" / "hub"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def has_pretrained_ttm() -> bool:
    return (
        Path(os.environ.get("HF_HUB_CACHE", "")) / "models--ibm-granite--granite-timeseries-ttm-r2"
    ).is_dir()


requires_ttm = pytest.mark.skipif(
    not has_pretrained_ttm(), reason="pretrained TTM r2 not in HF_HUB_CACHE (../shared)"
)


@pytest.fixture(scope="session")
def pretrained_ttm():
    if not has_pretrained_ttm():
        pytest.skip("pretrained TTM r2 not in HF_HUB_CACHE (../shared)")
    from prunecast.models import load_pretrained

    return load_pretrained(TTM_ID, horizon=96)


def small_ttm_config(context_length: int = 64, prediction_length: int = 16) -> dict:
    """A tiny TTM with the r2 features that matter for pruning: adaptive patching, gated attention, decoder."""
    return {
        "model_type": "tinytimemixer",
        "context_length": context_length,
        "prediction_length": prediction_length,
        "patch_length": 8,
        "patch_stride": 8,
        "num_input_channels": 1,
        "d_model": 24,
        "decoder_d_model": 16,
        "num_layers": 2,
        "decoder_num_layers": 1,
        "adaptive_patching_levels": 2,
        "expansion_factor": 2,
        "gated_attn": True,
        "mode": "common_channel",
        "decoder_mode": "common_channel",
        "scaling": "std",
        "dropout": 0.0,
        "head_dropout": 0.0,
    }


@pytest.fixture
def small_ttm():
    import torch

    from prunecast.models.ttm import TTMAdapter

    torch.manual_seed(0)
    return TTMAdapter().from_config(small_ttm_config(), context_length=64, horizon=16)


def write_csv(path: Path, rows: int, columns: int = 3, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    t = np.arange(rows)
    values = np.stack(
        [np.sin(t / (5 + c)) + 0.1 * rng.standard_normal(rows) + c for c in range(columns)], axis=1
    )
    frame = pd.DataFrame(values, columns=[f"s{c}" for c in range(columns)])
    frame.insert(0, "date", pd.date_range("2020-01-01", periods=rows, freq="h").astype(str))
    frame.to_csv(path, index=False)
    return path


@pytest.fixture
def small_csv(tmp_path) -> Path:
    return write_csv(tmp_path / "small.csv", rows=400)


def build_artifact(module, art_dir: Path) -> Path:
    """A runtime artifact (model.onnx, torch/, manifest.json) of ``module``, exported with a dynamic batch."""
    import torch

    from prunecast.compress import save_model
    from prunecast.export.manifest import BATCH_AXIS, Manifest, Parity, TensorSpec, hash_tree

    art_dir.mkdir(parents=True)
    batch = torch.export.Dim("batch", min=1, max=4096)
    torch.onnx.export(
        module.eval(),
        (module.example_input(2),),
        str(art_dir / "model.onnx"),
        input_names=["context"],
        output_names=["forecast"],
        dynamo=True,
        dynamic_shapes=({0: batch},),
        verbose=False,
    )
    save_model(module, art_dir / "torch")
    Manifest(
        family=module.family,
        source_model="small-ttm",
        context_length=module.context_length,
        horizon=module.horizon,
        inputs=[TensorSpec("context", [BATCH_AXIS, module.context_length])],
        outputs=[TensorSpec("forecast", [BATCH_AXIS, module.horizon])],
        precision="fp32",
        parameters=sum(p.numel() for p in module.parameters()),
        opset=18,
        versions={"torch": torch.__version__},
        files=hash_tree(art_dir, ["model.onnx", "torch"]),
        parity=Parity(max_abs_err=0.0, rel_err=0.0, batch_sizes=[], tolerance=1e-4),
    ).save(art_dir)
    return art_dir


@pytest.fixture(scope="session")
def small_artifact(tmp_path_factory) -> Path:
    """An exported artifact of the small random TTM (context 64, horizon 16), shared by the runtime tests."""
    import torch

    from prunecast.models.ttm import TTMAdapter

    torch.manual_seed(0)
    module = TTMAdapter().from_config(small_ttm_config(), context_length=64, horizon=16)
    return build_artifact(module, tmp_path_factory.mktemp("artifacts") / "small_ttm")
