"""benchmarks/grid.py on a tiny random TTM: each variant's cell, a transfer, resuming, the table."""

import importlib.util
import json
import sys
from dataclasses import replace

import pytest
import torch

from prunecast.common.defaults import DEFAULT_DISTILL
from prunecast.compress import FinetuneConfig, PruneConfig, load_model
from prunecast.data import prepare_windows
from prunecast.evaluate import evaluate
from prunecast.models.ttm import TTMAdapter

from .conftest import REPO, small_ttm_config, write_csv

spec = importlib.util.spec_from_file_location("prunecast_bench_grid", REPO / "benchmarks" / "grid.py")
grid = sys.modules["prunecast_bench_grid"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(grid)

L, H, LIMIT = 64, 16, 96


@pytest.fixture
def config(tmp_path):
    torch.manual_seed(0)
    TTMAdapter().from_config(small_ttm_config(L, H), L, H).model.save_pretrained(tmp_path / "ttm")
    return grid.GridConfig(
        datasets={"a": write_csv(tmp_path / "a.csv", rows=900, columns=2)},
        targets={"b": write_csv(tmp_path / "b.csv", rows=900, columns=2, seed=1)},
        horizons=(H,),
        transfers=(("a", "b"),),
        model=str(tmp_path / "ttm"),
        prune=PruneConfig(budget=0.6, macro_batch=16, micro_batch=16, val_windows=32, max_steps=1),
        finetune=FinetuneConfig(lr=1e-3, epochs=1, windows_per_epoch=32, val_windows=32),
        test_limit=LIMIT,
        results=tmp_path / "out" / "grid.json",
        work_dir=tmp_path / "work",
    )


def _test_mse(model, csv) -> float:
    module = load_model(model, horizon=H)
    return evaluate(module, prepare_windows(csv, L, H).test, limit=LIMIT).mse


def test_grid_runs_each_variant_and_a_transfer_then_resumes(config):
    ran = grid.Grid(config, log=lambda m: None).run()
    assert ran == [
        "a|16|zero_shot|0",
        "a|16|full_finetune|0",
        "a|16|pruned_finetune|0",
        "b|16|zero_shot|0",
    ] + ["a->b|16|0"]
    results = json.loads(config.results.read_text())
    cells = results["cells"]
    zero, full, pruned = (cells[f"a|16|{v}|0"] for v in grid.VARIANTS)
    assert zero["mse"] == pytest.approx(_test_mse(config.model, config.datasets["a"]))
    assert cells["b|16|zero_shot|0"]["mse"] == pytest.approx(_test_mse(config.model, config.targets["b"]))
    assert full["params"] == zero["params"] and full["mse"] != zero["mse"]
    assert pruned["macs"] < zero["macs"] and pruned["prune"]["steps"] >= 1 and "lr" in pruned["finetune"]
    assert {c["windows"] for c in cells.values()} == {LIMIT}
    # the transfer evaluates the very model the pruned cell trained, on b's test split, untrained
    source = grid.model_dir(config, "a", H, 0)
    transfer = results["transfer"]["a->b|16|0"]
    assert transfer["mse"] == pytest.approx(_test_mse(source, config.targets["b"]))
    assert transfer["macs"] == pruned["macs"] and transfer["target"] == "b"
    assert results["runs"][0]["cells"] == ran and len(results["runs"][0]["loadavg_before"]) == 3
    assert config.results.with_suffix(".png").stat().st_size > 0
    table = config.results.with_suffix(".md").read_text()
    assert "| a | 16 |" in table and "a → b" in table
    assert sorted(p.name for p in config.results.parent.iterdir()) == ["grid.json", "grid.md", "grid.png"]

    # resumed: nothing is rerun, zero-shot not per seed (it has no randomness); a new seed's cell
    # does not start past --max-minutes, judged by the seed-0 cell's time
    assert grid.Grid(replace(config, seeds=(0, 1), variants=("zero_shot",)), log=lambda m: None).run() == []
    more = replace(config, seeds=(0, 1), variants=("full_finetune",), max_minutes=0.0)
    assert grid.Grid(more, log=lambda m: None).run() == []
    after = json.loads(config.results.read_text())
    assert after["runs"][-1]["stopped_before"] == "a|16|full_finetune|1" and after["cells"] == cells

    with pytest.raises(SystemExit, match="other settings"):
        grid.Grid(replace(config, prune=replace(config.prune, budget=0.5)))


def test_plan_runs_a_transfer_once_both_its_ends_are_done(tmp_path):
    config = grid.GridConfig(
        datasets={"a": tmp_path / "a.csv", "b": tmp_path / "b.csv"},
        targets={"c": tmp_path / "c.csv"},
        horizons=(96,),
        seeds=(0, 1),
        transfers=(("a", "b"), ("b", "a"), ("a", "c"), ("a", "unknown")),
    )
    keys = [t.key for t in grid.plan(config)]
    a = ["a|96|zero_shot|0", "a|96|full_finetune|0", "a|96|pruned_finetune|0"]
    a += ["a|96|full_finetune|1", "a|96|pruned_finetune|1"]
    b = ["b|96|zero_shot|0", "a->b|96|0", "a->b|96|1", "b|96|full_finetune|0", "b|96|pruned_finetune|0"]
    b += ["b->a|96|0", "b|96|full_finetune|1", "b|96|pruned_finetune|1", "b->a|96|1"]
    assert keys == a + b + ["c|96|zero_shot|0", "a->c|96|0", "a->c|96|1"]


def _cell(dataset, horizon, variant, seed, mse, mae):
    return {
        "dataset": dataset,
        "horizon": horizon,
        "variant": variant,
        "seed": seed,
        "mse": mse,
        "mae": mae,
        "seconds": 1.0,
        "params": 10,
        "macs": 100,
    }


def test_table_bolds_the_best_of_each_row_and_averages_complete_horizons():
    values = {
        (96, "zero_shot"): (0.40, 0.41),
        (96, "full_finetune"): (0.37, 0.43),
        (96, "pruned_finetune"): (0.36, 0.42),
        (192, "zero_shot"): (0.50, 0.45),
        (192, "full_finetune"): (0.44, 0.47),
        (192, "pruned_finetune"): (0.46, 0.48),
        (336, "zero_shot"): (0.60, 0.50),
    }
    cells = {f"ETTh1|{h}|{v}|0": _cell("ETTh1", h, v, 0, mse, mae) for (h, v), (mse, mae) in values.items()}
    cells["ETTh1|96|pruned_finetune|1"] = _cell("ETTh1", 96, "pruned_finetune", 1, 0.38, 0.42)  # mean 0.37
    results = {"cells": cells, "transfer": {}, "published": {"ETTh1|96": {"PatchTST": 0.370}}}
    rows = {line.split(" | ")[1]: line for line in grid.grid_table(results)[2:]}
    assert rows["96"] == (
        "| ETTh1 | 96 | 0.4000 | **0.4100** | **0.3700** | 0.4300 | **0.3700** | 0.4200 | 0.370 | 1/1/2 |"
    )
    assert rows["192"] == (
        "| ETTh1 | 192 | 0.5000 | **0.4500** | **0.4400** | 0.4700 | 0.4600 | 0.4800 | – | 1/1/1 |"
    )
    assert "| ETTh1 | 336 | **0.6000** |" not in rows["336"] and "| 0.6000 | 0.5000 | – |" in rows["336"]
    # the average covers only the horizons every variant has (96, 192), not 336
    assert rows["avg of 96, 192"] == (
        "| **ETTh1** | avg of 96, 192 | 0.4500 | **0.4300** | **0.4050** | 0.4500 | 0.4150 | 0.4500 | – |  |"
    )
    transfer = {
        "ETTh1->ETTm1|96|0": {**_cell("ETTh1", 96, "pruned_finetune", 0, 0.33, 0.36), "target": "ETTm1"}
    }
    cells["ETTm1|96|zero_shot|0"] = _cell("ETTm1", 96, "zero_shot", 0, 0.34, 0.35)
    line = grid.transfer_table({**results, "transfer": transfer})[2]
    assert line == "| ETTh1 → ETTm1 | 96 | 0.3400 | **0.3500** | **0.3300** | 0.3600 | – | 1 |"


def test_tried_variant_keeps_the_rolled_out_head_and_has_its_own_table(config):
    """Past the native horizon the default pruned cell grows a head; ``pruned_rollout`` keeps the
    native one (two passes here), is not a column of the grid table, and sits beside the
    default cells of its row in the tried-variants table."""
    long = replace(
        config, horizons=(2 * H,), variants=("zero_shot", "pruned_finetune", "pruned_rollout"), transfers=()
    )
    ran = grid.Grid(long, log=lambda m: None).run()
    assert ran == [f"a|{2 * H}|{v}|0" for v in long.variants]
    cells = json.loads(config.results.read_text())["cells"]
    grown, rolled = cells[f"a|{2 * H}|pruned_finetune|0"], cells[f"a|{2 * H}|pruned_rollout|0"]
    assert grown["finetune"]["grown_head"] and grown["head"]["passes"] == 1
    assert not rolled["finetune"]["grown_head"] and rolled["head"]["passes"] == 2
    # the default cell prunes the one-pass model with its grown head, the tried one the roll-out
    assert rolled["prune"]["macs_before"] == cells[f"a|{2 * H}|zero_shot|0"]["macs"]
    assert grown["prune"]["macs_before"] < rolled["prune"]["macs_before"] and rolled["mse"] != grown["mse"]
    text = config.results.with_suffix(".md").read_text()
    grid_part, tried = text.split("## Variants tried against losing cells")
    assert "rolled-out head" not in grid_part.split("## Timing")[0]
    row = next(line for line in tried.splitlines() if line.startswith("| a |"))
    parts = [x.strip("*") for x in row.strip("| ").split(" | ")]
    zero = cells[f"a|{2 * H}|zero_shot|0"]
    assert parts[:3] == ["a", str(2 * H), "prune + fine-tune, rolled-out head"]
    # the tried cell, then zero-shot, full fine-tune (not run: dashes) and the default pruned cell
    assert parts[3:] == [
        *(f"{c[m]:.4f}" for c in (rolled, zero) for m in ("mse", "mae")),
        "–",
        "–",
        *(f"{grown[m]:.4f}" for m in ("mse", "mae")),
        "1",
    ]


def test_truth_variant_is_the_same_pruning_fine_tuned_without_the_teacher(config):
    """``pruned_truth`` prunes as the default cell does and fine-tunes on the truth alone."""
    both = replace(config, horizons=(H,), variants=("pruned_finetune", "pruned_truth"), transfers=())
    grid.Grid(both, log=lambda m: None).run()
    cells = json.loads(config.results.read_text())["cells"]
    default, truth = cells[f"a|{H}|pruned_finetune|0"], cells[f"a|{H}|pruned_truth|0"]
    assert default["finetune"]["distill"] == DEFAULT_DISTILL and truth["finetune"]["distill"] == 0.0
    same = ("params_after", "macs_after")
    assert [truth["prune"][k] for k in same] == [default["prune"][k] for k in same]
    assert truth["mse"] != default["mse"]
    assert truth["prune"]["budget"] == default["prune"]["budget"] == config.prune.budget
    tried = config.results.with_suffix(".md").read_text().split("## Variants tried against losing cells")[1]
    assert "prune + fine-tune on the truth alone" in tried


def test_full_fine_tuning_control_trains_the_unpruned_model_with_its_own_settings(config):
    """``full_long`` is full fine-tuning for 20 epochs: nothing pruned, more epochs than the full cell;
    before it has a cell of its own its time is estimated from full fine-tuning's."""
    runner = grid.Grid(
        replace(config, horizons=(H,), variants=("full_finetune",), transfers=()), log=lambda m: None
    )
    runner.run()
    full = json.loads(config.results.read_text())["cells"][f"a|{H}|full_finetune|0"]
    assert runner.estimate(grid.Task("a", H, "full_long", 0)) == full["seconds"]
    grid.Grid(replace(config, horizons=(H,), variants=("full_long",), transfers=()), log=lambda m: None).run()
    control = json.loads(config.results.read_text())["cells"][f"a|{H}|full_long|0"]
    assert "prune" not in control and (control["params"], control["macs"]) == (full["params"], full["macs"])
    assert len(full["finetune"]["epochs"]) == 1 < len(control["finetune"]["epochs"])
    assert control["finetune"]["distill"] == full["finetune"]["distill"]
    with pytest.raises(ValueError, match="prunes nothing"):
        grid.Tried("x", "y", prune={"budget": 0.5}, pruned=False)


def test_full_finetune_variants_distil_from_or_prune_the_cell_s_fully_fine_tuned_model(config):
    """``pruned_ft_teacher`` prunes as the default cell does and distils from the model the
    ``full_finetune`` cell trains; ``pruned_from_ft`` prunes that model itself. Both share one
    fine-tuning of it, cached beside the pruned models."""
    variants = ("full_finetune", "pruned_finetune", "pruned_ft_teacher", "pruned_from_ft")
    grid.Grid(replace(config, horizons=(H,), variants=variants, transfers=()), log=lambda m: None).run()
    cells = json.loads(config.results.read_text())["cells"]
    full, default, teacher, from_ft = (cells[f"a|{H}|{v}|0"] for v in variants)
    assert teacher["full_finetune_mse"] == from_ft["full_finetune_mse"] == pytest.approx(full["mse"])
    same = ("params_after", "macs_after", "val_loss_before", "val_loss_after")
    assert [teacher["prune"][k] for k in same] == [default["prune"][k] for k in same]
    assert teacher["mse"] != default["mse"]
    # pruning starts from the fine-tuned weights: the loss it starts at is full fine-tuning's best
    assert from_ft["prune"]["val_loss_before"] == pytest.approx(full["finetune"]["best_val_loss"])
    assert from_ft["prune"]["val_loss_before"] != default["prune"]["val_loss_before"]
    assert (config.work_dir / f"a-h{H}-s0-full").is_dir()
    tried = config.results.with_suffix(".md").read_text().split("## Variants tried against losing cells")[1]
    assert "fine-tune, prune, fine-tune" in tried and "distilling from full fine-tuning" in tried


def test_tried_table_compares_on_the_tried_variant_s_own_seeds():
    """A tried variant run on seed 0 only is set against the default cells of seed 0, not against
    their mean over seeds 0-2 (zero-shot has one cell and is always shown)."""
    cells = {
        "w|96|zero_shot|0": _cell("w", 96, "zero_shot", 0, 0.150, 0.20),
        "w|96|pruned_long|0": _cell("w", 96, "pruned_long", 0, 0.152, 0.21),
    }
    for seed, (ft, pruned) in enumerate([(0.140, 0.151), (0.150, 0.160), (0.160, 0.170)]):
        cells[f"w|96|full_finetune|{seed}"] = _cell("w", 96, "full_finetune", seed, ft, 0.19)
        cells[f"w|96|pruned_finetune|{seed}"] = _cell("w", 96, "pruned_finetune", seed, pruned, 0.22)
    row = grid.extra_table({"cells": cells, "transfer": {}})[2]
    assert row == (
        "| w | 96 | prune + fine-tune, 20 epochs | 0.1520 | 0.2100 | 0.1500 | 0.2000 | **0.1400** | **0.1900** "
        "| 0.1510 | 0.2200 | 1 |"
    )


def test_budget_sweep_sets_each_budget_s_seed_0_cell_against_full_fine_tuning(tmp_path):
    """The budget plot's points: one per budget-only variant with a seed-0 cell (the default cell at
    the file's budget), sorted by budget, with the MACs each cut; a variant that changes anything
    but the budget is not a point; rows with one budget get no panel."""
    cells = {
        "w|96|zero_shot|0": _cell("w", 96, "zero_shot", 0, 0.150, 0.20),
        "w|96|full_finetune|0": _cell("w", 96, "full_finetune", 0, 0.140, 0.19),
        "w|96|full_finetune|1": _cell("w", 96, "full_finetune", 1, 0.100, 0.19),
        "w|96|pruned_finetune|1": _cell("w", 96, "pruned_finetune", 1, 0.100, 0.19),
        "v|96|pruned_finetune|0": _cell("v", 96, "pruned_finetune", 0, 0.3, 0.3),
    }
    for variant, mse, macs in (
        ("pruned_finetune", 0.16, 10),
        ("pruned_budget050", 0.145, 40),
        ("pruned_long", 0.1, 10),
        ("pruned_budget050_long", 0.1, 40),  # changes the fine-tuning too: not a point
    ):
        cells[f"w|96|{variant}|0"] = {
            **_cell("w", 96, variant, 0, mse, 0.2),
            "macs": macs,
            "prune": {"macs_before": 100},
        }
    cells["v|96|pruned_finetune|0"]["prune"] = {"macs_before": 100}
    results = {"settings": {"prune": {"budget": 0.18}}, "cells": cells, "transfer": {}}
    assert grid.budget_sweeps(results) == {
        ("w", 96): {
            "points": [(0.18, 0.16, 10.0), (0.5, 0.145, 2.5)],
            "zero_shot": 0.150,
            "full_finetune": 0.140,
        }
    }
    grid.plot_budgets(grid.budget_sweeps(results), tmp_path / "budgets.png")
    assert (tmp_path / "budgets.png").stat().st_size > 0


def test_budget_variant_prunes_less_and_records_its_budget(config):
    """``pruned_budget035`` changes the prune config alone: a budget of 0.35 keeps more than 0.18."""
    prune = replace(config.prune, budget=0.18, max_steps=PruneConfig().max_steps)  # steps to reach 0.18
    both = replace(
        config, horizons=(H,), variants=("pruned_finetune", "pruned_budget035"), transfers=(), prune=prune
    )
    grid.Grid(both, log=lambda m: None).run()
    cells = json.loads(config.results.read_text())["cells"]
    default, wider = cells[f"a|{H}|pruned_finetune|0"], cells[f"a|{H}|pruned_budget035|0"]
    assert (default["prune"]["budget"], wider["prune"]["budget"]) == (0.18, 0.35)
    assert wider["prune"]["macs_after"] > default["prune"]["macs_after"]
    assert wider["finetune"]["distill"] == default["finetune"]["distill"]


def test_a_grown_head_setting_drops_only_the_cells_that_grew_a_head(config):
    """A file made before a setting that acts only on grown heads keeps its other cells: only the
    cell that grew a head (past the native horizon) and the transfer of its model rerun."""
    both = replace(config, horizons=(H, 2 * H), variants=("zero_shot", "pruned_finetune"))
    grid.Grid(both, log=lambda m: None).run()
    before = json.loads(config.results.read_text())
    grown = f"a|{2 * H}|pruned_finetune|0"
    assert before["cells"][grown]["finetune"]["grown_head"]
    changed = replace(both, finetune=replace(both.finetune, head_fit_windows=0))
    # the dropped cell's model is still in the cache, but it is not that cell's any more: no transfer
    assert grid.model_dir(config, "a", 2 * H, 0).is_dir()
    assert grid.Grid(replace(changed, variants=("zero_shot",)), log=lambda m: None).run() == []
    assert grid.Grid(changed, log=lambda m: None).run() == [grown, f"a->b|{2 * H}|0"]
    after = json.loads(config.results.read_text())
    kept = set(before["cells"]) - {grown}
    assert {k: after["cells"][k] for k in kept} == {k: before["cells"][k] for k in kept}
    assert after["transfer"][f"a->b|{H}|0"] == before["transfer"][f"a->b|{H}|0"]
    assert after["settings"]["finetune"]["head_fit_windows"] == 0 and "grew a head" in after["notes"][-1]
    with pytest.raises(SystemExit, match="other settings"):
        grid.Grid(replace(changed, finetune=replace(changed.finetune, head_fit_windows=8, epochs=2)))


def test_a_file_made_before_a_setting_resumes_when_it_is_at_the_old_behaviour(config):
    """A results file without a setting added since (recovery training while pruning) resumes as
    long as the run keeps that setting where the old code was (none); set otherwise, it is refused."""
    grid.Grid(replace(config, variants=("zero_shot",)), log=lambda m: None).run()
    old = json.loads(config.results.read_text())
    for key in grid.ADDED_SETTINGS["prune"]:
        del old["settings"]["prune"][key]
    config.results.write_text(json.dumps(old))
    ran = grid.Grid(config, log=lambda m: None).run()
    assert ran == ["a|16|full_finetune|0", "a|16|pruned_finetune|0", "a->b|16|0"]  # zero-shot kept
    assert json.loads(config.results.read_text())["settings"]["prune"]["recovery_windows"] == 0
    with pytest.raises(SystemExit, match="other settings"):
        grid.Grid(replace(config, prune=replace(config.prune, recovery_windows=64)))
