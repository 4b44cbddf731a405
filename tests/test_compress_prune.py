"""Loss-guided importance, exact structured removal, progressive pruning and fine-tuning."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from torch import nn
from torch.func import functional_call

from prunecast.compress import (
    FinetuneConfig,
    PruneConfig,
    count_macs,
    count_params,
    finetune,
    load_saved,
    prune,
    save_model,
)
from prunecast.compress.cost import ACTIVATION_COST, activation_elements, latency_cost, linear_rows
from prunecast.compress.groups import remove_units, slice_width, tp_group, unit_channels
from prunecast.compress.importance import LossGuidedImportance
from prunecast.compress.prune import per_sample_gradients
from prunecast.compress.training import sample_indices, val_loss
from prunecast.data import prepare_windows
from prunecast.models.ttm import TTMAdapter
from tests.conftest import small_ttm_config, write_csv


def _batch(n=6, seed=1, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 64, generator=g, dtype=dtype), torch.randn(n, 16, generator=g, dtype=dtype)


def _masked_params(module, groups, masks):
    """Every parameter, with each group's unit mask multiplied into all the weights its units own."""
    params = dict(module.named_parameters())
    out = {}
    for name, p in params.items():
        factor = torch.ones_like(p)
        for g in groups:
            for sl in g.slices:
                layer = module.get_submodule(sl.module)
                owned = [(f"{sl.module}.weight", 0 if sl.axis == "out" else 1)]
                if sl.axis == "out" or isinstance(layer, nn.LayerNorm):
                    owned.append((f"{sl.module}.bias", 0))
                for pname, dim in owned:
                    if pname != name:
                        continue
                    width = slice_width(layer, sl)
                    chan = torch.empty(width, dtype=torch.long)
                    for u in range(g.units):
                        chan[unit_channels(width, g.units, u, sl.layout)] = u
                    per_channel = masks[g.name][chan]
                    shape = [1] * p.dim()
                    shape[dim] = width
                    factor = factor * per_channel.view(shape)
        out[name] = p * factor
    return out


def test_first_order_score_is_the_mask_gradient(small_ttm):
    """s = -dL/dm, computed by the importance from weight gradients, against explicit masks."""
    module = small_ttm.double().eval()
    groups = module.pruning_spec().groups
    assert {g.kind for g in groups} == {"mlp_hidden", "width"}
    x, y = _batch()
    torch.square(module(x) - y).mean().backward()
    imp = LossGuidedImportance()
    scores = {g.name: imp.signed(tp_group(module, g), g.units) for g in groups}
    # the Torch-Pruning importance interface ranks by |s|
    torch.testing.assert_close(imp(tp_group(module, groups[-1])), scores[groups[-1].name].abs())

    masks = {g.name: torch.ones(g.units, dtype=torch.float64, requires_grad=True) for g in groups}
    pred = functional_call(module, _masked_params(module, groups, masks), (x,))
    torch.square(pred - y).mean().backward()
    for g in groups:
        expected = -masks[g.name].grad
        assert expected.abs().max() > 1e-8, g.name  # a real signal, not all zeros
        torch.testing.assert_close(scores[g.name], expected, rtol=1e-9, atol=1e-12)


def test_second_order_score_uses_per_sample_mask_gradients(small_ttm):
    module = small_ttm.double().eval()
    groups = module.pruning_spec().groups
    x, y = _batch(n=4)
    imp = LossGuidedImportance(second_order=True)
    imp.per_sample_grads = per_sample_gradients(module, x, y)
    per_sample = []
    for i in range(len(x)):
        masks = {g.name: torch.ones(g.units, dtype=torch.float64, requires_grad=True) for g in groups}
        pred = functional_call(module, _masked_params(module, groups, masks), (x[i : i + 1],))
        torch.square(pred - y[i : i + 1]).mean().backward()
        per_sample.append({k: m.grad for k, m in masks.items()})
    for g in groups:
        gs = torch.stack([p[g.name] for p in per_sample])
        expected = -(gs.mean(0) - gs.square().mean(0) / 2)
        torch.testing.assert_close(imp.signed(tp_group(module, g), g.units), expected, rtol=1e-7, atol=1e-10)


def test_removing_zeroed_mlp_units_changes_nothing(small_ttm):
    """Where zeroing is exact (MLP hidden channels), zero then remove: identical outputs."""
    module = small_ttm.eval()
    x = torch.randn(5, 64)
    for g in [g for g in module.pruning_spec().groups if g.kind == "mlp_hidden"]:
        assert g.exact_by_zeroing
        units = list(range(1, g.units, 3))
        with torch.no_grad():
            for dep, idxs in tp_group(module, g, units):
                layer = dep.target.module
                if dep.handler.__name__.endswith("out_channels"):
                    layer.weight[idxs] = 0
                    layer.bias[idxs] = 0
                else:
                    layer.weight[:, idxs] = 0
        before = module(x)
        params = count_params(module)
        remove_units(module, g, units)
        assert count_params(module) < params
        torch.testing.assert_close(module(x), before, rtol=0, atol=1e-5)


