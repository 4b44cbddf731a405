"""Horizons past a TTM checkpoint's own: zero-shot roll-out, a grown head, and HF revisions."""

import copy
import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from prunecast.cli import main
from prunecast.compress import (
    FinetuneConfig,
    PruneConfig,
    count_macs,
    finetune,
    load_model,
    prune,
    save_model,
)
from prunecast.data import prepare_windows
from prunecast.models import ModelError, load_pretrained
from prunecast.models.ttm import TTMAdapter

from .conftest import small_ttm_config, write_csv

L, NATIVE, LONG = 64, 16, 40


def _ttm(horizon: int, native: int = NATIVE, context: int = L):
    torch.manual_seed(0)
    return TTMAdapter().from_config(
        small_ttm_config(context, native), context_length=context, horizon=horizon
    )


def test_rollout_feeds_each_block_back_as_context():
    short, long = _ttm(NATIVE), _ttm(LONG)
    x = torch.randn(3, L)
    with torch.inference_mode():
        first = short(x)
        second = short(torch.cat([x, first], dim=-1)[:, -L:])
        out = long(x)
    assert out.shape == (3, LONG)
    torch.testing.assert_close(out[:, :NATIVE], first)
    torch.testing.assert_close(out[:, NATIVE : 2 * NATIVE], second)
    assert long.head_info() == {"native_horizon": NATIVE, "passes": 3, "horizon": LONG}
    assert count_macs(long) == 3 * count_macs(short)


def test_rollout_training_loss_covers_the_whole_horizon():
    module = _ttm(LONG)
    x, y = torch.randn(4, L), torch.randn(4, LONG)
    y_later = y.clone()
    y_later[:, NATIVE:] += 1.0
    with torch.no_grad():
        assert module.training_loss(x, y) != module.training_loss(x, y_later)
        torch.testing.assert_close(module.training_loss(x, y), torch.square(module(x) - y).mean())


def test_grown_head_starts_from_the_pretrained_rows_and_saves(tmp_path):
    module = _ttm(LONG)
    x = torch.randn(3, L)
    with torch.inference_mode():
        native = _ttm(NATIVE)(x)
    assert module.grow_head() and not module.grow_head()
    assert module.head_info() == {"native_horizon": LONG, "passes": 1, "horizon": LONG}
    assert module.model.head.base_forecast_block.out_features == LONG
    with torch.inference_mode():
        out = module(x)
    torch.testing.assert_close(out[:, :NATIVE], native)
    # later steps start as a flat continuation of the last pretrained step
    torch.testing.assert_close(out[:, NATIVE:], native[:, -1:].expand(-1, LONG - NATIVE))
    save_model(module, tmp_path / "m")
    assert json.loads((tmp_path / "m" / "config.json").read_text())["prediction_length"] == LONG
    loaded = load_model(tmp_path / "m")
    assert loaded.head_info()["passes"] == 1
    with torch.inference_mode():
        torch.testing.assert_close(loaded(x), out, rtol=0, atol=0)


def test_grown_head_fitted_to_contexts_forecasts_the_rollout():
    rolled, grown, flat = _ttm(LONG), _ttm(LONG), _ttm(LONG)
    torch.manual_seed(1)
    fit_on, held_out = torch.randn(256, L).cumsum(-1), torch.randn(64, L).cumsum(-1)
    assert grown.grow_head(fit_on) and flat.grow_head()
    with torch.inference_mode():
        want = rolled(held_out)
        fitted, continued = grown(held_out), flat(held_out)
    torch.testing.assert_close(fitted[:, :NATIVE], want[:, :NATIVE])  # the pretrained steps as they were
    fitted_err = torch.square(fitted - want)[:, NATIVE:].mean()
    flat_err = torch.square(continued - want)[:, NATIVE:].mean()
    assert fitted_err < 0.25 * flat_err, (fitted_err, flat_err)


