"""What every runtime backend provides: one validated batch in, its forecasts (and quantiles) out."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

DEVICES = ("auto", "cpu", "cuda")


class BackendError(RuntimeError):
    """A backend cannot be used here (not installed, no GPU, engine built elsewhere); the message says why."""


@dataclass(frozen=True)
class BackendOptions:
    """How to run a backend.

    ``device``: ``"auto"`` (the GPU when the backend can use one, else the CPU), ``"cpu"``,
    ``"cuda"`` or ``"cuda:N"``. ``threads``: CPU threads for one batch (default: every CPU
    this process may use). ``spinning``: whether idle CPU threads spin waiting for work;
    faster for back-to-back batches when the runtime has the CPU to itself, but it steals
    cycles from anything else in the process (an HTTP event loop, another runtime), so a
    server turns it off. ``max_batch``: the most series one backend call takes; larger
    inputs are split (default: the TensorRT profile's max, else 1024, bounding memory).
    ``split_batches``: on the CPU with more than one thread, run a large batch as one part per
    thread, side by side on single-threaded sessions (onnxruntime only). A small model's many
    small ops spend more on thread hand-offs inside one session than they gain from them
    (pruned TTM, batch 256, 2 threads: 12 ms split, 16 ms in one session). The session is then
    single-threaded, and a batch too small to split runs on it whole (0.061 against 0.082 ms at
    batch 1 on 2 threads, depth-pruned TTM).
    """

    device: str = "auto"
    threads: int | None = None
    spinning: bool = True
    max_batch: int | None = None
    split_batches: bool = True

    def __post_init__(self) -> None:
        kind, _, index = self.device.partition(":")
        if kind not in DEVICES or (index and (kind != "cuda" or not index.isdigit())):
            raise ValueError(f"device must be one of auto, cpu, cuda, cuda:N; got {self.device!r}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be at least 1, got {self.threads}")
        if self.max_batch is not None and self.max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {self.max_batch}")

    @property
    def cuda_index(self) -> int:
        """The CUDA device ordinal ``cuda:N`` names (0 for ``cuda`` and ``auto``)."""
        _, _, index = self.device.partition(":")
        return int(index) if index else 0

    def cpu_threads(self) -> int:
        if self.threads is not None:
            return self.threads
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


DEFAULT_MAX_BATCH = 1024
FORECAST_ONLY = ("forecast",)


class Backend(ABC):
    """Runs ``[n, L]`` float32 C-contiguous batches (``n <= max_batch``) through the artifact's model.

    :meth:`run_outputs` returns any of the artifact's outputs (``forecast [n, H]``, and
    ``quantiles [n, Q, H]`` for quantile models) from one model run, so asking for both costs one
    pass; :meth:`run` is the forecast alone. Implementations must be safe to call from several
    threads at once.
    """

    name: str
    #: where it really runs, e.g. "cpu" or "cuda:0" (after any fallback)
    device: str
    max_batch: int
    #: why it runs somewhere other than asked (e.g. CUDA requested, CPU used), else None
    fallback: str | None = None

    @abstractmethod
    def run_outputs(self, batch: np.ndarray, outputs: tuple[str, ...]) -> dict[str, np.ndarray]:
        """``{name: float32 array}`` for each of ``outputs`` (names the manifest lists), from one run."""

    def run(self, batch: np.ndarray) -> np.ndarray:
        """The point forecasts ``[n, H]``."""
        return self.run_outputs(batch, FORECAST_ONLY)["forecast"]

    def describe(self) -> dict:
        """Plain data for logs, ``/healthz`` and benchmark reports."""
        return {
            "backend": self.name,
            "device": self.device,
            "max_batch": self.max_batch,
            "fallback": self.fallback,
        }
