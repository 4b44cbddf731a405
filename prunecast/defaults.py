"""Defaults shared by the library and the command line, importable without torch."""

DEFAULT_MODEL = "ibm-granite/granite-timeseries-ttm-r2"
DEFAULT_DATA = "ETTh1"
DEFAULT_HORIZON = 96
DEFAULT_DISTILL = 0.5
"""Weight of the unpruned model's forecast in the pruned model's fine-tuning target."""
