"""Batches, training passes and validation loss shared by pruning and fine-tuning."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from prunecast.common.progress import progress
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


def train_windows(
    module: ForecastModule,
    train: Windows,
    indices: np.ndarray,
    opt: torch.optim.Optimizer,
    batch_size: int,
    seed: int,
    target: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    label: str = "train",
    show: bool = False,
) -> float:
    """One optimiser step per ``batch_size`` of the training windows ``indices``, in their order;
    the mean training loss. ``target(x, y)`` gives the training target (the truth when None).

    Under ``torchrun`` each rank computes its share of every batch and the gradients are summed
    before each step, so all ranks keep the same weights (dropout masks come from ``seed``, per rank).
    """
    torch.manual_seed(distributed.rank_seed(seed))
    module.train()
    total, count = 0.0, 0
    n_batches = -(-len(indices) // batch_size)
    for i in progress(range(0, len(indices), batch_size), n_batches, label, show):
        batch = indices[i : i + batch_size]
        local = distributed.shard(batch)
        opt.zero_grad(set_to_none=True)
        if len(local):  # a last, short batch may leave a rank nothing to do
            x, y = tensors(train, local)
            loss = module.training_loss(x, y if target is None else target(x, y))
            (loss * (len(local) / len(batch))).backward()  # this rank's share of the batch mean
            total += float(loss.detach()) * len(x)
            count += len(x)
        distributed.all_reduce_gradients(module.parameters())
        opt.step()
    module.eval()
    total, count = distributed.all_reduce_sum(total, count)
    return total / max(count, 1)


class Targets:
    """Training targets: the truth, or the truth blended with a teacher's forecast."""

    def __init__(self, teacher: ForecastModule | None, weight: float):
        self.teacher = teacher if weight > 0 else None  # no teacher, or weight 0: the truth alone
        self.weight = weight

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.teacher is None:
            return y
        return torch.lerp(y, self.teacher(x), self.weight)
