"""The panel data path of ``prunecast forecast``: formats, column detection, time grid, checks, fill."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from prunecast.data import DataError
from prunecast.data.panel import PanelConfig, load_panel
from prunecast.data.tables import read_table, write_table
from tests.forecast_data import (
    FILES,
    FREQS,
    PIECES,
    expected_tail,
    ragged_panel,
    read_benchmark,
    requires_data,
    weather_cut,
)


def _names(panel) -> list[str]:
    return [str(i) for i in panel.ids]


# ---- real data shapes -------------------------------------------------------------------------


@requires_data
@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_ragged_long_panel_from_the_shared_files(tmp_path, suffix):
    """Shuffled rows of eight series (4 frequencies, different starts and lengths) come back in time order."""
    path = write_table(ragged_panel(), tmp_path / f"panel{suffix}")
    panel = load_panel(path)
    assert panel.id_name == "unique_id" and panel.timestamp_name == "ds"
    assert sorted(_names(panel)) == sorted(f"{f}/{c}" for f, c, _, _ in PIECES)
    freqs = dict(zip(_names(panel), panel.frequencies.names(), strict=True))
    lengths = dict(zip(_names(panel), panel.lengths, strict=True))
    for file, column, _, rows in PIECES:
        assert freqs[f"{file}/{column}"] == FREQS[file]
        assert lengths[f"{file}/{column}"] == rows
    contexts = panel.contexts(512)
    assert contexts.shape == (len(PIECES), 512) and contexts.dtype == np.float32
    for i, name in enumerate(_names(panel)):
        np.testing.assert_array_equal(contexts[i], expected_tail(PIECES, name, 512).astype(np.float32))
    assert panel.filled.sum() == 0


def _by_id(panel) -> dict:
    """Each series' grid values, last timestamp, frequency and filled count, keyed by id."""
    freqs = panel.frequencies.names()
    return {
        str(i): (
            panel.values[panel.starts[k] : panel.starts[k] + panel.lengths[k]].tolist(),
            int(panel.last[k]),
            freqs[k],
            int(panel.filled[k]),
        )
        for k, i in enumerate(panel.ids)
    }


@requires_data
@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_grouped_rows_give_the_same_panel_as_shuffled_rows(tmp_path, suffix):
    """Grouped rows (ids compared with their neighbours, rows their own grid) equal the sorting path."""
    grouped = ragged_panel(shuffle=False)
    grouped = grouped.drop(index=grouped.index[100:105]).reset_index(drop=True)  # a gap in one series
    shuffled = grouped.sample(frac=1.0, random_state=1).reset_index(drop=True)
    config = PanelConfig(fill="interpolate")
    fast = load_panel(write_table(grouped, tmp_path / f"grouped{suffix}"), config)
    assert not isinstance(fast.ids.dtype, pd.CategoricalDtype)
    assert _names(fast) == list(dict.fromkeys(grouped["unique_id"]))
    assert int(fast.filled.sum()) == 5
    for other in (
        load_panel(write_table(shuffled, tmp_path / f"shuffled{suffix}"), config),
        load_panel(grouped, config),
        load_panel(shuffled, config),
    ):
        assert _by_id(other) == _by_id(fast)


@requires_data
def test_future_timestamps_follow_each_series_frequency():
    panel = load_panel(ragged_panel())
    future = np.asarray(panel.future_timestamps(4)).reshape(len(panel), 4)
    pieces = {f"{file}/{column}": (file, first + rows - 1) for file, column, first, rows in PIECES}
    for i, name in enumerate(_names(panel)):
        file, last_row = pieces[name]
        last = read_benchmark(file)["date"].iloc[last_row]
        assert list(future[i]) == list(pd.date_range(last, periods=5, freq=FREQS[file])[1:]), name


@requires_data
@pytest.mark.parametrize(
    "columns", [("unique_id", "ds", "y"), ("item_id", "timestamp", "target"), ("id", "timestamp", "value")]
)
def test_long_conventions_are_detected(columns):
    panel = load_panel(ragged_panel(PIECES[:3], columns=columns))
    assert (panel.id_name, panel.timestamp_name) == columns[:2]
    assert len(panel) == 3


