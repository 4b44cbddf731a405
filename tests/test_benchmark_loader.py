"""The benchmark loader on edited copies of the real ETTh1 and on weather.csv as shipped.

Every case here was once accepted silently (reversed rows gave MSE 0.346 instead of 0.363,
shuffled rows 1.02, a value of 1e40 a ``"mse": NaN``); each must now be sorted or refused
with the file, the data row and the timestamp named.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from prunecast.cli import main
from prunecast.data import DataError, TimeAxisPolicy, load_benchmark, prepare_windows
from prunecast.data.csv import DataWarning

from .forecast_data import FILES, WEATHER_DUPLICATE_ROW, requires_data

pytestmark = requires_data


def etth1_lines() -> tuple[bytes, list[bytes]]:
    """ETTh1's header and data lines, as bytes; data line ``k`` (0-based) is data row ``k + 1``."""
    header, *rows = FILES["ETTh1"].read_bytes().rstrip(b"\n").split(b"\n")
    return header, rows


def write(path: Path, header: bytes, rows: list[bytes]) -> Path:
    path.write_bytes(b"\n".join([header, *rows]) + b"\n")
    return path


@pytest.fixture(scope="module")
def original() -> np.ndarray:
    return load_benchmark(FILES["ETTh1"]).values


@pytest.mark.parametrize("order", ["reversed", "shuffled"])
def test_rows_out_of_time_order_are_sorted_with_a_warning(tmp_path, original, order):
    header, rows = etth1_lines()
    if order == "reversed":
        rows = rows[::-1]
    else:
        rows = [rows[i] for i in np.random.default_rng(0).permutation(len(rows))]
    path = write(tmp_path / f"{order}.csv", header, rows)
    with pytest.warns(DataWarning, match=rf"{order}\.csv: rows are not in time order .*; sorted by time"):
        bench = load_benchmark(path)
    np.testing.assert_array_equal(bench.values, original)
    assert bench.freq == "h"
    assert any("sorted by time" in note for note in bench.notes)


def test_sorted_file_gives_the_same_test_windows_as_the_original(tmp_path):
    header, rows = etth1_lines()
    (tmp_path / "reversed").mkdir()
    path = write(tmp_path / "reversed" / "ETTh1.csv", header, rows[::-1])  # the name picks ETTh1's borders
    with pytest.warns(DataWarning):
        reversed_ = prepare_windows(path, 64, 16).test
    straight = prepare_windows(FILES["ETTh1"], 64, 16).test
    index = np.array([0, 5, len(straight) - 1])
    for got, want in zip(reversed_.gather(index), straight.gather(index), strict=True):
        np.testing.assert_array_equal(got, want)


def test_duplicated_date_names_file_rows_and_timestamp(tmp_path):
    header, rows = etth1_lines()
    rows[100] = (
        rows[99].split(b",", 1)[0] + b"," + rows[100].split(b",", 1)[1]
    )  # data row 101 repeats 100's date
    path = write(tmp_path / "dup.csv", header, rows)
    with pytest.raises(DataError) as err:
        load_benchmark(path)
    message = str(err.value)
    assert "dup.csv: duplicate timestamp 2016-07-05 03:00:00 at data rows 100 and 101" in message
    assert "--duplicates first" in message


def test_duplicated_row_loads_under_duplicates_first(tmp_path, original):
    header, rows = etth1_lines()
    rows.insert(100, rows[99])  # an exact copy of data row 100 as data row 101
    path = write(tmp_path / "dup.csv", header, rows)
    with pytest.raises(
        DataError, match=r"dup\.csv: duplicate timestamp 2016-07-05 03:00:00 at data rows 100 and 101"
    ):
        load_benchmark(path)
    with pytest.warns(DataWarning, match="kept the first row"):
        bench = load_benchmark(path, policy=TimeAxisPolicy(duplicates="first"))
    np.testing.assert_array_equal(bench.values, original)


def test_ten_missing_hours_name_file_rows_and_timestamps(tmp_path, original):
    header, rows = etth1_lines()
    path = write(tmp_path / "gap.csv", header, rows[:100] + rows[110:])
    with pytest.raises(DataError) as err:
        load_benchmark(path)
    message = str(err.value)
    assert (
        "gap.csv: 10 timestamp(s) missing from its h grid: 2016-07-05 04:00:00 to 2016-07-05 13:00:00 "
        "(10, between data rows 100 and 101)"
    ) in message
    assert "--fill interpolate" in message
    with pytest.warns(DataWarning, match="filled"):
        bench = load_benchmark(path, policy=TimeAxisPolicy(fill="interpolate"))
    assert bench.values.shape == original.shape
    np.testing.assert_array_equal(bench.values[:100], original[:100])
    np.testing.assert_array_equal(bench.values[110:], original[110:])
    line = original[99] + (original[110] - original[99]) * (np.arange(1, 11)[:, None] / 11)
    np.testing.assert_allclose(bench.values[100:110], line, rtol=1e-6)