class _MaskedLayerNorm(nn.Module):
    """LayerNorm over the kept channels only; removed channels output 0."""

    def __init__(self, ln: nn.LayerNorm, keep: torch.Tensor):
        super().__init__()
        self.ln, self.keep = ln, keep

    def forward(self, x):
        kept = x[..., self.keep]
        mean = kept.mean(-1, keepdim=True)
        var = kept.var(-1, unbiased=False, keepdim=True)
        out = (x - mean) / torch.sqrt(var + self.ln.eps) * self.ln.weight + self.ln.bias
        return out * self.keep.to(x.dtype)


class _MaskedSoftmax(nn.Module):
    def __init__(self, keep: torch.Tensor):
        super().__init__()
        self.keep = keep

    def forward(self, logits):
        return torch.softmax(logits.masked_fill(~self.keep, float("-inf")), dim=-1)


def _reference_without(module, group, units):
    """The unpruned model with ``units`` excluded: LayerNorms and gating softmaxes see only kept
    channels, and no kept channel reads a removed one. Pruning must reproduce it exactly."""
    ref = copy.deepcopy(module)
    for sl in group.slices:
        layer = ref.get_submodule(sl.module)
        width = slice_width(layer, sl)
        removed = sorted(c for u in units for c in unit_channels(width, group.units, u, sl.layout))
        keep = torch.ones(width, dtype=torch.bool)
        keep[removed] = False
        parent_name, _, attr = sl.module.rpartition(".")
        parent = ref.get_submodule(parent_name)
        with torch.no_grad():
            if isinstance(layer, nn.LayerNorm):
                setattr(parent, attr, _MaskedLayerNorm(layer, keep))
            elif sl.axis == "out":
                layer.weight[removed] = 0
                layer.bias[removed] = 0
                if attr == "attn_layer":  # TTM's gated attention: softmax over the pruned axis
                    parent.attn_softmax = _MaskedSoftmax(keep)
            else:
                layer.weight[:, removed] = 0
    return ref


@pytest.mark.parametrize("name", ["encoder.d_model", "decoder.d_model"])
def test_width_removal_equals_masked_reference(small_ttm, name):
    """LayerNorm/softmax-coupled widths: zeroing is not removal, so compare with a reference that
    excludes the removed channels explicitly (through every adaptive-patching reshape)."""
    module = small_ttm.double().eval()
    group = next(g for g in module.pruning_spec().groups if g.name == name)
    assert not group.exact_by_zeroing
    units = [0, 3, 4, 7] if group.units > 8 else [1, 2]
    x = torch.randn(5, 64, dtype=torch.float64)
    ref = _reference_without(module, group, units)(x)
    full = module(x)
    remove_units(module, group, units)
    assert (ref - full).abs().max() > 1e-3  # removing them matters ...
    torch.testing.assert_close(module(x), ref, rtol=0, atol=1e-10)  # ... and is exactly the reference
    cfg = module.model.config
    assert getattr(cfg, group.config_key) == (group.units - len(units)) * group.config_scale


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    path = write_csv(tmp_path_factory.mktemp("data") / "series.csv", rows=1200, columns=2)
    return prepare_windows(path, context_length=64, horizon=16)


@pytest.mark.parametrize("importance", ["loss", "loss2", "magnitude"])
def test_prune_meets_the_budget_and_stays_consistent(small_ttm, small_data, importance, tmp_path):
    macs0 = count_macs(small_ttm)
    cfg = PruneConfig(
        budget=0.5,
        target="macs",
        importance=importance,
        step_fraction=0.25,
        macro_batch=64,
        micro_batch=32,
        per_sample_batch=8,
        val_windows=256,
    )
    report = prune(small_ttm, small_data.train, small_data.val, cfg)
    module = report.module
    assert module is small_ttm
    assert report.macs_before == macs0 and report.macs_after == count_macs(module) <= 0.5 * macs0
    assert report.params_after == count_params(module) < report.params_before
    assert report.steps and all(s.val_loss > 0 for s in report.steps)
    # a group keeps units unless the block it lies in went whole (then it keeps none)
    gone = report.blocks_removed
    assert all(
        layer.kept == 0
        if any(layer.name.startswith(b + ".") for b in gone)
        else 0 < layer.kept <= layer.original
        for layer in report.layers
    )
    assert any(layer.kept < layer.original for layer in report.layers)
    assert all(isinstance(module.get_submodule(b), torch.nn.Identity) for b in gone)
    assert not set(gone) & set(module.pruning_spec().blocks)
    # the config and module attributes agree with the tensors
    cfg_ = module.model.config
    assert module.model.backbone.encoder.patcher.out_features == cfg_.d_model
    assert module.model.backbone.d_model == cfg_.d_model
    assert module.model.decoder.adapter.out_features == cfg_.decoder_d_model
    assert module.model.head.base_forecast_block.in_features == cfg_.num_patches * cfg_.decoder_d_model
    # it runs at other batch sizes, and rebuilds from what it says about itself
    module.eval()
    x = torch.randn(3, 64)
    assert module(torch.randn(1, 64)).shape == (1, 16)
    save_model(module, tmp_path / "m")
    torch.testing.assert_close(load_saved(tmp_path / "m")(x), module(x), rtol=0, atol=0)
    assert report.to_dict()["macs_reduction"] >= 2


