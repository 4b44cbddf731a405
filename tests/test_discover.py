"""Bring your own model: traced groups, the exactness check, save/load, and the TTM cross-check."""

from __future__ import annotations

import pytest
import torch

from prunecast.compress import load_saved, save_model
from prunecast.compress.discover import discover, pruning_spec
from prunecast.compress.groups import remove_units
from prunecast.models import ModelError, wrap
from tests.byo_models import GatedMLP, PatchMixer, PatchMLP
from tests.test_compress_prune import _reference_without


def test_wrap_checks_the_output_shape():
    with pytest.raises(ModelError, match=r"not \[2, 9\]"):
        wrap(PatchMLP(), 32, 9)


def test_traced_groups_remove_exactly_against_an_independent_reference():
    torch.manual_seed(0)
    module = wrap(PatchMLP(), 32, 8)
    found = discover(module)
    module.double()
    assert {g.kind for g in found.groups} == {"mlp_hidden", "width"}
    x = torch.randn(5, 32, dtype=torch.float64)
    for g in found.groups:
        copy_ = wrap(PatchMLP(), 32, 8).double()
        copy_.load_state_dict(module.state_dict())
        ref = _reference_without(copy_, g, [1, 4])(x)
        remove_units(copy_, g, [1, 4])
        torch.testing.assert_close(copy_(x), ref, rtol=0, atol=1e-10)


@pytest.mark.parametrize("cls,reason", [(GatedMLP, "differs from the masked"), (PatchMixer, "fails")])
def test_groups_the_tracer_gets_wrong_are_dropped(cls, reason):
    torch.manual_seed(0)
    found = discover(wrap(cls(), 32, 8))
    assert any(reason in d.reason for d in found.dropped)
    names = {g.name for g in found.groups}
    assert not names & {d.name for d in found.dropped}


def test_pruned_generic_model_saves_and_loads_without_pickle(tmp_path):
    torch.manual_seed(0)
    module = wrap(PatchMLP(), 32, 8)
    for g in pruning_spec(module).groups:
        remove_units(module, g, [0, 2])
    save_model(module, tmp_path / "m")
    loaded = load_saved(tmp_path / "m")
    x = torch.randn(3, 32)
    torch.testing.assert_close(loaded(x), module.eval()(x), rtol=0, atol=0)

    class Local(torch.nn.Module):
        def forward(self, x):
            return x[:, :8]

    with pytest.raises(ModelError, match="cannot be saved"):
        save_model(wrap(Local(), 32, 8), tmp_path / "x")


def test_ttm_cross_check_traced_groups_cover_the_hand_mlp_groups(small_ttm):
    """The tracer finds every MLP-hidden group of the hand spec exactly; it gets both residual
    widths wrong (adaptive patching and the patch mixer's transpose), which is why TTM keeps a spec."""
    hand = small_ttm.pruning_spec().groups
    found = discover(small_ttm)
    traced = {frozenset((s.module, s.axis) for s in g.slices) for g in found.groups}
    mlp = {frozenset((s.module, s.axis) for s in g.slices) for g in hand if g.kind == "mlp_hidden"}
    assert traced == mlp
    wrong = {g.name for g in hand if frozenset((s.module, s.axis) for s in g.slices) not in traced}
    assert wrong == {"encoder.d_model", "decoder.d_model"}
    dropped = {d.name for d in found.dropped}
    assert {"model.backbone.encoder.patcher", "model.decoder.adapter"} <= dropped
