"""Defaults and choices shared by the library and the command line, importable without torch."""

DEFAULT_MODEL = "ibm-granite/granite-timeseries-ttm-r2"
DEFAULT_DATA = "ETTh1"
DEFAULT_HORIZON = 96
DEFAULT_DISTILL = 0.5
"""Weight of the unpruned model's forecast in the pruned model's fine-tuning target."""
IMPORTANCES = ("loss", "loss2", "magnitude")
"""Pruning scores ``PruneConfig.importance`` accepts."""
WIDTH_KINDS = ("mlp_hidden", "heads", "width")
"""Unit kinds that narrow a model: MLP hidden channels, attention heads, residual widths."""
UNIT_KINDS = (*WIDTH_KINDS, "block")
"""What pruning may remove: the width kinds and whole residual blocks (depth pruning)."""
TARGETS = ("latency", "latency-estimate", "macs", "params")
"""What ``PruneConfig.budget`` is a fraction of."""
DEFAULT_TARGET = "latency"
"""What ``prunecast prune`` and ``prunecast run`` budget: latency measured on the serving backend."""
LATENCY_BACKENDS = ("onnxruntime", "tensorrt", "torch")
"""Backends ``--target latency`` measures on (``--latency-backend``)."""
DEFAULT_LATENCY_BATCH = 256
"""The batch ``--target latency`` measures at (``--latency-batch``): the serving batch of a busy service."""
DEFAULT_BUDGET = 0.18
"""Fraction of the estimated latency the pruned model keeps. On TTM r2 / ETTh1-96: 14.8x fewer MACs,
5.6-6.7x lower latency at batch 256 over three runs (onnxruntime against eager PyTorch) and a test
MSE below full fine-tuning's on each of three seeds; 0.25 keeps more accuracy margin, 0.12 is
faster still."""
MEASURED_BUDGET = 0.2
"""Fraction of the measured latency (``--target latency``) the pruned model keeps. With depth
pruning (whole mixer blocks go, and the per-layer work with them) TTM r2 / ETTh1-96 at 0.2 keeps
3 of its 16 mixers: test MSE 0.3569 / 0.3574 / 0.3580 over three seeds, each below full
fine-tuning's, and 18x faster than the original in eager PyTorch at batch 256, 33x at batch 1
(``benchmarks/results/accuracy_depth020.json``, ``run_depth/``). Widths alone met 0.35 with a test
MSE about full fine-tuning's, and 6x at batch 256."""


def default_budget(target: str) -> float:
    """The budget a target gets when none is given."""
    return MEASURED_BUDGET if target == "latency" else DEFAULT_BUDGET


FILL_POLICIES = ("error", "ffill", "interpolate", "zero", "none")
"""What ``prunecast forecast --fill`` does with a missing value (a NaN cell, or a timestamp absent from
a series' regular grid): refuse it naming series and timestamp (the default), carry the last value
forward, interpolate linearly in time, write 0, or leave NaN for a model that takes NaN itself."""
NAN_CONTEXT_FAMILIES = ("chronos_bolt",)
"""Families whose exported graph takes NaN in the context as "not observed" (Chronos-Bolt masks it
out of its scaling and patch embedding); every other family needs finite values."""
