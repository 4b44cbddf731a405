"""Which artifact ``prunecast run`` ships: the fastest at the serving batch of those that keep accuracy.

The candidates are the pruned model's artifacts: FP32 (ONNX, exported with parity) on every
backend the run timed, and INT8 on onnxruntime when its accuracy guard accepted it (validation
MSE within ``--int8-tolerance`` of FP32's; a rejected INT8 is never a candidate). All were timed
in the run's one ``bench`` call beside the original in PyTorch eager, so the choice and its
speedups are ratios taken side by side. The shipped artifact's test accuracy is measured again
through the runtime, as a service would run it, not taken from the PyTorch module.
"""

from __future__ import annotations

from pathlib import Path

from prunecast.data.windows import Windows
from prunecast.evaluate.metrics import evaluate_predict


def choose(rows: list[dict], candidates: dict[str, str], batch: int) -> dict:
    """The row of ``candidates`` (bench model name -> artifact path) with the lowest p50 at
    ``batch`` (the largest timed batch when ``batch`` was not timed)."""
    timed = [r for r in rows if r["model"] in candidates]
    if not timed:
        raise ValueError(f"no latency rows for the deploy candidates {sorted(candidates)}")
    batches = {r["batch"] for r in timed}
    at = batch if batch in batches else max(batches)
    return min((r for r in timed if r["batch"] == at), key=lambda r: r["p50_ms"])


def runtime_accuracy(
    artifact: Path, backend: str, windows: Windows, limit: int | None, threads: int, batch: int = 256
) -> dict:
    """Test MSE and MAE of ``artifact`` served by ``backend`` over the first ``limit`` windows."""
    from prunecast.runtime import Forecaster

    fc = Forecaster.load(
        artifact, backend=backend, device="cuda" if backend == "tensorrt" else "cpu", threads=threads
    )
    metrics = evaluate_predict(fc.predict_batch, windows, batch, limit, show_progress=False)
    return {"test_mse": metrics.mse, "test_mae": metrics.mae, "windows": metrics.windows}


def deploy_block(
    timing: dict,
    candidates: dict[str, str],
    precisions: dict[str, str],
    batch: int,
    out: Path,
    windows: Windows,
    limit: int | None,
    rejected: dict[str, str],
) -> dict:
    """The report's ``deploy`` block: the chosen artifact, its precision and backend, its test
    accuracy through the runtime, and its speedups over the original in PyTorch eager."""
    row = choose(timing["rows"], candidates, batch)
    key = f"{row['model']}/{row['backend']}"
    accuracy = runtime_accuracy(
        out / candidates[row["model"]], row["backend"], windows, limit, timing["config"]["threads"]
    )
    return {
        "artifact": candidates[row["model"]],
        "precision": precisions[row["model"]],
        "backend": row["backend"],
        "batch": row["batch"],
        "p50_ms": row["p50_ms"],
        **accuracy,
        "speedup": timing["speedups"]["p50_ratio"][key],
        "baseline": timing["speedups"]["baseline"],
        "candidates": [
            {"artifact": candidates[r["model"]], "precision": precisions[r["model"]], **_timed(r)}
            for r in timing["rows"]
            if r["model"] in candidates and r["batch"] == row["batch"]
        ],
        "rejected": rejected,
    }


def deploy_line(deploy: dict) -> str:
    """One sentence for the top of report.md."""
    speed = ", ".join(f"{ratio:.1f}x at batch {b}" for b, ratio in deploy["speedup"].items())
    return (
        f"**Ship `{deploy['artifact']}`** ({deploy['precision'].upper()}, {deploy['backend']}): test MSE "
        f"{deploy['test_mse']:.4f} through the runtime; faster than the original in PyTorch eager by {speed}."
    )


def _timed(row: dict) -> dict:
    return {"backend": row["backend"], "p50_ms": row["p50_ms"]}
