"""Depth pruning: whole residual blocks scored by their first-order loss change, removed, saved,
rebuilt and exported."""

from __future__ import annotations

import json

import pytest
import torch

from prunecast.compress import load_model, save_model
from prunecast.compress.blocks import block_savings, recording_scores, skip_block
from prunecast.compress.cost import count_macs, count_params
from prunecast.compress.prune import PruneConfig, prune
from prunecast.compress.rounding import UnitLedger, rebuild
from tests.conftest import write_csv


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    from prunecast.data import prepare_windows

    path = write_csv(tmp_path_factory.mktemp("data") / "series.csv", rows=1200, columns=2)
    return prepare_windows(path, context_length=64, horizon=16)


def _batch(data, n=16):
    x, y = data.train.gather(list(range(n)))
    return torch.as_tensor(x), torch.as_tensor(y)


def test_ttm_offers_every_mixer_as_a_block_and_forgets_a_removed_one(small_ttm):
    blocks = small_ttm.pruning_spec().blocks
    mixers = [n for n, _ in small_ttm.named_modules() if n.endswith(("patch_mixer", "feature_mixer"))]
    assert blocks and sorted(blocks) == sorted(mixers)
    gone = blocks[0]
    skip_block(small_ttm, gone)
    spec = small_ttm.pruning_spec()
    assert gone not in spec.blocks and len(spec.blocks) == len(blocks) - 1
    # the groups inside it left the spec; the residual width no longer slices its layers
    assert all(not sl.module.startswith(gone + ".") for g in spec.groups for sl in g.slices)
    assert small_ttm(torch.randn(2, 64)).shape == (2, 16)
    with pytest.raises(ValueError, match="no block 'model.nowhere'"):
        skip_block(small_ttm, "model.nowhere")


def test_block_score_is_the_first_order_loss_change_of_its_gate(small_ttm, small_data):
    """``-dL/dm`` for a gate ``x + m * f(x)`` at ``m = 1``, computed by autograd through an explicit
    gate, equals the score the hooks read off a plain backward pass."""
    small_ttm.eval()
    x, y = _batch(small_data)
    blocks = small_ttm.pruning_spec().blocks[:3]
    with recording_scores(small_ttm, blocks) as scores:
        small_ttm.training_loss(x, y).backward()
    small_ttm.zero_grad(set_to_none=True)
    for b in blocks:
        gate = torch.ones((), requires_grad=True)

        def gated(_mod, inputs, output, gate=gate):
            return inputs[0] + gate * (output - inputs[0])

        handle = small_ttm.get_submodule(b).register_forward_hook(gated)
        small_ttm.training_loss(x, y).backward()
        handle.remove()
        assert float(scores[b]) == pytest.approx(-float(gate.grad), rel=1e-4, abs=1e-9)
        assert float(scores[b]) != 0.0


def test_block_savings_count_what_the_block_costs(small_ttm):
    blocks = small_ttm.pruning_spec().blocks
    saved = block_savings(small_ttm, blocks, count_params)
    for b in blocks:
        own = sum(p.numel() for p in small_ttm.get_submodule(b).parameters())
        assert saved[b] == own > 0


def test_depth_pruning_removes_blocks_and_the_model_rebuilds(small_ttm, small_data, tmp_path):
    macs0 = count_macs(small_ttm)
    cfg = PruneConfig(
        budget=0.5, target="macs", kinds=("block",), step_fraction=0.25, macro_batch=64, micro_batch=32
    )
    report = prune(small_ttm, small_data.train, small_data.val, cfg)
    gone = report.blocks_removed
    assert gone and count_macs(small_ttm) <= 0.5 * macs0
    assert all(isinstance(small_ttm.get_submodule(b), torch.nn.Identity) for b in gone)
    assert sum(sum(s.removed.values()) for s in report.steps) == len(gone)
    assert report.to_dict()["blocks_removed"] == gone and json.dumps(report.to_dict())
    # saved and loaded: the identities come back, the weights load strictly, the forecast is exact
    small_ttm.eval()
    x = torch.randn(5, 64)
    save_model(small_ttm, tmp_path / "m")
    marker = json.loads((tmp_path / "m" / "prunecast.json").read_text())
    assert all(marker["architecture"][b] == {"type": "Identity"} for b in gone)
    loaded = load_model(str(tmp_path / "m"))
    assert all(isinstance(loaded.get_submodule(b), torch.nn.Identity) for b in gone)
    torch.testing.assert_close(loaded(x), small_ttm(x), rtol=0, atol=0)


def test_rebuild_from_the_ledger_skips_the_removed_blocks(small_ttm):
    original = small_ttm
    groups = list(original.pruning_spec().groups)
    ledger = UnitLedger.start(groups)
    block = original.pruning_spec().blocks[-1]
    ledger.skipped.append(block)
    width = next(g for g in groups if g.kind == "width")
    ledger.remove(width.name, [0, 1])
    out = rebuild(original, ledger)
    assert isinstance(out.get_submodule(block), torch.nn.Identity)
    assert not isinstance(original.get_submodule(block), torch.nn.Identity)  # a copy
    assert {g.name: g.units for g in out.pruning_spec().groups}[width.name] == width.units - 2
    assert out(torch.randn(2, 64)).shape == (2, 16)


def test_depth_pruned_model_exports_with_parity(small_ttm, tmp_path):
    from prunecast.export import ExportConfig, export_onnx

    for b in small_ttm.pruning_spec().blocks[::2]:
        skip_block(small_ttm, b)
    manifest = export_onnx(small_ttm.eval(), tmp_path / "art", ExportConfig())
    assert manifest.parity.max_abs_err <= manifest.parity.tolerance
