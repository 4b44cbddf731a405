"""``prunecast forecast --engine ray`` on a local 2-CPU Ray cluster: the local engine's output and errors."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from prunecast.cli import main
from prunecast.data import DataError
from prunecast.data.panel import PanelConfig
from prunecast.data.tables import read_table
from prunecast.runtime import Forecaster
from prunecast.runtime.frame import ForecastOptions, forecast_file
from tests.forecast_data import ragged_panel, requires_data

ray = pytest.importorskip("ray")

from prunecast.runtime.ray_engine import RayConfig, forecast_file_ray  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def cluster():
    """One local Ray cluster for the module (start-up takes seconds); the engine reuses it: one actor,
    and one CPU for Ray Data's read and shuffle tasks."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def fc(small_artifact):
    return Forecaster.load(small_artifact, threads=1)


def _gappy_panel() -> pd.DataFrame:
    """The ragged real-data panel (8 series, 4 frequencies, rows shuffled) with 3 rows dropped and 2 NaN."""
    panel = ragged_panel()
    first = panel.index[panel["unique_id"] == "ETTm1/OT"]
    panel = panel.drop(index=first[[5, 40, 41]])
    panel.loc[panel.index[panel["unique_id"] == "ili/OT"][[3, 10]], "y"] = np.nan
    return panel.reset_index(drop=True)


def _both(fc, small_artifact, data, tmp_path, suffix, config: PanelConfig):
    options = ForecastOptions()
    local = forecast_file(fc, data, tmp_path / f"local{suffix}", config, options, per_series_fill=True)
    out = tmp_path / f"ray{suffix}"
    remote = forecast_file_ray(small_artifact, data, out, config, options, RayConfig(), per_series_fill=True)
    return local, remote


@requires_data
@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_ray_output_equals_the_local_engine(fc, small_artifact, tmp_path, suffix):
    data = tmp_path / f"panel{suffix}"
    panel = _gappy_panel()
    panel.to_csv(data, index=False) if suffix == ".csv" else panel.to_parquet(data)
    config = PanelConfig(fill="interpolate")
    local, remote = _both(fc, small_artifact, data, tmp_path, suffix, config)
    want, got = read_table(tmp_path / f"local{suffix}"), read_table(tmp_path / f"ray{suffix}")
    assert len(want) == 8 * 16 and want["unique_id"].nunique() == 8
    pd.testing.assert_frame_equal(got, want)
    for key in ("series", "rows_read", "rows_written", "horizon", "values_filled", "filled_per_series"):
        assert remote[key] == local[key], key
    assert remote["values_filled"] == 5 and remote["engine"] == "ray" and remote["workers"] == 1


def test_bad_series_fails_with_the_local_message_and_writes_nothing(fc, small_artifact, tmp_path):
    rng = np.random.default_rng(0)
    parts = [
        pd.DataFrame(
            {"id": k, "timestamp": pd.date_range("2021-01-01", periods=90, freq="h"), "value": rng.random(90)}
        )
        for k in range(6)
    ]
    panel = pd.concat(parts, ignore_index=True)
    panel.loc[panel.index[panel["id"] == 4][30], "timestamp"] = pd.Timestamp("2021-01-01 07:00")
    data = tmp_path / "dup.parquet"
    panel.to_parquet(data)
    with pytest.raises(DataError) as local:
        forecast_file(fc, data, tmp_path / "local.csv")
    with pytest.raises(DataError) as remote:
        forecast_file_ray(small_artifact, data, tmp_path / "ray.csv")
    assert str(local.value) == f"{data}: series 4: duplicate timestamp 2021-01-01 07:00:00"
    assert str(remote.value) == str(local.value)
    assert remote.value.__cause__ is None and "ray" not in str(remote.value).lower()
    assert not (tmp_path / "ray.csv").exists()


def test_cli_in_a_fresh_process_starts_its_own_cluster_and_prints_only_the_message(small_artifact, tmp_path):
    """Beside the module's cluster: the command starts (and stops) its own, and the user reads one line."""
    panel = pd.DataFrame(
        {"id": "a", "timestamp": pd.date_range("2021-01-01", periods=80, freq="h"), "value": np.arange(80.0)}
    )
    panel.loc[50, "value"] = np.nan
    data = tmp_path / "gap.csv"
    panel.to_csv(data, index=False)
    cmd = [sys.executable, "-m", "prunecast", "forecast", str(small_artifact), "--data", str(data)]
    cmd += ["--out", str(tmp_path / "out.csv"), "--engine", "ray", "--num-workers", "1"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        f"prunecast forecast: error: {data}: series 'a': missing value at 2021-01-03 02:00:00 (its value is "
        "missing (NaN)); 1 value(s) missing in 1 series; choose a fill policy (ffill, interpolate, zero, "
        "or none for a model that takes NaN)"
    )
    assert not (tmp_path / "out.csv").exists()


def test_wide_table_is_refused_with_a_pointer_to_local(small_artifact, tmp_path):
    wide = pd.DataFrame({"date": pd.date_range("2022-01-01", periods=70, freq="h"), "a": 1.0, "b": 2.0})
    data = tmp_path / "wide.csv"
    wide.to_csv(data, index=False)
    with pytest.raises(DataError, match=r"wide table .* use --engine local, or melt it"):
        forecast_file_ray(small_artifact, data, tmp_path / "out.csv")


@requires_data
def test_cli_engine_ray_reads_a_directory_and_writes_a_parquet_directory(
    fc, small_artifact, tmp_path, capsys
):
    panel = ragged_panel(shuffle=False)
    whole = tmp_path / "panel.csv"
    panel.to_csv(whole, index=False)
    parts = tmp_path / "parts"
    parts.mkdir()
    for k, (_, rows) in enumerate(panel.groupby("unique_id", sort=False)):
        rows.to_csv(parts / f"part-{k}.csv", index=False)  # a series per file, in panel order
    out = tmp_path / "ray.csv"
    args = ["forecast", str(small_artifact), "--data", str(parts), "--engine", "ray", "--num-workers", "2"]
    assert main([*args, "--out", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["engine"] == "ray" and summary["series"] == 8 and summary["series_per_s"] > 0
    forecast_file(fc, whole, tmp_path / "local.csv")
    want = read_table(tmp_path / "local.csv")
    pd.testing.assert_frame_equal(read_table(out), want)
    assert main([*args, "--out", str(tmp_path / "forecasts")]) == 0
    assert "engine: ray, up to 1 workers" in capsys.readouterr().out  # 2 CPUs: one kept for the tasks
    got = pd.read_parquet(tmp_path / "forecasts")
    forecast_file(fc, whole, tmp_path / "local.parquet")
    want = read_table(tmp_path / "local.parquet")
    key = ["unique_id", "ds"]
    pd.testing.assert_frame_equal(
        got.sort_values(key).reset_index(drop=True), want.sort_values(key).reset_index(drop=True)
    )


def test_cli_options_of_ray_need_the_ray_engine(small_artifact, tmp_path, capsys):
    args = ["forecast", str(small_artifact), "--data", "x.csv", "--out", "y.csv", "--num-workers", "2"]
    assert main(args) == 2
    assert "--address and --num-workers are options of --engine ray" in capsys.readouterr().err


def test_cli_start_up_imports_neither_ray_nor_torch():
    code = (
        "import sys\n"
        "from prunecast.cli import build_parser\n"
        "build_parser().parse_args(['forecast', 'm', '--data', 'd.csv', '--out', 'o.csv', '--engine', 'ray'])\n"
        "import prunecast.runtime.ray_engine\n"
        "assert 'ray' not in sys.modules, 'ray was imported'\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
