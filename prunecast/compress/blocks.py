"""Depth pruning: whole residual blocks (``x + f(x)``) scored and removed like any other unit.

A block is gated by a mask ``m`` on its branch, ``x + m * f(x)``. Its score is the same
first-order loss change of removing it as a width unit's, ``-dL/dm * m`` at ``m = 1``, which is
``-<dL/d out, out - x>``: read off the block's input, output and output gradient in the backward
passes that already score the width units, so blocks cost no extra pass. Removing a block
replaces it by an identity: its weights leave the model, and so do the width groups inside it.

Deep-narrow TSFMs are limited on a CPU by per-layer work that width pruning barely shrinks
(normalisations, softmax gates, layout changes on small tensors), which a removed block takes
with it.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from prunecast.models.base import ForecastModule, PruneGroup

KIND = "block"


def skip_block(module: nn.Module, path: str) -> None:
    """Replace the block at ``path`` by an identity (its branch, weights and all, goes)."""
    parent, _, name = path.rpartition(".")
    owner = module.get_submodule(parent) if parent else module
    if not hasattr(owner, name):
        raise ValueError(f"{type(module).__name__} has no block {path!r}")
    setattr(owner, name, nn.Identity())


def without(module: ForecastModule, blocks: tuple[str, ...] | list[str]) -> ForecastModule:
    """A copy of ``module`` with ``blocks`` removed (the module itself is left as it is)."""
    out = copy.deepcopy(module)
    for b in blocks:
        skip_block(out, b)
    return out


def inside(group: PruneGroup, block: str) -> bool:
    """Whether every slice of ``group`` lies in ``block`` (it goes when the block goes)."""
    return all(sl.module.startswith(block + ".") for sl in group.slices)


@contextmanager
def recording_scores(module: nn.Module, blocks: tuple[str, ...]) -> Iterator[dict[str, torch.Tensor]]:
    """While open, every backward pass adds each block's ``-<dL/d out, out - x>`` to its score.

    Yields ``{block: 0-d float64 tensor}``, accumulated over the passes run inside the context.
    """
    scores = {b: torch.zeros((), dtype=torch.float64) for b in blocks}
    handles = []

    def hook_for(path: str) -> Callable:
        def hook(_mod, inputs, output):
            if not (isinstance(output, torch.Tensor) and output.requires_grad):
                return
            branch = (output - inputs[0]).detach()

            def add(grad: torch.Tensor) -> None:
                scores[path] -= (grad.detach() * branch).sum().double()

            output.register_hook(add)

        return hook

    for b in blocks:
        handles.append(module.get_submodule(b).register_forward_hook(hook_for(b)))
    try:
        yield scores
    finally:
        for h in handles:
            h.remove()


def block_savings(
    module: ForecastModule, blocks: tuple[str, ...], measure: Callable[[ForecastModule], float]
) -> dict[str, float]:
    """What removing each block saves, as ``measure`` (seconds, MACs, parameters) counts it: the
    module's figure less that of a copy without the block."""
    now = measure(module)
    return {b: now - measure(without(module, (b,))) for b in blocks}