@requires_data
@pytest.mark.parametrize("name", ["ETTh1", "ETTm1", "ili"])
def test_wide_benchmark_files_are_one_series_per_column(name):
    panel = load_panel(FILES[name])
    source = read_benchmark(name)
    assert panel.id_name == "unique_id" and panel.timestamp_name == "date"
    assert _names(panel) == [c for c in source.columns if c != "date"]
    assert set(panel.frequencies.names()) == {FREQS[name]}
    tail = source.drop(columns="date").to_numpy(dtype=np.float64)[-96:].T
    np.testing.assert_array_equal(panel.contexts(96), tail.astype(np.float32))
    assert (panel.last == source["date"].iloc[-1].value).all()


@requires_data
def test_wide_target_column_picks_series():
    panel = load_panel(FILES["ETTh1"], PanelConfig(target_column=["OT", "HUFL"]))
    assert _names(panel) == ["OT", "HUFL"]


@requires_data
def test_weather_as_shipped_is_refused_for_its_duplicated_row():
    """The shipped weather.csv (header not valid UTF-8, CRLF) repeats 2020-05-12 06:00:00."""
    with pytest.raises(
        DataError, match=r"weather\.csv: series 'p \(mbar\)': duplicate timestamp 2020-05-12 06:00:00"
    ):
        load_panel(FILES["weather"])


@requires_data
def test_weather_gap_is_an_error_by_default_and_filled_on_request(tmp_path):
    path = weather_cut(tmp_path / "weather.csv")
    with pytest.raises(
        DataError,
        match=r"series 'p \(mbar\)': missing value at 2020-05-29 09:40:00 \(no row has this timestamp\); "
        r"189 value\(s\) missing in 21 series",
    ):
        load_panel(path)
    panel = load_panel(path, PanelConfig(fill="interpolate"))
    assert len(panel) == 21 and set(panel.frequencies.names()) == {"10min"}
    assert panel.fill_report() == {name: 9 for name in _names(panel)}
    # the nine missing steps lie on the line between 09:30 and 11:10
    raw = pd.read_csv(path, encoding_errors="replace")
    before = raw.index[raw["date"] == "2020-05-29 09:30:00"][0]
    ot = raw["OT"].to_numpy()
    series = _names(panel).index("OT")
    segment = panel.values[panel.starts[series] : panel.starts[series] + panel.lengths[series]]
    expected = ot[before] + (ot[before + 1] - ot[before]) * np.arange(1, 10) / 10
    np.testing.assert_allclose(segment[before + 1 : before + 10], expected)


# ---- formats ----------------------------------------------------------------------------------


@requires_data
@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".pq"])
def test_tables_round_trip(tmp_path, suffix):
    frame = ragged_panel(PIECES[:2])
    back = read_table(write_table(frame, tmp_path / f"t{suffix}"))
    assert list(back.columns) == list(frame.columns)
    pd.testing.assert_series_equal(back["ds"].astype("datetime64[ns]"), frame["ds"].astype("datetime64[ns]"))
    np.testing.assert_array_equal(back["y"].to_numpy(), frame["y"].to_numpy())


def test_unknown_extension_and_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"unknown table format '\.txt'"):
        read_table(tmp_path / "x.txt")
    with pytest.raises(DataError, match="no such file"):
        read_table(tmp_path / "x.csv")


# ---- bad input: each a clear error naming series and timestamp --------------------------------


def _long(values, stamps=None, ids=None) -> pd.DataFrame:
    n = len(values)
    stamps = stamps if stamps is not None else pd.date_range("2021-03-01", periods=n, freq="h")
    return pd.DataFrame({"unique_id": ids if ids is not None else ["a"] * n, "ds": stamps, "y": values})


