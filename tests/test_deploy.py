"""Choosing the artifact ``prunecast run`` ships, and which backends time an artifact at its precision."""

import json

import pytest

from prunecast.bench.runner import runs_precision
from prunecast.pipeline.deploy import choose, deploy_line


def _row(model: str, backend: str, batch: int, p50: float) -> dict:
    return {"model": model, "backend": backend, "batch": batch, "p50_ms": p50}


ROWS = [
    _row("original", "torch", 1, 5.0),
    _row("original", "torch", 256, 80.0),
    _row("pruned", "torch", 256, 30.0),
    _row("pruned", "onnxruntime", 1, 0.4),
    _row("pruned", "onnxruntime", 256, 7.0),
    _row("pruned_int8", "onnxruntime", 1, 0.5),
    _row("pruned_int8", "onnxruntime", 256, 5.5),
]


def test_choose_takes_the_fastest_candidate_at_the_serving_batch():
    both = {"pruned": "artifacts/pruned", "pruned_int8": "artifacts/pruned_int8"}
    assert choose(ROWS, both, 256) == ROWS[6]
    assert choose(ROWS, both, 1) == ROWS[3]  # at batch 1 FP32 is faster
    assert choose(ROWS, {"pruned": "artifacts/pruned"}, 256) == ROWS[4]  # the original is never shipped
    assert choose(ROWS, both, 64) == ROWS[6]  # an untimed batch: the largest timed one
    with pytest.raises(ValueError, match="no latency rows for the deploy candidates"):
        choose(ROWS, {"other": "x"}, 256)


def test_deploy_line_names_artifact_precision_backend_and_speedups():
    line = deploy_line(
        {
            "artifact": "artifacts/pruned_int8",
            "precision": "int8",
            "backend": "onnxruntime",
            "test_mse": 0.35912,
            "speedup": {"1": 21.04, "256": 12.51},
        }
    )
    assert line.startswith("**Ship `artifacts/pruned_int8`** (INT8, onnxruntime): test MSE 0.3591")
    assert "21.0x at batch 1, 12.5x at batch 256" in line


@pytest.mark.parametrize(
    "precision,expected", [("fp32", ("torch", "onnxruntime")), ("int8", ("onnxruntime",))]
)
def test_pytorch_times_fp32_artifacts_only(tmp_path, precision, expected):
    (tmp_path / "manifest.json").write_text(json.dumps({"precision": precision}))
    assert runs_precision(tmp_path, ("torch", "onnxruntime")) == expected
    if precision != "fp32":
        with pytest.raises(ValueError, match="none of the backends"):
            runs_precision(tmp_path, ("torch",))