def test_finetune_fits_a_grown_head_unless_told_not_to(long_data):
    cfg = FinetuneConfig(lr=1e-3, epochs=1, windows_per_epoch=32, val_windows=64, head_fit_windows=128)
    fitted = finetune(_ttm(LONG), long_data.train, long_data.val, cfg)
    flat = finetune(_ttm(LONG), long_data.train, long_data.val, replace(cfg, head_fit_windows=0))
    assert fitted.grown_head and flat.grown_head
    assert fitted.val_loss_before < flat.val_loss_before
    with pytest.raises(ValueError, match="head_fit_windows"):
        FinetuneConfig(head_fit_windows=-1).check()


def test_grow_head_is_a_no_op_within_the_native_horizon():
    module = _ttm(8)
    assert not module.grow_head() and module.model.head.base_forecast_block.out_features == NATIVE


@pytest.fixture
def long_data(tmp_path):
    return prepare_windows(write_csv(tmp_path / "long.csv", rows=1200), context_length=L, horizon=LONG)


def test_prune_then_finetune_trains_a_grown_head(long_data, tmp_path):
    module = _ttm(LONG)
    teacher = copy.deepcopy(module)
    cfg = PruneConfig(budget=0.6, macro_batch=32, micro_batch=16, val_windows=64, max_steps=3)
    prune(module, long_data.train, long_data.val, cfg)
    assert module.head_info()["passes"] == 3  # scored on the roll-out over the whole horizon
    ft = FinetuneConfig(lr=1e-3, epochs=2, windows_per_epoch=128, val_windows=64)
    report = finetune(module, long_data.train, long_data.val, ft, teacher=teacher)
    assert report.grown_head and report.head == {"native_horizon": LONG, "passes": 1, "horizon": LONG}
    assert report.to_dict()["grown_head"]
    assert report.best_val_loss < report.val_loss_before
    save_model(module, tmp_path / "p")
    x = torch.randn(2, L)
    with torch.inference_mode():
        torch.testing.assert_close(load_model(tmp_path / "p")(x), module(x))
    rollout = FinetuneConfig(lr=1e-3, epochs=1, windows_per_epoch=32, val_windows=32, head="rollout")
    kept = finetune(_ttm(LONG), long_data.train, long_data.val, rollout)
    assert not kept.grown_head and kept.head["passes"] == 3


def test_grown_head_exports_and_serves_the_long_horizon(tmp_path):
    from prunecast.export import ExportConfig, export_onnx
    from prunecast.runtime import Forecaster

    module = _ttm(LONG)
    module.grow_head()
    manifest = export_onnx(
        module, tmp_path / "art", ExportConfig(source_model="small", source_revision="64-40")
    )
    assert manifest.horizon == LONG and manifest.source_revision == "64-40"
    series = np.random.default_rng(0).standard_normal((5, L)).astype(np.float32)
    forecast = Forecaster.load(tmp_path / "art", backend="onnxruntime").predict(series)
    with torch.inference_mode():
        np.testing.assert_allclose(forecast, module(torch.from_numpy(series)).numpy(), atol=1e-4)
    assert forecast.shape == (5, LONG)


# --- revisions: a fake hub cache holding TTM r2's branch layout, with small random weights


