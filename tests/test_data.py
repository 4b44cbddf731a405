import numpy as np
import pandas as pd
import pytest

from prunecast.data import DataError, StandardScaler, Windows, load_benchmark, prepare_windows, split_borders
from prunecast.data.splits import Split

from .conftest import write_csv


def test_etth1_bundled_has_standard_borders():
    bench = load_benchmark("ETTh1")
    assert bench.columns == ("HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL", "OT")
    b = split_borders(bench.name, bench.num_rows)
    assert b.train == (0, 8640)
    assert b.val == (8640, 11520)
    assert b.test == (11520, 14400)
    assert b.rows(Split.TEST, 512) == (11008, 14400)
    assert b.rows(Split.VAL, 512) == (8128, 11520)
    assert b.rows(Split.TRAIN, 512) == (0, 8640)


def test_ettm_uses_quarter_hours_and_other_csvs_70_10_20():
    b = split_borders("ETTm2", 69680)
    assert (b.train, b.val, b.test) == ((0, 34560), (34560, 46080), (46080, 57600))
    b = split_borders("national_illness", 966)
    assert b.train == (0, 676) and b.test == (773, 966) and b.val == (676, 773)


def test_window_counts_for_etth1():
    data = prepare_windows("ETTh1", context_length=512, horizon=96)
    # test: 3392 rows read -> 3392 - 608 + 1 starts, times 7 channels
    assert len(data.test) == (3392 - 608 + 1) * 7 == 19495
    assert len(data.val) == 19495
    assert len(data.train) == (8640 - 608 + 1) * 7
    # the first test target starts at the first test row
    ctx, tgt = data.test.gather(np.array([0]))
    scaled = data.scaler.transform(data.benchmark.values)
    np.testing.assert_array_equal(tgt[0], scaled[11520 : 11520 + 96, 0])
    np.testing.assert_array_equal(ctx[0], scaled[11008:11520, 0])


def test_scaler_is_fitted_on_train_rows_only():
    data = prepare_windows("ETTh1", context_length=512, horizon=96)
    train = data.benchmark.values[:8640]
    np.testing.assert_allclose(data.scaler.mean, train.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(data.scaler.std, train.std(axis=0), rtol=1e-5)
    assert not np.allclose(data.scaler.mean, data.benchmark.values.mean(axis=0), rtol=1e-3)


def test_constant_column_scales_to_zero_not_nan():
    s = StandardScaler.fit(np.ones((10, 2), dtype=np.float32))
    assert np.isfinite(s.transform(np.ones((3, 2), dtype=np.float32))).all()


def test_windows_channel_independent_and_strided():
    values = np.arange(40, dtype=np.float32).reshape(20, 2)
    w = Windows(values, context_length=4, horizon=2, stride=3)
    assert len(w) == ((20 - 6) // 3 + 1) * 2
    ctx, tgt = w.gather(np.array([0, 1, 2]))
    np.testing.assert_array_equal(ctx[0], values[0:4, 0])
    np.testing.assert_array_equal(ctx[1], values[0:4, 1])
    np.testing.assert_array_equal(ctx[2], values[3:7, 0])
    np.testing.assert_array_equal(tgt[2], values[7:9, 0])
    batches = list(w.batches(4))
    assert sum(len(b[0]) for b in batches) == len(w)


def test_columns_selects_by_name(small_csv):
    bench = load_benchmark(small_csv, columns=["s2", "s0"])
    assert bench.columns == ("s2", "s0")
    assert bench.values.shape == (400, 2)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(DataError, match="nope.csv: no such file"):
        load_benchmark(tmp_path / "nope.csv")


def test_no_numeric_columns(tmp_path):
    p = tmp_path / "dates.csv"
    pd.DataFrame({"date": ["2020-01-01", "2020-01-02"]}).to_csv(p, index=False)
    with pytest.raises(DataError, match="dates.csv: no numeric columns"):
        load_benchmark(p)


def test_non_numeric_value_names_column_and_row(tmp_path):
    p = write_csv(tmp_path / "bad.csv", rows=50)
    frame = pd.read_csv(p)
    frame["s1"] = frame["s1"].astype(object)
    frame.loc[7, "s1"] = "oops"
    frame.to_csv(p, index=False)
    with pytest.raises(
        DataError,
        match=r"bad.csv: data row 8 \(2020-01-01 07:00:00\): value 'oops' is not a number \(column 's1'\)",
    ):
        load_benchmark(p)


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.nan, r"column 's2' has NaN at data row 4 \(2020-01-01 03:00:00\)"),
        (np.inf, r"data row 4 \(2020-01-01 03:00:00\): value inf is beyond float32 range \(column 's2'\)"),
    ],
)
def test_nan_and_inf_are_named(tmp_path, bad, message):
    p = write_csv(tmp_path / "nan.csv", rows=50)
    frame = pd.read_csv(p)
    frame.loc[3, "s2"] = bad
    frame.to_csv(p, index=False)
    with pytest.raises(DataError, match=rf"nan.csv: {message}"):
        load_benchmark(p)


def test_split_too_short_names_split(tmp_path):
    p = write_csv(tmp_path / "short.csv", rows=300)
    with pytest.raises(DataError, match=r"short.csv: train split .* too few for context 256 \+ horizon 96"):
        prepare_windows(p, context_length=256, horizon=96)


def test_unknown_column_is_named(small_csv):
    with pytest.raises(DataError, match=r"unknown column\(s\) \['nope'\]"):
        load_benchmark(small_csv, columns=["s0", "nope"])
