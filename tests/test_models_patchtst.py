"""PatchTST and PatchTSMixer: load from a save_pretrained directory, exact removal, export parity."""

from __future__ import annotations

import pytest
import torch

from prunecast.compress import load_saved, save_model
from prunecast.compress.discover import pruning_spec
from prunecast.compress.groups import remove_units
from prunecast.models import load_pretrained
from prunecast.models.patchtst import PatchTSMixerAdapter, PatchTSTAdapter
from tests.test_compress_prune import _reference_without

PATCHTST = dict(
    model_type="patchtst",
    context_length=64,
    prediction_length=16,
    num_input_channels=1,
    patch_length=8,
    patch_stride=8,
    d_model=16,
    num_attention_heads=4,
    num_hidden_layers=2,
    ffn_dim=32,
    dropout=0.0,
    head_dropout=0.0,
    pooling_type=None,
)
MIXER = dict(
    model_type="patchtsmixer",
    context_length=64,
    prediction_length=16,
    num_input_channels=1,
    patch_length=8,
    patch_stride=8,
    d_model=16,
    num_layers=2,
    expansion_factor=2,
    dropout=0.0,
    head_dropout=0.0,
)


@pytest.mark.parametrize("adapter,config", [(PatchTSTAdapter(), PATCHTST), (PatchTSMixerAdapter(), MIXER)])
def test_load_prune_exactly_save_and_export(adapter, config, tmp_path):
    torch.manual_seed(0)
    adapter.from_config(config, 64, 16).save_pretrained(tmp_path / "hf")
    module = load_pretrained(str(tmp_path / "hf"), horizon=12)
    assert module.family == adapter.family and module(torch.randn(3, 64)).shape == (3, 12)
    groups = pruning_spec(module).groups
    kinds = {g.kind for g in groups}
    assert kinds == ({"heads", "mlp_hidden"} if adapter.family == "patchtst" else {"mlp_hidden"})
    x = torch.randn(4, 64, dtype=torch.float64)
    for g in groups:
        ref = _reference_without(module.double(), g, [0, 2])(x)
        remove_units(module, g, [0, 2])
        torch.testing.assert_close(module(x), ref, rtol=0, atol=1e-10)
    module.float()
    save_model(module, tmp_path / "saved")
    torch.testing.assert_close(load_saved(tmp_path / "saved")(x.float()), module(x.float()), rtol=0, atol=0)
    from prunecast.export import ExportConfig, export_onnx

    manifest = export_onnx(module, tmp_path / "art", ExportConfig(source_model="small"))
    assert manifest.parity.max_abs_err < 1e-4