def test_unparseable_date_names_file_row_and_value(tmp_path):
    header, rows = etth1_lines()
    rows[56] = b"2016-07-03 xx:00:00," + rows[56].split(b",", 1)[1]
    path = write(tmp_path / "baddate.csv", header, rows)
    with pytest.raises(
        DataError,
        match=r"baddate\.csv: .*timestamp '2016-07-03 xx:00:00' cannot be parsed as a date/time "
        r"\(column 'date', data row 57\)",
    ):
        load_benchmark(path)


def test_value_beyond_float32_names_file_row_timestamp_and_column(tmp_path):
    path = huge_value_copy(tmp_path)
    with pytest.raises(
        DataError,
        match=r"huge\.csv: data row 200 \(2016-07-09 07:00:00\): value 1e\+40 is beyond float32 range "
        r"\(column 'OT'\)",
    ):
        load_benchmark(path)


def huge_value_copy(tmp_path: Path) -> Path:
    """ETTh1 with OT (the last column) of data row 200 set to 1e40."""
    header, rows = etth1_lines()
    rows[199] = rows[199].rsplit(b",", 1)[0] + b",1e40"
    return write(tmp_path / "huge.csv", header, rows)


@pytest.mark.parametrize("name, rows, freq", [("ETTm1", 69680, "15min"), ("ili", 966, "7D")])
def test_other_shared_benchmarks_load_cleanly_under_strict_checks(name, rows, freq, recwarn):
    bench = load_benchmark(FILES[name])
    assert bench.values.shape == (rows, 7) and bench.freq == freq and bench.notes == ()
    assert not [w for w in recwarn if issubclass(w.category, DataWarning)]


def test_weather_as_shipped_is_refused_naming_its_repeated_row_and_loads_on_opt_in():
    stamp = "2020-05-12 06:00:00"
    with pytest.raises(DataError) as err:
        load_benchmark(FILES["weather"])
    message = str(err.value)
    assert (
        f"weather.csv: duplicate timestamp {stamp} at data rows {WEATHER_DUPLICATE_ROW - 1} and {WEATHER_DUPLICATE_ROW}"
        in message
    )
    assert "--duplicates first" in message
    with pytest.raises(DataError, match=r"9 timestamp\(s\) missing from its 10min grid: 2020-05-29 09:40:00"):
        load_benchmark(FILES["weather"], policy=TimeAxisPolicy(duplicates="first"))
    with pytest.warns(DataWarning):
        bench = load_benchmark(
            FILES["weather"], policy=TimeAxisPolicy(duplicates="first", fill="interpolate")
        )
    # 52,696 rows, one repeated, nine timestamps missing; 21 series, the unit characters replaced
    assert bench.values.shape == (52696 - 1 + 9, 21)
    assert bench.columns[-1] == "OT" and bench.freq == "10min"
    assert len(bench.notes) == 2


def test_policy_values_are_checked():
    with pytest.raises(DataError, match="duplicates must be one of"):
        TimeAxisPolicy(duplicates="last")
    with pytest.raises(DataError, match="fill must be one of"):
        TimeAxisPolicy(fill="none")


def test_evaluate_refuses_a_value_beyond_float32_instead_of_printing_nan(tmp_path, small_ttm, capsys):
    small_ttm.model.save_pretrained(tmp_path / "m")
    path = huge_value_copy(tmp_path)
    code = main(
        ["evaluate", "--model", str(tmp_path / "m"), "--data", str(path), "--horizon", "16", "--json"]
    )
    captured = capsys.readouterr()
    assert code != 0
    assert re.search(
        r"huge\.csv: data row 200 \(2016-07-09 07:00:00\): value 1e\+40 is beyond float32", captured.err
    )
    assert "NaN" not in captured.out and "mse" not in captured.out


def test_evaluate_takes_weather_with_its_opt_ins(tmp_path, small_ttm, capsys):
    small_ttm.model.save_pretrained(tmp_path / "m")
    argv = ["evaluate", "--model", str(tmp_path / "m"), "--data", str(FILES["weather"]), "--horizon", "16"]
    assert main(argv + ["--json"]) != 0
    assert "--duplicates first" in capsys.readouterr().err
    with pytest.warns(DataWarning):
        code = main(argv + ["--duplicates", "first", "--fill", "interpolate", "--limit", "50", "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["windows"] == 50 and np.isfinite(result["mse"])
