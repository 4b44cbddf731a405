"""What every TSFM family adapter provides.

An adapter loads a pretrained checkpoint (Hugging Face id or local directory) and wraps it
in a :class:`ForecastModule`: ``context [B, L] float32 -> forecast [B, H]``. That module is
the unit the rest of prunecast prunes, fine-tunes, saves and exports; adapters know nothing
of how it is pruned.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import nn


class ModelError(ValueError):
    """A model cannot be loaded or used as asked; the message says why."""


class ForecastModule(nn.Module, ABC):
    """``context [B, L] -> forecast [B, H]`` over a family's own model (kept as ``self.model``)."""

    family: str

    def __init__(self, model: nn.Module, context_length: int, horizon: int):
        super().__init__()
        self.model = model
        self.context_length = context_length
        self.horizon = horizon

    @abstractmethod
    def forward(self, context: torch.Tensor) -> torch.Tensor: ...

    @abstractmethod
    def config_dict(self) -> dict:
        """The family's own model config, as JSON-serialisable data (to rebuild the architecture)."""

    def example_input(self, batch_size: int = 2) -> torch.Tensor:
        """A real-shaped input, for tracing, MAC counting and export."""
        return torch.randn(batch_size, self.context_length)


class ModelAdapter(ABC):
    """Loads one TSFM family."""

    family: str
    default_model: str

    @abstractmethod
    def load(
        self, source: str, horizon: int | None = None, context_length: int | None = None
    ) -> ForecastModule:
        """Load ``source`` (HF id or local directory) as a forecast module for ``horizon`` steps."""

    @abstractmethod
    def from_config(self, config: dict, context_length: int, horizon: int) -> ForecastModule:
        """A randomly initialised module of the architecture ``config`` describes."""

    @abstractmethod
    def recognises(self, config: dict) -> bool:
        """Whether a Hugging Face ``config.json`` belongs to this family."""