def test_latency_estimate_target_meets_its_budget_and_weighs_activations(small_ttm, small_data):
    cost0 = latency_cost(small_ttm)
    rows = linear_rows(small_ttm)
    assert cost0 == count_macs(small_ttm) + ACTIVATION_COST * activation_elements(small_ttm, rows)
    cfg = PruneConfig(
        budget=0.4,
        target="latency-estimate",
        kinds=("mlp_hidden", "heads", "width"),  # widths alone: whether activations steer them
        step_fraction=0.25,
        macro_batch=64,
        micro_batch=32,
        val_windows=256,
    )
    report = prune(small_ttm, small_data.train, small_data.val, cfg)
    assert latency_cost(small_ttm) <= 0.4 * cost0
    widths = {layer.name: layer for layer in report.layers if layer.kind == "width"}
    assert any(w.kept < w.original for w in widths.values())


def test_prune_tolerance_keeps_the_last_state_within_it(small_ttm, small_data):
    cfg = PruneConfig(budget=0.05, tolerance=0.0, macro_batch=64, micro_batch=32, val_windows=256)
    report = prune(small_ttm, small_data.train, small_data.val, cfg)
    assert report.stopped_early
    assert report.val_loss_after <= report.val_loss_before * (1 + 1e-9) or not report.steps[:-1]
    assert report.macs_after > 0.05 * report.macs_before


def test_recovery_training_between_steps_lowers_the_loss_at_the_same_budget(small_ttm, small_data):
    """The random-weight model learns from recovery training: its first step and its end are below
    the same run without it, and the budget is met all the same."""
    cfg = PruneConfig(
        budget=0.5, target="macs", step_fraction=0.25, macro_batch=64, micro_batch=32, val_windows=256
    )
    plain = prune(copy.deepcopy(small_ttm), small_data.train, small_data.val, cfg)
    recovered_cfg = dataclasses.replace(cfg, recovery_windows=256, recovery_batch=32)
    recovered = prune(copy.deepcopy(small_ttm), small_data.train, small_data.val, recovered_cfg)
    assert recovered.macs_after <= 0.5 * recovered.macs_before
    assert recovered.val_loss_after < 0.9 * plain.val_loss_after
    assert recovered.steps[0].val_loss < plain.steps[0].val_loss
    assert recovered.to_dict()["config"]["recovery_windows"] == 256
    # distilled recovery trains toward the unpruned model's forecast rather than the truth
    distilled_cfg = dataclasses.replace(recovered_cfg, recovery_distill=1.0)
    distilled = prune(copy.deepcopy(small_ttm), small_data.train, small_data.val, distilled_cfg)
    x, _ = small_data.val.gather(sample_indices(small_data.val, 256, 0))
    x = torch.from_numpy(x)
    with torch.no_grad():
        original = small_ttm.eval()(x)
        gap = {
            name: float(torch.square(r.module(x) - original).mean())
            for name, r in (("truth", recovered), ("teacher", distilled))
        }
    assert gap["teacher"] < 0.5 * gap["truth"]


def test_bad_prune_config_is_a_clear_error(small_ttm, small_data):
    with pytest.raises(ValueError, match="budget must be in"):
        prune(small_ttm, small_data.train, small_data.val, PruneConfig(budget=0))
    with pytest.raises(ValueError, match="importance must be one of"):
        prune(small_ttm, small_data.train, small_data.val, PruneConfig(importance="taylor"))
    with pytest.raises(ValueError, match="recovery_windows must be 0 or more"):
        prune(small_ttm, small_data.train, small_data.val, PruneConfig(recovery_windows=-1))
    with pytest.raises(ValueError, match="would discard the recovery training"):
        PruneConfig(target="latency", recovery_windows=64).check()


