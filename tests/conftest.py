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


@pytest.fixture(scope="session")
def small_artifact(tmp_path_factory) -> Path:
    """An exported artifact of the small random TTM (context 64, horizon 16), shared by the runtime tests."""
    import torch

    from prunecast.export import ExportConfig, export_onnx
    from prunecast.models.ttm import TTMAdapter

    torch.manual_seed(0)
    module = TTMAdapter().from_config(small_ttm_config(), context_length=64, horizon=16)
    art_dir = tmp_path_factory.mktemp("artifacts") / "small_ttm"
    export_onnx(module, art_dir, ExportConfig(source_model="small-ttm"))
    return art_dir
