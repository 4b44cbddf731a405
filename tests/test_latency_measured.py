"""``--target latency``: the block table, the latency model's fit, pruning to measured seconds
with checks, and width rounding."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from prunecast.bench.blocks import BlockTable, BlockTiming, _corners, row_grid, width_grid
from prunecast.bench.latency_model import LatencySettings, _nonnegative_fit, serving_parts
from prunecast.compress import PruneConfig, prune, save_model
from prunecast.compress.cost import linear_shapes
from prunecast.compress.prune import CHECK_SLACK
from prunecast.compress.rounding import ROUNDED_KINDS
from tests.conftest import write_csv


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    from prunecast.data import prepare_windows

    path = write_csv(tmp_path_factory.mktemp("data") / "series.csv", rows=1200, columns=2)
    return prepare_windows(path, context_length=64, horizon=16)


FAST = BlockTiming(warmup=1, rounds=1, min_calls=3, min_seconds=0.0)


def test_grid_points_and_interpolation_weights():
    assert [row_grid(v) for v in (3, 5, 6, 7, 100, 128)] == [
        (3, 3),
        (4, 6),
        (6, 6),
        (6, 8),
        (96, 128),
        (128, 128),
    ]
    assert [width_grid(v) for v in (2, 8, 9, 39)] == [(2, 2), (8, 8), (8, 12), (36, 40)]
    on_grid = _corners((96, 40, 16))
    assert on_grid == [((96, 40, 16), 1.0)]  # rounding's candidates are priced exactly
    between = dict(_corners((100, 39, 16)))
    assert set(between) == {(96, 36, 16), (96, 40, 16), (128, 36, 16), (128, 40, 16)}
    assert math.isclose(sum(between.values()), 1.0)
    assert math.isclose(between[(96, 40, 16)], (1 - 4 / 32) * 0.75)


def test_block_table_measures_once_and_reads_the_cache(tmp_path):
    shapes = [(64, 12, 8), (100, 39, 16)]
    first = BlockTable("torch", threads=1, cache_dir=tmp_path, timing=FAST)
    figures = first.seconds(shapes)
    assert first.measured == 5 and first.path.is_file()  # (64,12,8) and the 4 corners of the other
    assert all(f >= 0 for f in figures)
    stored = json.loads(first.path.read_text())
    assert stored["backend"] == "torch" and stored["threads"] == 1 and len(stored["entries"]) == 5
    again = BlockTable("torch", threads=1, cache_dir=tmp_path, timing=FAST)
    assert again.seconds(shapes) == figures and again.measured == 0
    other_threads = BlockTable("torch", threads=2, cache_dir=tmp_path, timing=FAST)
    assert other_threads.path != first.path and not other_threads.entries


def test_block_table_refuses_unknown_backends_and_tensorrt_without_a_gpu(tmp_path):
    with pytest.raises(ValueError, match="latency backend must be one of"):
        BlockTable("tflite", cache_dir=tmp_path)
    import onnxruntime as ort

    if "TensorrtExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(RuntimeError, match="needs onnxruntime-gpu with TensorRT"):
            BlockTable("tensorrt", cache_dir=tmp_path)


def test_nonnegative_fit_recovers_a_line_and_never_goes_below_zero():
    x = np.array([0.5, 1.0, 2.0, 4.0])
    w = np.ones_like(x)
    assert np.allclose(_nonnegative_fit(x, 0.3 + 2 * x, w), (0.3, 2.0))
    fixed, slope = _nonnegative_fit(x, -1 + 2 * x, w)  # a negative intercept is not admissible
    assert fixed == 0 and slope > 0
    fixed, slope = _nonnegative_fit(x, 5 - x, w)  # nor a negative slope
    assert slope == 0 and fixed > 0


def test_nonnegative_fit_separates_per_layer_work_only_when_the_layer_count_moves():
    elements = np.array([4.0, 2.0, 1.0, 3.0])
    layers = np.array([60.0, 60.0, 60.0, 30.0])  # the last probe has half the layers (fewer blocks)
    w = np.ones(4)
    y = 0.2 + 1.5 * elements + 0.03 * layers
    assert np.allclose(_nonnegative_fit(np.stack([elements, layers], axis=1), y, w), (0.2, 1.5, 0.03))
    # the same layer count everywhere: its term cannot be told from the fixed one and stays 0
    same = np.stack([elements[:3], layers[:3]], axis=1)
    fixed, per_element, per_layer = _nonnegative_fit(same, y[:3], w[:3])
    assert per_layer == 0 and np.isclose(fixed, 0.2 + 0.03 * 60) and np.isclose(per_element, 1.5)


def test_serving_parts_follow_the_runtime_batch_split():
    assert serving_parts(LatencySettings(batch=256, threads=2)) == (128, 1)
    assert serving_parts(LatencySettings(batch=1, threads=2)) == (1, 1)  # too small to split: one thread
    assert serving_parts(LatencySettings(batch=8, threads=1)) == (8, 1)
    assert serving_parts(LatencySettings(backend="torch", batch=256, threads=2)) == (256, 2)


class SimdLatency:
    """A latency model whose Linears run in steps of 8 channels: a width of 39 costs what 40
    costs. Measuring says ``measured_factor`` times the prediction, and the model learns it."""

    def __init__(self, batch_size: int = 4, measured_factor: float = 1.0):
        self.batch_size, self.measured_factor, self.scale = batch_size, measured_factor, 1.0
        self.calibrated: list[float] = []

    def seconds(self, shapes) -> float:
        work = sum(r * 8 * math.ceil(i / 8) * 8 * math.ceil(o / 8) for r, i, o in shapes.values())
        return self.scale * (1e-4 + 1e-9 * work)

    def calibrate(self, module) -> float:
        measured = self.measured_factor * self.seconds(linear_shapes(module, self.batch_size)) / self.scale
        self.scale = self.measured_factor
        self.calibrated.append(measured)
        return measured


def _prune_config(**kw) -> PruneConfig:
    return PruneConfig(target="latency", macro_batch=32, micro_batch=32, val_windows=64, **kw)


def test_target_latency_needs_a_latency_model(small_ttm, small_data):
    with pytest.raises(ValueError, match="target 'latency' measures on the serving backend"):
        prune(small_ttm, small_data.train, small_data.val, _prune_config())


def test_prune_to_measured_latency_checks_and_rounds_widths(small_ttm, small_data):
    latency = SimdLatency()
    before = latency.seconds(linear_shapes(small_ttm, latency.batch_size))
    report = prune(small_ttm, small_data.train, small_data.val, _prune_config(budget=0.5), latency=latency)
    block = report.latency
    assert block["predicted_ms_before"] == round(before * 1e3, 4) and block["goal_ms"] == round(
        before * 500, 4
    )
    assert block["checks"] and latency.calibrated  # measured on the way, not only at the end
    after = latency.seconds(linear_shapes(small_ttm, latency.batch_size))
    assert block["realised_ms_after"] == pytest.approx(after * 1e3, rel=1e-3)
    assert after <= 0.5 * before * (1 + CHECK_SLACK)
    assert block["realised_over_predicted"] == pytest.approx(1.0, rel=1e-3)
    assert [s.predicted_ms for s in report.steps] == sorted(
        (s.predicted_ms for s in report.steps), reverse=True
    )
    widths = {layer.name: layer.kept for layer in report.layers}
    rounded = {r.name: r for r in report.rounding}
    assert any(r.rounded > r.pruned for r in rounded.values())  # widths moved, not only checked
    present = {g.name for g in small_ttm.pruning_spec().groups}  # not inside a block that went
    assert set(rounded) == {layer.name for layer in report.layers if layer.kind in ROUNDED_KINDS} & present
    for r in rounded.values():
        assert widths[r.name] == r.rounded
        assert r.rounded % 4 == 0 or r.reason.startswith("kept"), r
        assert r.quantum is None or r.rounded % r.quantum == 0
        if r.reason == "up: no slower":
            assert r.rounded > r.pruned and r.predicted_ms_change <= 0
    assert json.dumps(report.to_dict()["rounding"])  # in the saved report


def test_prune_goes_on_when_the_measurement_says_the_prediction_was_low(small_ttm, small_data):
    latency = SimdLatency(measured_factor=1.3)
    before = latency.seconds(linear_shapes(small_ttm, latency.batch_size))
    report = prune(
        small_ttm,
        small_data.train,
        small_data.val,
        _prune_config(budget=0.5, round_widths=False),
        latency=latency,
    )
    first = report.latency["checks"][0]
    assert first["measured_ms"] == pytest.approx(1.3 * first["predicted_ms"], rel=1e-3)
    # the goal is a fraction of the prediction before any check: it is met as measured in the end
    assert report.latency["realised_ms_after"] <= 0.5 * before * 1e3 * (1 + CHECK_SLACK)
    assert report.rounding == []


def test_cli_prune_measures_latency_by_default(small_ttm, small_data, tmp_path, monkeypatch, capsys):
    from prunecast.cli import main

    monkeypatch.setenv("PRUNECAST_CACHE", str(tmp_path / "cache"))
    save_model(small_ttm, tmp_path / "base")
    args = ["prune", "--model", str(tmp_path / "base"), "--data", str(small_data.benchmark.path)]
    args += ["--horizon", "16", "-o", str(tmp_path / "p"), "--macro-batch", "32", "--max-steps", "4"]
    assert main([*args, "--latency-batch", "8", "--threads", "1", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    block = report["latency"]
    assert report["config"]["target"] == "latency" and report["config"]["budget"] == 0.2
    assert block["model"]["settings"]["backend"] == "onnxruntime" and block["model"]["block_batch"] == 8
    assert block["realised_ms_after"] > 0 and block["predicted_ms_after"] > 0
    assert block["predicted_ms_after"] < block["predicted_ms_before"]
    assert [p["label"] for p in block["model"]["calibration"]["probes"]][:3] == ["full", "half", "quarter"]
    assert list((tmp_path / "cache" / "latency").glob("onnxruntime-t1-*.json"))  # the table is on disk
    import onnxruntime as ort

    if "TensorrtExecutionProvider" not in ort.get_available_providers():
        assert main([*args, "-o", str(tmp_path / "t"), "--latency-backend", "tensorrt"]) == 2
        assert "latency backend tensorrt needs onnxruntime-gpu" in capsys.readouterr().err
        assert not (tmp_path / "t").exists()


def test_per_unit_shape_changes_are_the_same_at_any_width(small_ttm):
    # prune probes each group's per-unit change once and reuses it at every step: that holds only
    # if removing units elsewhere leaves it unchanged
    from prunecast.compress.groups import remove_units
    from prunecast.compress.measured import unit_deltas
    from prunecast.compress.prune import _groups

    kinds = PruneConfig().kinds
    groups = _groups(small_ttm, kinds)
    floor = {g.name: g.min_units for g in groups}
    before = unit_deltas(small_ttm, groups, floor, 8)
    assert before and all(before.values())
    shapes = linear_shapes(small_ttm, 8)
    for name in [g.name for g in groups]:  # a third of every group's units gone, group by group
        group = {g.name: g for g in _groups(small_ttm, kinds)}[name]
        remove_units(small_ttm, group, list(range(max(0, min(group.units // 3, group.units - 2)))))
    after = unit_deltas(small_ttm, _groups(small_ttm, kinds), floor, 8)
    now = linear_shapes(small_ttm, 8)
    assert all(now[n] != shapes[n] for n in shapes)  # every Linear narrower or fewer rows
    assert set(after) == set(before)
    for name in before:
        assert after[name] == before[name], name  # whole numbers of rows and features per unit