def test_finetune_improves_validation_and_restores_the_best(small_ttm, small_data):
    cfg = FinetuneConfig(epochs=3, windows_per_epoch=128, lr_trial_windows=64, batch_size=32, val_windows=256)
    report = finetune(small_ttm, small_data.train, small_data.val, cfg)
    assert report.lr in cfg.lr_candidates and len(report.lr_trials) == len(cfg.lr_candidates)
    assert report.best_val_loss < report.val_loss_before
    idx = sample_indices(small_data.val, cfg.val_windows, cfg.seed)
    assert val_loss(small_ttm, small_data.val, idx) == pytest.approx(report.best_val_loss, rel=1e-6)
    assert report.best_val_loss == min([report.val_loss_before] + [e.val_loss for e in report.epochs])


def test_distillation_trains_toward_the_teachers_forecast(small_ttm, small_data):
    cfg = FinetuneConfig(lr=1e-3, epochs=1, windows_per_epoch=128, batch_size=32, val_windows=64, distill=1.0)
    teacher = copy.deepcopy(small_ttm)  # the same forecasts: all-teacher targets start at zero loss
    plain = finetune(copy.deepcopy(small_ttm), small_data.train, small_data.val, cfg)
    distilled = finetune(copy.deepcopy(small_ttm), small_data.train, small_data.val, cfg, teacher=teacher)
    assert distilled.epochs[0].train_loss < 0.05 * plain.epochs[0].train_loss
    half = dataclasses.replace(cfg, distill=0.5)
    blended = finetune(copy.deepcopy(small_ttm), small_data.train, small_data.val, half, teacher=teacher)
    assert distilled.epochs[0].train_loss < blended.epochs[0].train_loss < plain.epochs[0].train_loss
    other = TTMAdapter().from_config(small_ttm_config(), context_length=64, horizon=8)
    with pytest.raises(ValueError, match="teacher maps 64 -> 8 points"):
        finetune(small_ttm, small_data.train, small_data.val, cfg, teacher=other)
    with pytest.raises(ValueError, match="distill must be in"):
        finetune(small_ttm, small_data.train, small_data.val, dataclasses.replace(cfg, distill=2))


def test_cli_prune_then_finetune(small_ttm, small_data, tmp_path, capsys):
    import json

    from prunecast.cli import main

    save_model(small_ttm, tmp_path / "base")
    csv = str(small_data.benchmark.path)
    common = ["--data", csv, "--horizon", "16", "--json"]
    assert (
        main(
            [
                "prune",
                "--model",
                str(tmp_path / "base"),
                "-o",
                str(tmp_path / "p"),
                "--budget",
                "0.6",
                "--target",
                "latency-estimate",
                "--macro-batch",
                "32",
                *common,
            ]
        )
        == 0
    )
    pruned = json.loads(capsys.readouterr().out)
    assert pruned["macs_after"] <= 0.6 * pruned["macs_before"] and pruned["layers"]
    args = [
        "finetune",
        "--model",
        str(tmp_path / "p"),
        "-o",
        str(tmp_path / "f"),
        "--lr",
        "1e-3",
        "--epochs",
        "1",
        "--teacher",
        str(tmp_path / "base"),
    ]
    assert main([*args, "--windows-per-epoch", "64", *common]) == 0
    tuned = json.loads(capsys.readouterr().out)
    assert tuned["macs"] == pruned["macs_after"] and tuned["lr"] == 1e-3
    assert tuned["teacher"] == str(tmp_path / "base") and tuned["config"]["distill"] == 0.5
    assert load_saved(tmp_path / "f").model.config.d_model == load_saved(tmp_path / "p").model.config.d_model
    assert (
        main(
            [
                "prune",
                "--model",
                str(tmp_path / "p"),
                "-o",
                str(tmp_path / "x"),
                "--budget",
                "2",
                "--target",
                "macs",
                *common,
            ]
        )
        == 2
    )
    assert "budget must be in (0, 1]" in capsys.readouterr().err


def test_r2_width_removal_through_three_patching_levels(pretrained_ttm):
    """TTM r2 splits d_model 192 into 4 chunks of 48 at its finest level: removal must stay exact."""
    module = copy.deepcopy(pretrained_ttm).double().eval()
    group = next(g for g in module.pruning_spec().groups if g.name == "encoder.d_model")
    assert group.units == 48 and group.config_scale == 4
    units = list(range(0, 48, 3))
    x = torch.randn(3, 512, dtype=torch.float64)
    ref = _reference_without(module, group, units)(x)
    remove_units(module, group, units)
    assert module.model.config.d_model == 128 and module.model.backbone.encoder.patcher.out_features == 128
    torch.testing.assert_close(module(x), ref, rtol=0, atol=1e-9)