def test_duplicate_timestamp_names_series_and_timestamp():
    stamps = list(pd.date_range("2021-03-01", periods=5, freq="h"))
    stamps[3] = stamps[2]
    with pytest.raises(DataError, match=r"series 'a': duplicate timestamp 2021-03-01 02:00:00"):
        load_panel(_long(np.arange(5.0), stamps))


def test_irregular_spacing_names_the_timestamp_off_the_grid():
    stamps = list(pd.date_range("2021-03-01", periods=6, freq="h"))
    stamps[4] = stamps[4] + pd.Timedelta("7min")
    with pytest.raises(DataError, match=r"series 'a': timestamp 2021-03-01 04:07:00 is not on the h grid"):
        load_panel(_long(np.arange(6.0), stamps))


def test_unparseable_and_missing_timestamps_name_series_and_value(tmp_path):
    frame = _long(np.arange(4.0)).astype({"ds": str})
    frame.loc[2, "ds"] = "2021-13-45 00:00"
    with pytest.raises(
        DataError, match=r"series 'a': timestamp '2021-13-45 00:00' cannot be parsed .*data row 3"
    ):
        load_panel(frame)
    frame.loc[2, "ds"] = None
    with pytest.raises(DataError, match=r"series 'a': missing timestamp .*data row 3"):
        load_panel(frame)
    numbers = _long(np.arange(4.0), stamps=np.arange(4))
    with pytest.raises(DataError, match=r"timestamp column 'ds' holds numbers"):
        load_panel(numbers)


def test_bad_values_in_a_csv_name_series_and_timestamp(tmp_path):
    frame = _long(np.arange(6.0), ids=["a"] * 3 + ["b"] * 3).astype({"y": object})
    frame.loc[4, "y"] = "oops"
    path = tmp_path / "bad.csv"
    frame.to_csv(path, index=False)
    with pytest.raises(
        DataError, match=r"bad\.csv: series 'b' at 2021-03-01 04:00:00: value 'oops' is not a number"
    ):
        load_panel(path)
    frame.loc[4, "y"] = 1e40
    frame.to_csv(path, index=False)
    with pytest.raises(
        DataError, match=r"series 'b' at 2021-03-01 04:00:00: value 1e\+40 is beyond float32 range"
    ):
        load_panel(path)
    frame.loc[4, "y"] = -np.inf
    with pytest.raises(DataError, match=r"series 'b' at 2021-03-01 04:00:00: value -inf is beyond float32"):
        load_panel(frame)


def test_float32_infinity_and_timestamps_past_nanoseconds_are_named(tmp_path):
    frame = _long(np.arange(6.0, dtype=np.float32), ids=["a"] * 3 + ["b"] * 3)
    frame.loc[5, "y"] = np.float32(np.inf)
    with pytest.raises(DataError, match=r"series 'b' at 2021-03-01 05:00:00: value inf is beyond float32"):
        load_panel(frame)
    stamps = pd.Series(pd.date_range("2250-01-01", periods=4, freq="5000D", unit="s"))
    frame = pd.DataFrame({"unique_id": "a", "ds": stamps, "y": np.arange(4.0)})
    path = write_table(frame, tmp_path / "far.parquet")
    with pytest.raises(
        DataError, match=r"far\.parquet: timestamp column 'ds' holds dates outside the years 1677-2262"
    ):
        load_panel(path)
    frame.loc[2, "ds"] = pd.NaT
    with pytest.raises(DataError, match=r"series 'a': missing timestamp \(column 'ds', data row 3\)"):
        load_panel(frame)


