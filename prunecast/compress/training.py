"""Batches and validation loss shared by pruning and fine-tuning."""

from __future__ import annotations

import numpy as np
import torch

from prunecast.compress import distributed
from prunecast.data.windows import Windows
from prunecast.models.base import ForecastModule


def sample_indices(windows: Windows, count: int | None, seed: int) -> np.ndarray:
    """``count`` window indices drawn without replacement (all, shuffled, when ``count`` is None).

    A random subset, not the first ``count`` windows: those would cover only the start of the split.
    """
    rng = np.random.default_rng(seed)
    n = len(windows)
    if count is None or count >= n:
        return rng.permutation(n)
    return rng.choice(n, size=count, replace=False)


def tensors(windows: Windows, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    context, target = windows.gather(indices)
    return torch.from_numpy(context), torch.from_numpy(target)


@torch.no_grad()
def val_loss(module: ForecastModule, windows: Windows, indices: np.ndarray, batch_size: int = 512) -> float:
    """Mean squared error of ``module`` over the windows ``indices`` (eval mode, restored after).

    Under ``torchrun`` each rank evaluates its share of ``indices`` and the sums are all-reduced,
    so every rank gets the same loss and takes the same early-stopping decision.
    """
    was_training = module.training
    module.eval()
    indices = distributed.shard(indices)
    total, count = 0.0, 0
    for i in range(0, len(indices), batch_size):
        x, y = tensors(windows, np.sort(indices[i : i + batch_size]))
        total += float(torch.square(module(x) - y).sum())
        count += y.numel()
    module.train(was_training)
    total, count = distributed.all_reduce_sum(total, count)
    return total / count
