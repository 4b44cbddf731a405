"""Parameter and MAC counts of a forecast module, for the model's real input shape.

MACs are those of the Linear layers (the bulk of a TSFM's arithmetic; normalisation, softmax and
activations are not multiply-accumulates), counted by hooks on one forward pass, so reshapes
such as TTM's adaptive patching are counted exactly as they run.

MACs alone mispredict CPU latency for small TSFMs: in an onnxruntime profile of TTM r2 at batch
256, the elementwise work around the matmuls (bias adds, GELU, LayerNorm, softmax gating, residual
adds, transposes) took about twice the matmul time. That work scales with the activations the
Linear layers read and write, so :func:`latency_cost` adds ``ACTIVATION_COST`` MAC-equivalents per
activation element to the MACs: an estimate that ranks and budgets units by the time they cost
(``--target latency-estimate``). ``--target latency`` measures instead: a :class:`LatencyModel`
predicts seconds from the :func:`linear_shapes` of a candidate model.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

from prunecast.models.base import ForecastModule


def count_params(module: nn.Module) -> int:
    """Number of parameters."""
    return sum(p.numel() for p in module.parameters())


@torch.no_grad()
def linear_rows(module: ForecastModule, batch_size: int = 1) -> dict[str, int]:
    """For each Linear that runs, how many input rows (vectors) it multiplies per forward pass."""
    rows: dict[str, int] = {}
    names = {m: n for n, m in module.named_modules() if isinstance(m, nn.Linear)}

    def hook(layer, inputs, _output):
        rows[names[layer]] = rows.get(names[layer], 0) + inputs[0].numel() // layer.in_features

    handles = [m.register_forward_hook(hook) for m in names]
    was_training = module.training
    module.eval()
    try:
        module(module.example_input(batch_size))
    finally:
        for h in handles:
            h.remove()
        module.train(was_training)
    return rows


ACTIVATION_COST = 80.0
"""MAC-equivalents per activation element a Linear reads or writes. TTM r2 has 42 MACs per such
element; 80 makes the elementwise share about twice the matmul share, as profiled."""


def activation_elements(module: ForecastModule, rows: dict[str, int]) -> int:
    """Elements the Linear layers read and write in one forward pass (given :func:`linear_rows`)."""
    return sum(
        r * (module.get_submodule(n).in_features + module.get_submodule(n).out_features)
        for n, r in rows.items()
    )


def latency_cost(module: ForecastModule, batch_size: int = 1) -> float:
    """Estimated CPU cost in MAC-equivalents: MACs plus ``ACTIVATION_COST`` per activation element."""
    rows = linear_rows(module, batch_size)
    return _macs(module, rows) + ACTIVATION_COST * activation_elements(module, rows)


LinearShape = tuple[int, int, int]
"""``(rows, in_features, out_features)`` of one Linear in one forward pass: the key of a
measured latency table (:class:`LatencyModel`)."""


def linear_shapes(module: ForecastModule, batch_size: int = 1) -> dict[str, LinearShape]:
    """The shape of every Linear that runs in a forward pass on ``[batch_size, context_length]``.

    Rows are counted at batch 1 and scaled: a forecast module applies every Linear per series, so
    its rows grow in proportion to the batch (and one pass at batch 1 is cheap enough to repeat
    for every candidate width while pruning).
    """
    return {
        n: (r * batch_size, module.get_submodule(n).in_features, module.get_submodule(n).out_features)
        for n, r in linear_rows(module, 1).items()
    }


class LatencyModel(Protocol):
    """Seconds of one forward pass predicted from the model's Linear shapes, on the backend and
    settings the model will be served with (``prunecast.bench.latency_model.MeasuredLatency``
    measures them). Pruning ranks units by predicted seconds saved and budgets the prediction."""

    batch_size: int

    def seconds(self, shapes: dict[str, LinearShape]) -> float: ...

    def calibrate(self, module: ForecastModule) -> float:
        """Measure ``module`` on the backend, learn from it, return its measured seconds."""
        ...


def count_macs(module: ForecastModule, batch_size: int = 1) -> int:
    """Multiply-accumulates of one forward pass on a ``[batch_size, context_length]`` input."""
    return _macs(module, linear_rows(module, batch_size))


def _macs(module: ForecastModule, rows: dict[str, int]) -> int:
    return sum(
        r * module.get_submodule(n).in_features * module.get_submodule(n).out_features
        for n, r in rows.items()
    )