@pytest.mark.parametrize(
    ("columns", "config", "message"),
    [
        (
            ["series", "ds", "y"],
            {},
            r"column 'series' holds no numbers.*columns found: \['series', 'ds', 'y'\]",
        ),
        (
            ["unique_id", "when", "y"],
            {},
            r"cannot tell the timestamp column .*columns found: \['unique_id', 'when', 'y'\]",
        ),
        (["unique_id", "ds", "sales"], {}, r"cannot tell the target column .*columns found"),
        (["unique_id", "ds", "y"], {"target_column": "sales"}, r"no column 'sales'; columns found"),
        (["unique_id", "ds", "y"], {"id_column": "store"}, r"no column 'store'; columns found"),
        (["unique_id", "ds", "date", "y"], {}, r"more than one timestamp column \(\['ds', 'date'\]\)"),
        (["id", "item_id", "ds", "y"], {}, r"more than one series id column"),
    ],
)
def test_missing_or_ambiguous_columns_list_the_columns_found(columns, config, message):
    stamps = ["2021-01-01", "2021-01-02", "2021-01-03"]
    cells = {"ds": stamps, "date": stamps, "when": stamps, "series": ["a", "a", "b"]}
    frame = pd.DataFrame({c: cells.get(c, [1.0] * 3) for c in columns})
    with pytest.raises(DataError, match=message):
        load_panel(frame, PanelConfig(**config))


def test_empty_series_are_refused_by_name():
    wide = pd.DataFrame({"date": pd.date_range("2021-01-01", periods=4, freq="D"), "a": 1.0, "b": np.nan})
    with pytest.raises(DataError, match=r"series 'b': is empty"):
        load_panel(wide)
    with pytest.raises(DataError, match=r"series 'a': has no values"):
        load_panel(_long([np.nan] * 3 + [1.0] * 3, ids=["a"] * 3 + ["b"] * 3), PanelConfig(fill="ffill"))
    with pytest.raises(DataError, match="no rows"):
        load_panel(_long([]))


def test_missing_id_and_single_timestamp_series():
    frame = _long(np.arange(3.0), ids=["a", None, "a"])
    with pytest.raises(DataError, match=r"row 2 has no series id"):
        load_panel(frame)
    frame = _long(np.arange(3.0), ids=["a", "a", "b"])
    with pytest.raises(DataError, match=r"series 'b': has a single timestamp.*pass freq"):
        load_panel(frame)
    assert load_panel(frame, PanelConfig(freq="h")).lengths.tolist() == [2, 1]


# ---- missing values and fill policies -----------------------------------------------------------


def _gappy() -> pd.DataFrame:
    """Series 'a': NaN cells at 01:00 and 04:00 (leading value present); 'b': 02:00 and 03:00 have no rows."""
    a = _long([1.0, np.nan, 3.0, 4.0, np.nan, 6.0])
    stamps = pd.date_range("2021-03-01", periods=6, freq="h").delete([2, 3])
    b = _long([10.0, 11.0, 14.0, 15.0], stamps=stamps, ids=["b"] * 4)
    return pd.concat([a, b], ignore_index=True)


def _series(panel, name):
    i = _names(panel).index(name)
    return panel.values[panel.starts[i] : panel.starts[i] + panel.lengths[i]]


def test_fill_error_names_series_timestamp_and_kind():
    with pytest.raises(
        DataError,
        match=r"series 'a': missing value at 2021-03-01 01:00:00 \(its value is missing \(NaN\)\); 4 value",
    ):
        load_panel(_gappy())
    with pytest.raises(
        DataError, match=r"series 'b': missing value at 2021-03-01 02:00:00 \(no row has this"
    ):
        load_panel(_gappy().query("unique_id == 'b'"))


@pytest.mark.parametrize(
    ("policy", "a", "b"),
    [
        ("ffill", [1, 1, 3, 4, 4, 6], [10, 11, 11, 11, 14, 15]),
        ("interpolate", [1, 2, 3, 4, 5, 6], [10, 11, 12, 13, 14, 15]),
        ("zero", [1, 0, 3, 4, 0, 6], [10, 11, 0, 0, 14, 15]),
        ("none", [1, np.nan, 3, 4, np.nan, 6], [10, 11, np.nan, np.nan, 14, 15]),
    ],
)
def test_fill_policies(policy, a, b):
    panel = load_panel(_gappy(), PanelConfig(fill=policy))
    np.testing.assert_array_equal(_series(panel, "a"), a)
    np.testing.assert_array_equal(_series(panel, "b"), b)
    assert panel.fill_report() == {"a": 2, "b": 2}


