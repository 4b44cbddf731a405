"""``prunecast run`` end to end on a small budget, and ``prunecast bench``."""

import json

import numpy as np
import pytest

from prunecast.bench import BenchConfig
from prunecast.bench.timing import TimingConfig
from prunecast.cli import main
from prunecast.compress import FinetuneConfig, PruneConfig, load_model
from prunecast.data import prepare_windows
from prunecast.evaluate import evaluate
from prunecast.pipeline import RunConfig, run

from .conftest import TTM_ID, requires_ttm

QUICK_TIMING = TimingConfig(warmup=1, rounds=1, round_seconds=0.05, min_iters_per_round=2)
LATENCY_KEYS = {
    "model",
    "backend",
    "batch",
    "threads",
    "p50_ms",
    "p95_ms",
    "p99_ms",
    "series_per_s",
    "parity_max_abs_err",
}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    config = RunConfig(
        out=out,
        model=TTM_ID,
        prune=PruneConfig(budget=0.8, macro_batch=128, micro_batch=64, val_windows=256, max_steps=2),
        finetune=FinetuneConfig(lr=1e-4, epochs=1, windows_per_epoch=256, val_windows=256),
        compare_full_finetune=True,
        test_limit=200,
        bench=BenchConfig(batch_sizes=(1, 4), timing=QUICK_TIMING),
    )
    return out, run(config, log=lambda _msg: None)


@requires_ttm
def test_run_writes_every_file_with_the_documented_keys(quick_run):
    out, report = quick_run
    for name in ("report.json", "report.md", "forecasts.png", "accuracy_vs_cost.png", "kept_width.png"):
        assert (out / name).is_file(), name
    for name in ("forecasts.png", "accuracy_vs_cost.png", "kept_width.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    on_disk = json.loads((out / "report.json").read_text())
    for variant in ("zero_shot", "full_finetune", "pruned_finetune"):
        assert {"mse", "mae", "params", "macs"} <= set(on_disk[variant])
    assert on_disk["pruned_finetune"]["macs"] < on_disk["zero_shot"]["macs"]
    rows = on_disk["latency"]
    int8 = on_disk["export"]["pruned_int8"]["int8"]
    assert {(r["model"], r["backend"], r["batch"]) for r in rows} == {
        (m, b, n) for m in ("original", "pruned") for b in ("torch", "onnxruntime") for n in (1, 4)
    } | ({("pruned_int8", "onnxruntime", n) for n in (1, 4)} if int8["accepted"] else set())
    assert (out / "artifacts/pruned_int8").is_dir() == int8["accepted"]  # a rejected INT8 leaves no artifact
    for row in rows:
        assert LATENCY_KEYS <= set(row) and row["p50_ms"] > 0 and row["series_per_s"] > 0
        if row["model"] == "pruned_int8":  # no PyTorch row to compare with: its guard is in the export
            assert row["parity_max_abs_err"] is None
        else:
            assert row["parity_max_abs_err"] < 1e-4
    for name in ("original", "pruned"):
        assert on_disk["export"][name]["parity"]["max_abs_err"] < 1e-4
        assert (out / on_disk["export"][name]["artifact"] / "model.onnx").is_file()
    md = (out / "report.md").read_text()
    assert "| pruned + fine-tune |" in md and "![forecasts](forecasts.png)" in md
    assert on_disk["pruned_finetune"]["finetune"]["config"]["distill"] == 0.5
    assert "0.5 x the original model's forecast (distillation)" in md
    gone = on_disk["pruned_finetune"]["prune"]["blocks_removed"]  # depth pruning, in the md when any
    assert (f"Depth pruning removed {len(gone)} whole blocks" in md) == bool(gone)


@requires_ttm
def test_run_ships_the_fastest_candidate_at_the_serving_batch(quick_run):
    out, report = quick_run
    deploy = report["deploy"]
    assert deploy["batch"] == 4  # the serving batch (256) was not timed: the largest that was
    at_batch = [r for r in report["latency"] if r["batch"] == 4 and r["model"] != "original"]
    fastest = min(at_batch, key=lambda r: r["p50_ms"])
    assert (deploy["backend"], deploy["p50_ms"]) == (fastest["backend"], fastest["p50_ms"])
    assert deploy["artifact"] == f"artifacts/{fastest['model']}"
    assert deploy["precision"] == ("int8" if fastest["model"] == "pruned_int8" else "fp32")
    assert deploy["speedup"] == report["speedups"]["p50_ratio"][f"{fastest['model']}/{fastest['backend']}"]
    assert set(deploy["speedup"]) == {"1", "4"} and deploy["baseline"] == "original/torch"
    assert len(deploy["candidates"]) == len(at_batch)
    # test accuracy through the runtime: the FP32 graph matches the PyTorch module's figure
    assert deploy["windows"] == 200
    rtol = 1e-4 if deploy["precision"] == "fp32" else 0.05
    np.testing.assert_allclose(deploy["test_mse"], report["pruned_finetune"]["mse"], rtol=rtol)
    md = (out / "report.md").read_text().splitlines()
    assert md[4].startswith(
        f"**Ship `{deploy['artifact']}`** ({deploy['precision'].upper()}, {deploy['backend']})"
    )


@requires_ttm
def test_report_matches_a_direct_evaluation_of_the_saved_model(quick_run):
    out, report = quick_run
    saved = load_model(str(out / report["pruned_finetune"]["model_dir"]))
    test = prepare_windows("ETTh1", saved.context_length, saved.horizon).test
    metrics = evaluate(saved, test, limit=200)
    assert metrics.windows == report["pruned_finetune"]["windows"] == 200
    np.testing.assert_allclose(metrics.mse, report["pruned_finetune"]["mse"], rtol=1e-6)
    np.testing.assert_allclose(metrics.mae, report["pruned_finetune"]["mae"], rtol=1e-6)


@requires_ttm
def test_bench_command_times_named_artifacts_side_by_side(quick_run, tmp_path, capsys):
    out, _ = quick_run
    result_file = tmp_path / "bench.json"
    code = main(
        [
            "bench",
            f"orig={out / 'artifacts/original'}",
            f"small={out / 'artifacts/pruned'}",
            "--backends",
            "onnxruntime",
            "--batches",
            "2",
            "--out",
            str(result_file),
        ]
    )
    assert code == 0
    result = json.loads(result_file.read_text())
    assert [(r["model"], r["batch"]) for r in result["rows"]] == [("orig", 2), ("small", 2)]
    assert result["speedups"]["baseline"] == "orig/onnxruntime"
    assert set(result["speedups"]["p50_ratio"]["small/onnxruntime"]) == {"2"}  # JSON keys
    assert result["machine"]["cpu_count"] >= 1
    assert "small/onnxruntime" in capsys.readouterr().out


def test_bench_rejects_a_duplicate_model_name(capsys):
    assert main(["bench", "a=x", "a=y"]) == 2
    assert "model name 'a' given twice" in capsys.readouterr().err
