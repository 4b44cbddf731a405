"""Benchmark CSVs, standard long-term-forecasting splits, scaling and channel-independent windows."""

from prunecast.data.csv import Benchmark, DataError, TimeAxisPolicy, load_benchmark, resolve_data_path
from prunecast.data.scaling import StandardScaler
from prunecast.data.splits import Split, SplitBorders, split_borders
from prunecast.data.windows import Windows, prepare_windows

__all__ = [
    "Benchmark",
    "DataError",
    "Split",
    "SplitBorders",
    "StandardScaler",
    "TimeAxisPolicy",
    "Windows",
    "load_benchmark",
    "prepare_windows",
    "resolve_data_path",
    "split_borders",
]