def test_leading_missing_values_take_the_first_observed_one():
    frame = _long([np.nan, np.nan, 3.0, 5.0, np.nan])
    np.testing.assert_array_equal(_series(load_panel(frame, PanelConfig(fill="ffill")), "a"), [3, 3, 3, 5, 5])
    np.testing.assert_array_equal(
        _series(load_panel(frame, PanelConfig(fill="interpolate")), "a"), [3, 3, 3, 5, 5]
    )


def test_unknown_fill_policy():
    with pytest.raises(DataError, match="fill must be one of"):
        PanelConfig(fill="mean")


# ---- frequencies ------------------------------------------------------------------------------


def test_calendar_frequencies_with_gaps_are_inferred():
    months = pd.date_range("2020-01-01", periods=14, freq="MS").delete([5])
    days = pd.bdate_range("2021-03-01", periods=15).delete([7])
    frame = pd.concat(
        [
            _long(np.arange(13.0), stamps=months, ids=["m"] * 13),
            _long(np.arange(14.0), stamps=days, ids=["b"] * 14),
        ]
    )
    panel = load_panel(frame, PanelConfig(fill="ffill"))
    assert panel.frequencies.names() == ["MS", "B"]
    assert panel.fill_report() == {"m": 1, "b": 1}
    future = pd.DatetimeIndex(panel.future_timestamps(2))
    assert list(future[:2]) == [pd.Timestamp("2021-03-01"), pd.Timestamp("2021-04-01")]
    assert list(future[2:]) == [pd.Timestamp("2021-03-22"), pd.Timestamp("2021-03-23")]  # Fri -> Mon, Tue


def test_freq_override_and_bad_freq():
    frame = _long(np.arange(5.0), stamps=pd.date_range("2021-01-01", periods=5, freq="2h"))
    assert load_panel(frame).frequencies.names() == ["2h"]
    panel = load_panel(frame, PanelConfig(freq="h", fill="zero"))
    assert panel.lengths.tolist() == [9] and panel.filled.tolist() == [4]
    with pytest.raises(DataError, match=r"freq 'fortnight' is not a pandas frequency"):
        load_panel(frame, PanelConfig(freq="fortnight"))
    with pytest.raises(DataError, match=r"series 'a': timestamp 2021-01-01 02:00:00 is not on the 3h grid"):
        load_panel(frame, PanelConfig(freq="3h"))
    with pytest.raises(DataError, match=r"would span .* steps of the frequency; is freq right"):
        load_panel(frame, PanelConfig(freq="s", fill="zero"))


def test_time_zones_are_kept():
    stamps = pd.date_range("2021-03-27", periods=48, freq="h", tz="Europe/Berlin")
    panel = load_panel(_long(np.arange(48.0), stamps=stamps))
    future = panel.future_timestamps(3)
    assert str(future.tz) == "Europe/Berlin"
    assert list(future) == list(pd.date_range(stamps[-1], periods=4, freq="h")[1:])


# ---- short series -----------------------------------------------------------------------------


def test_short_series_are_listed_or_padded():
    frame = pd.concat([_long(np.arange(1.0, 9.0)), _long([5.0, 6.0, 7.0], ids=["b"] * 3)])
    panel = load_panel(frame)
    with pytest.raises(
        DataError, match=r"1 series are shorter than the model's context length 6: 'b' \(3\); pass pad"
    ):
        panel.contexts(6)
    np.testing.assert_array_equal(panel.contexts(6, pad="first")[1], [5, 5, 5, 5, 6, 7])
    np.testing.assert_array_equal(panel.contexts(6, pad="nan")[1], [np.nan, np.nan, np.nan, 5, 6, 7])
    np.testing.assert_array_equal(panel.contexts(6, pad="nan")[0], [3, 4, 5, 6, 7, 8])
