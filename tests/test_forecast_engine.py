"""``Forecaster.forecast_frame`` and ``prunecast forecast``: a panel in, future-stamped forecasts out."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from prunecast.cli import main
from prunecast.data import DataError
from prunecast.data.tables import read_table
from prunecast.runtime import Forecaster
from tests.conftest import TTM_ID, requires_ttm
from tests.forecast_data import PIECES, expected_tail, ragged_panel, requires_data

L, H = 64, 16  # the small artifact's context and horizon


@pytest.fixture(scope="module")
def fc(small_artifact):
    return Forecaster.load(small_artifact, threads=1)


def _panel(lengths=(80, 64, 130), freqs=("h", "15min", "D"), seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    parts = []
    for k, (n, freq) in enumerate(zip(lengths, freqs, strict=True)):
        stamps = pd.date_range(f"2021-0{k + 1}-03", periods=n, freq=freq)
        values = np.sin(np.arange(n) / (3 + k)) * (k + 1) + 0.1 * rng.standard_normal(n) + 5 * k
        parts.append(pd.DataFrame({"item_id": f"s{k}", "timestamp": stamps, "target": values}))
    return pd.concat(parts, ignore_index=True).sample(frac=1.0, random_state=seed)


def _tails(frame: pd.DataFrame, length: int) -> dict[str, np.ndarray]:
    out = {}
    for name, group in frame.sort_values("timestamp").groupby("item_id", sort=False):
        out[name] = group["target"].to_numpy()[-length:]
    return out


def test_forecast_frame_columns_timestamps_and_values(fc):
    panel = _panel()
    out = fc.forecast_frame(panel)
    assert list(out.columns) == ["item_id", "timestamp", "forecast"]
    assert len(out) == 3 * H and out["forecast"].dtype == np.float32
    tails = _tails(panel, L)
    names = list(dict.fromkeys(out["item_id"]))
    want = fc.predict(np.stack([tails[n] for n in names]))
    np.testing.assert_array_equal(out["forecast"].to_numpy().reshape(3, H), want)
    for name, freq in zip(["s0", "s1", "s2"], ["h", "15min", "D"], strict=True):
        last = panel.loc[panel["item_id"] == name, "timestamp"].max()
        stamps = out.loc[out["item_id"] == name, "timestamp"]
        assert list(stamps) == list(pd.date_range(last, periods=H + 1, freq=freq)[1:])


def test_shorter_horizon_truncates_and_longer_is_an_error(fc):
    full = fc.forecast_frame(_panel())
    short = fc.forecast_frame(_panel(), horizon=5)
    assert len(short) == 15
    np.testing.assert_array_equal(
        short["forecast"].to_numpy().reshape(3, 5), full["forecast"].to_numpy().reshape(3, H)[:, :5]
    )
    with pytest.raises(ValueError, match=f"horizon {H + 1} is longer than the artifact's {H}"):
        fc.forecast_frame(_panel(), horizon=H + 1)


def test_short_series_are_an_error_listing_them_unless_pad(fc):
    panel = _panel(lengths=(80, 20, 30))
    with pytest.raises(
        DataError, match=r"2 series are shorter than the model's context length 64: 's1' \(20\), 's2' \(30\)"
    ):
        fc.forecast_frame(panel)
    out = fc.forecast_frame(panel, pad=True)
    tails = _tails(panel, L)
    want = fc.predict([tails["s0"], tails["s1"], tails["s2"]], pad=True)
    np.testing.assert_array_equal(out["forecast"].to_numpy().reshape(3, H), want)


def test_fill_none_is_refused_for_a_model_that_cannot_take_nan(fc):
    with pytest.raises(ValueError, match=r"fill='none' .* ttm artifact cannot take"):
        fc.forecast_frame(_panel(), fill="none")


def test_filled_panel_forecasts_the_filled_values(fc):
    panel = _panel().reset_index(drop=True)
    gappy = panel.drop(index=panel.index[(panel["item_id"] == "s0")][:0]).copy()
    gappy.loc[gappy.index[gappy["item_id"] == "s2"][-3], "target"] = np.nan
    with pytest.raises(DataError, match=r"series 's2': missing value at"):
        fc.forecast_frame(gappy)
    out = fc.forecast_frame(gappy, fill="zero")
    s2 = gappy[gappy["item_id"] == "s2"].sort_values("timestamp")["target"].fillna(0.0).to_numpy()[-L:]
    np.testing.assert_array_equal(
        out.loc[out["item_id"] == "s2", "forecast"].to_numpy(), fc.predict(s2[None])[0]
    )


def test_wide_frame_uses_unique_id_for_the_column_names(fc):
    stamps = pd.date_range("2022-01-01", periods=70, freq="h")
    wide = pd.DataFrame({"date": stamps, "a": np.arange(70.0), "b": np.cos(np.arange(70.0))})
    out = fc.forecast_frame(wide, target_column="b")
    assert list(out.columns) == ["unique_id", "date", "forecast"] and set(out["unique_id"]) == {"b"}
    np.testing.assert_array_equal(out["forecast"].to_numpy(), fc.predict(wide[["b"]].to_numpy().T)[0])


def test_forecast_frame_imports_no_torch(small_artifact):
    code = (
        "import sys, numpy as np, pandas as pd\n"
        "from prunecast.runtime import Forecaster\n"
        f"fc = Forecaster.load({str(small_artifact)!r})\n"
        "df = pd.DataFrame({'unique_id': 'a', 'ds': pd.date_range('2020', periods=70, freq='h'), 'y': 1.0})\n"
        "assert len(fc.forecast_frame(df)) == 16\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


# ---- the command line -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("src", "dst"), [(".csv", ".csv"), (".parquet", ".parquet"), (".csv", ".parquet"), (".pq", ".csv")]
)
def test_cli_writes_csv_and_parquet_both_ways(small_artifact, fc, tmp_path, capsys, src, dst):
    panel = _panel()
    data = tmp_path / f"panel{src}"
    if src == ".csv":
        panel.to_csv(data, index=False)
    else:
        panel.to_parquet(data)
    out = tmp_path / f"out{dst}"
    assert main(["forecast", str(small_artifact), "--data", str(data), "--out", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["series"] == 3 and summary["rows_written"] == 3 * H and summary["values_filled"] == 0
    assert summary["series_per_s"] > 0 and set(summary["stage_seconds"]) >= {
        "read",
        "validate",
        "model",
        "write",
    }
    back = read_table(out)
    want = fc.forecast_frame(panel)
    assert list(back.columns) == list(want.columns)
    assert list(back["item_id"]) == list(want["item_id"])
    assert (pd.to_datetime(back["timestamp"]).to_numpy() == want["timestamp"].to_numpy()).all()
    np.testing.assert_allclose(back["forecast"].to_numpy(), want["forecast"].to_numpy(), rtol=1e-6)


def test_cli_reports_fill_per_series(small_artifact, tmp_path, capsys):
    panel = _panel().reset_index(drop=True)
    panel = panel.drop(index=panel.index[panel["item_id"] == "s1"][[3, 9]])
    data = tmp_path / "gappy.csv"
    panel.to_csv(data, index=False)
    out = tmp_path / "out.csv"
    args = ["forecast", str(small_artifact), "--data", str(data), "--out", str(out)]
    assert main([*args, "--fill", "interpolate", "--per-series-fill", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["values_filled"] == 2 and summary["filled_per_series"] == {"s1": 2}


def test_cli_error_names_the_problem_and_writes_nothing(small_artifact, tmp_path, capsys):
    panel = _panel().reset_index(drop=True).astype({"target": object})
    panel.loc[5, "target"] = "oops"
    data = tmp_path / "bad.csv"
    panel.to_csv(data, index=False)
    out = tmp_path / "out.csv"
    assert main(["forecast", str(small_artifact), "--data", str(data), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    stamp = pd.Timestamp(panel.loc[5, "timestamp"])
    assert (
        f"prunecast forecast: error: {data}: series '{panel.loc[5, 'item_id']}' at {stamp}: value 'oops'"
        in err
    )
    assert not out.exists()
    assert (
        main(["forecast", str(small_artifact), "--data", str(data), "--out", str(tmp_path / "o.xlsx")]) == 2
    )
    assert "unknown table format '.xlsx'" in capsys.readouterr().err


# ---- Chronos-Bolt: NaN is a mask ----------------------------------------------------------------


@pytest.fixture(scope="module")
def bolt_artifact(tmp_path_factory):
    import torch

    from prunecast.export.onnx_export import ExportConfig, export_onnx
    from prunecast.models.chronos_bolt import ChronosBoltAdapter
    from tests.test_models_chronos_bolt import small_bolt_config

    torch.manual_seed(0)
    module = ChronosBoltAdapter().from_config(small_bolt_config(), context_length=L, horizon=H)
    art = tmp_path_factory.mktemp("bolt") / "art"
    export_onnx(module, art, ExportConfig(source_model="small-bolt", batch_sizes=(1, 7)))
    return art


def test_chronos_bolt_takes_missing_values_and_short_series_as_nan(bolt_artifact):
    bolt = Forecaster.load(bolt_artifact, threads=1)
    panel = _panel(lengths=(80, 20, 70)).reset_index(drop=True)
    panel.loc[panel.index[panel["item_id"] == "s2"][-4], "target"] = np.nan
    out = bolt.forecast_frame(panel, fill="none")
    assert np.isfinite(out["forecast"]).all()
    tails = _tails(panel, L)
    batch = np.full((3, L), np.nan, dtype=np.float32)
    for i, name in enumerate(["s0", "s1", "s2"]):
        batch[i, L - len(tails[name]) :] = tails[name]
    assert np.isnan(batch[1, :44]).all() and np.isnan(batch[2]).sum() == 1
    names = list(dict.fromkeys(out["item_id"]))
    order = [names.index(n) for n in ["s0", "s1", "s2"]]
    got = out["forecast"].to_numpy().reshape(3, H)[order]
    np.testing.assert_allclose(got, bolt.predict_batch(batch), rtol=1e-6, atol=1e-6)


# ---- the real TTM r2: the file it writes equals predict and granite-tsfm's own model ------------


@pytest.fixture(scope="module")
def ttm_artifact(pretrained_ttm, tmp_path_factory):
    from prunecast.export.onnx_export import ExportConfig, export_onnx

    art = tmp_path_factory.mktemp("ttm") / "art"
    export_onnx(pretrained_ttm, art, ExportConfig(source_model=TTM_ID, batch_sizes=(1, 7)))
    return art


@requires_ttm
@requires_data
def test_real_ttm_forecasts_equal_predict_and_granite_tsfm(ttm_artifact, tmp_path, capsys):
    import torch
    from tsfm_public.models.tinytimemixer import TinyTimeMixerForPrediction

    data = tmp_path / "panel.parquet"
    ragged_panel().to_parquet(data)
    out = tmp_path / "forecast.csv"
    assert main(["forecast", str(ttm_artifact), "--data", str(data), "--out", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["series"] == len(PIECES)
    written = pd.read_csv(out)
    names = list(dict.fromkeys(written["unique_id"]))
    contexts = np.stack([expected_tail(PIECES, n, 512) for n in names]).astype(np.float32)
    got = written["forecast"].to_numpy(dtype=np.float32).reshape(len(names), 96)
    predicted = Forecaster.load(ttm_artifact, threads=2).predict(contexts)
    np.testing.assert_allclose(got, predicted, rtol=1e-6, atol=1e-5)  # CSV keeps ~7 significant digits
    model = TinyTimeMixerForPrediction.from_pretrained(TTM_ID).eval()
    with torch.no_grad():
        reference = (
            model(past_values=torch.from_numpy(contexts)[..., None]).prediction_outputs[:, :96, 0].numpy()
        )
    scale = np.abs(reference).max(axis=1, keepdims=True)
    np.testing.assert_allclose(got / scale, reference / scale, atol=1e-5)


def test_quantile_columns_equal_predict_quantiles(bolt_artifact):
    bolt = Forecaster.load(bolt_artifact, threads=1)
    panel = _panel()
    out = bolt.forecast_frame(panel, quantiles=True)
    levels = bolt.quantile_levels
    assert list(out.columns) == ["item_id", "timestamp", "forecast", *(f"q{q:g}" for q in levels)]
    tails = _tails(panel, L)
    names = list(dict.fromkeys(out["item_id"]))
    want = bolt.predict_quantiles(np.stack([tails[n] for n in names]))
    for j, level in enumerate(levels):
        np.testing.assert_array_equal(out[f"q{level:g}"].to_numpy().reshape(3, H), want[:, j, :])
    np.testing.assert_array_equal(out["forecast"].to_numpy(), out["q0.5"].to_numpy())


def test_quantiles_on_a_point_forecast_artifact_is_a_clear_error(fc):
    with pytest.raises(ValueError, match="quantile"):
        fc.forecast_frame(_panel(), quantiles=True)
