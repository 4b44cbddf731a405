"""Data parallelism for pruning and fine-tuning under ``torchrun``, on ``torch.distributed``.

``torchrun --nproc-per-node N -m prunecast prune ...`` starts N copies of the command with
``RANK``/``WORLD_SIZE``/``MASTER_ADDR`` in the environment; :func:`process_group` joins them
(``env://``, gloo for CPU tensors, NCCL for CUDA ones). Every rank draws the same global sample
of windows from the shared seed and works on its own contiguous share (:func:`shard`); gradients
and loss sums are summed over the ranks (:func:`all_reduce_gradients`, :func:`all_reduce_sum`),
so each step sees the global batch and every rank takes the same decisions. The only state is
``torch.distributed``'s own process group: without one (``WORLD_SIZE`` unset) every helper
here is the identity, and a single process computes exactly what it did before.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch import nn


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    """Whether this process writes files and prints (rank 0, or the only process)."""
    return rank() == 0


def backend() -> str:
    """gloo for CPU tensors, plus NCCL for CUDA tensors when this machine has a GPU."""
    return "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"


@contextlib.contextmanager
def process_group() -> Iterator[None]:
    """Join the ``torchrun`` job described by the environment for the duration of a command.

    Without ``WORLD_SIZE`` in the environment (a plain ``python -m prunecast``) nothing happens.
    A group that is already initialised (by the caller) is used as it is and left open.
    """
    if "WORLD_SIZE" not in os.environ or dist.is_initialized():
        yield
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend(), init_method="env://")
    try:
        yield
    finally:
        dist.destroy_process_group()


def check_divides(size: int, name: str) -> None:
    """A clear error when the ranks cannot split a batch of ``size`` windows evenly."""
    world = world_size()
    if size % world:
        raise ValueError(
            f"{name} {size} is not divisible by the world size {world}: each of the {world} "
            f"processes takes an equal share of it; use a multiple of {world}"
        )


def shard(indices: np.ndarray) -> np.ndarray:
    """This rank's contiguous share of a global sample of window indices (all of it alone)."""
    world = world_size()
    return indices if world == 1 else np.array_split(indices, world)[rank()]


def rank_seed(seed: int) -> int:
    """A seed of this rank's own: the same on rank 0 (so a single process is unchanged), an
    independent stream on the others (dropout masks must not repeat across ranks)."""
    r = rank()
    return seed if r == 0 else int(np.random.SeedSequence([seed, r]).generate_state(1)[0])


def all_reduce_sum(*values: float) -> tuple[float, ...]:
    """Python numbers summed over the ranks (float64), in one collective."""
    if world_size() == 1:
        return values
    buf = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(buf)
    return tuple(buf.tolist())


def all_reduce_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` summed over the ranks, in place (returned for convenience)."""
    if world_size() > 1:
        dist.all_reduce(tensor)
    return tensor


def all_reduce_gradients(params: Iterable[nn.Parameter]) -> None:
    """Sum every parameter's ``.grad`` over the ranks, as one flat buffer in one collective.

    Each rank's loss is its share of the global mean (scaled by its share of the batch), so the
    sum is the gradient of the global batch. A parameter gets a gradient wherever any rank
    produced one, so the optimiser steps the same parameters on every rank.
    """
    if world_size() == 1:
        return
    params = [p for p in params if p.requires_grad]
    if not params:
        return
    dtype = next((p.grad.dtype for p in params if p.grad is not None), params[0].dtype)
    parts = [(p.grad if p.grad is not None else torch.zeros_like(p, dtype=dtype)).reshape(-1) for p in params]
    present = torch.tensor([p.grad is not None for p in params], dtype=dtype, device=parts[0].device)
    flat = torch.cat([*parts, present])
    dist.all_reduce(flat)
    summed = flat[: -len(params)].split([p.numel() for p in params])
    for p, grad, any_rank in zip(params, summed, flat[-len(params) :].tolist(), strict=True):
        if any_rank > 0:
            p.grad = grad.view_as(p).clone()


def broadcast_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """Rank 0's ``tensor`` on every rank, in place: a decision every rank must take alike."""
    if world_size() > 1:
        dist.broadcast(tensor, src=0)
    return tensor


def show_progress(enabled: bool | None) -> bool | None:
    """Progress bars on rank 0 only."""
    return enabled if is_main() else False