BRANCHES = {"main": (512, 96), "512-192-r2": (512, 192), "1024-96-r2": (1024, 96)}
REPO_ID = "test-org/ttm-r2"


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    """An offline HF cache in which ``REPO_ID`` has a snapshot per branch, as ``save_pretrained`` wrote it."""
    import huggingface_hub.constants
    import transformers.utils.hub

    cache = tmp_path / "hub"
    repo = cache / f"models--{REPO_ID.replace('/', '--')}"
    for i, (branch, (context, horizon)) in enumerate(BRANCHES.items()):
        commit = f"{i:040x}"
        cfg = {**small_ttm_config(context, horizon), "patch_length": 64, "patch_stride": 64}
        torch.manual_seed(i)
        TTMAdapter().from_config(cfg, context, horizon).model.save_pretrained(repo / "snapshots" / commit)
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / branch).write_text(commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(transformers.utils.hub, "TRANSFORMERS_CACHE", str(cache))
    return cache


def test_revision_picks_the_branch_checkpoint(fake_hub, tmp_path):
    for branch, (context, horizon) in BRANCHES.items():
        module = load_pretrained(REPO_ID, revision=None if branch == "main" else branch)
        assert (module.context_length, module.native_horizon) == (context, horizon)
    module = load_model(REPO_ID, horizon=192, revision="512-192-r2")
    assert module.revision == "512-192-r2" and module.head_info()["passes"] == 1
    save_model(module, tmp_path / "m")
    assert json.loads((tmp_path / "m" / "prunecast.json").read_text())["revision"] == "512-192-r2"
    assert load_model(tmp_path / "m").revision == "512-192-r2"
    with pytest.raises(ModelError, match="revision 'x' applies to a Hugging Face id, not a saved model"):
        load_model(tmp_path / "m", revision="x")
    with pytest.raises(ModelError, match="cannot load|cannot read config.json"):
        load_pretrained(REPO_ID, revision="no-such-branch")


def test_local_directory_with_a_revision_is_refused(tmp_path):
    _ttm(NATIVE).model.save_pretrained(tmp_path / "d")
    with pytest.raises(ModelError, match="applies to a Hugging Face id, not to a local directory"):
        load_pretrained(str(tmp_path / "d"), revision="512-192-r2")


def test_evaluate_cli_takes_a_revision_and_a_long_horizon(fake_hub, tmp_path, capsys):
    csv = str(write_csv(tmp_path / "d.csv", rows=3000, columns=1))
    args = ["evaluate", "--model", REPO_ID, "--data", csv, "--limit", "8", "--json"]
    assert main([*args, "--revision", "512-192-r2", "--horizon", "192"]) == 0
    assert json.loads(capsys.readouterr().out)["horizon"] == 192
    assert main([*args, "--horizon", "288"]) == 0  # main branch, 96-step head rolled out 3x
    result = json.loads(capsys.readouterr().out)
    assert result["horizon"] == 288 and result["head"] == {"native_horizon": 96, "passes": 3, "horizon": 288}
    assert result["revision"] is None


def test_prune_cli_grows_the_head_before_pruning(fake_hub, tmp_path, capsys):
    """`prunecast prune` past the native horizon prunes the one-pass model, as `prunecast run` does,
    and saves it with its grown head: `prunecast finetune` then trains that head."""
    csv = str(write_csv(tmp_path / "d.csv", rows=3000, columns=1))
    out = tmp_path / "pruned"
    args = ["prune", "--model", REPO_ID, "--data", csv, "--horizon", "192", "--out", str(out), "--json"]
    budget = ["--target", "macs", "--budget", "0.7", "--max-steps", "1", "--macro-batch", "64"]
    assert main(args + budget) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["grown_head"] and result["head"] == {"native_horizon": 192, "passes": 1, "horizon": 192}
    one_pass = load_model(REPO_ID, horizon=192)
    assert one_pass.head_info()["passes"] == 2
    one_pass.grow_head()
    assert result["macs_before"] == count_macs(one_pass)
    saved = load_model(out)
    assert saved.head_info()["passes"] == 1 and saved.horizon == 192
    assert count_macs(saved) == result["macs_after"] < result["macs_before"]


def test_prune_then_finetune_prunes_the_grown_one_pass_model(long_data):
    """Past the native horizon the pruned variant grows its head first: pruning's budget and
    scores are those of the one-pass model that is served, not of the roll-out."""
    from prunecast.pipeline.job import prune_finetune

    original = _ttm(LONG)
    one_pass = copy.deepcopy(original)
    one_pass.grow_head()
    cfg = PruneConfig(budget=0.6, macro_batch=32, micro_batch=16, val_windows=64, max_steps=2)
    ft = FinetuneConfig(lr=1e-3, epochs=1, windows_per_epoch=32, val_windows=64, head_fit_windows=128)
    pruned, pr, report = prune_finetune(original, long_data, cfg, ft)
    assert pr.macs_before == count_macs(one_pass) < count_macs(original)
    assert report.grown_head and pruned.head_info()["passes"] == 1
    assert original.head_info()["passes"] == 3  # the teacher keeps rolling out
