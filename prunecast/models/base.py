"""What every TSFM family adapter provides.

An adapter loads a pretrained checkpoint (Hugging Face id or local directory) and wraps it
in a :class:`ForecastModule`: ``context [B, L] float32 -> forecast [B, H]``. That module is
the unit the rest of prunecast prunes, fine-tunes, saves and exports; adapters know nothing
of how it is pruned.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn


class ModelError(ValueError):
    """A model cannot be loaded or used as asked; the message says why."""


def checkpoint_error(family: str, source: str, exc: Exception) -> ModelError:
    """Why a checkpoint did not load, with the way to load it offline."""
    return ModelError(
        f"cannot load {family} {source!r}: {exc}. Offline, set HF_HUB_CACHE to a cache holding it "
        "with HF_HUB_OFFLINE=1, or pass a local directory."
    )


@dataclass(frozen=True)
class Slice:
    """Where one pruning unit lives in one layer: ``module``'s ``axis`` (``out`` = output features,
    rows of a Linear weight and its bias, a LayerNorm's features, or an ``nn.Embedding``'s
    embedding columns, such as T5's per-head relative-position-bias table; ``in`` = Linear input
    columns).

    A layer whose axis has ``width`` channels holds ``width // units`` channels of each unit:
    ``interleaved`` puts unit ``u`` at ``u + k * units`` (a residual width seen through a reshape
    that splits it into chunks, or a flatten of ``[patches, d]``), ``blocked`` at ``u * (width //
    units) + k`` (attention head ``u`` and its head dims). ``chunks`` splits the axis into that
    many equal parts first, each laid out as ``layout`` on its own: a fused QKV projection is three
    chunks (query, key, value), and a head is one block in each.
    """

    module: str
    axis: Literal["out", "in"]
    layout: Literal["interleaved", "blocked"] = "interleaved"
    chunks: int = 1


@dataclass(frozen=True)
class Attribute:
    """A cached size to rewrite when a group shrinks: ``path`` (dotted, from the forecast module;
    may end in a field of a frozen dataclass config, which is replaced) becomes ``kept * scale``.

    Attention layers cache their head count and inner width (T5 ``n_heads`` and ``inner_dim =
    heads * d_kv``) and reshape with them, so they must follow the tensors.
    """

    path: str
    scale: int = 1


@dataclass(frozen=True)
class PruneGroup:
    """Units that must be removed together from every slice: one coupled structure of a model.

    ``kind`` is ``mlp_hidden`` (hidden channels between two Linears), ``heads`` (attention heads)
    or ``width`` (a residual stream width such as ``d_model``). ``exact_by_zeroing`` says whether
    zeroing a unit's weights already equals removing it (true for MLP hidden channels; false where
    a LayerNorm or softmax normalises over the pruned axis). ``config_key`` names the config
    field holding ``units * config_scale`` (``d_model``), and ``attributes`` the sizes cached on
    modules, so config and tensors agree after pruning: an :class:`Attribute` with its own scale,
    or a plain path, which is set to ``units * config_scale``. ``min_units`` is the fewest units
    that still make a valid architecture.
    """

    name: str
    kind: Literal["mlp_hidden", "heads", "width"]
    units: int
    slices: tuple[Slice, ...]
    exact_by_zeroing: bool
    min_units: int = 1
    config_key: str | None = None
    config_scale: int = 1
    attributes: tuple[str | Attribute, ...] = ()


@dataclass(frozen=True)
class PruningSpec:
    """Every prunable structure of a model, as plain data: what compress may remove.

    Families describe their coupling here instead of relying on a tracer, which cannot follow
    the reshapes and transposes many TSFMs use (TTM's adaptive patching, patch mixing).

    ``blocks`` are the residual blocks that may go whole (depth pruning): dotted paths of modules
    whose forward returns their input plus a branch, ``x + f(x)``, with the same shape, so that
    replacing one by an identity removes exactly its branch. Each block is one unit of kind
    ``block``; the width groups inside a block leave the spec once it is gone.
    """

    groups: tuple[PruneGroup, ...]
    blocks: tuple[str, ...] = ()


def residual_block_hidden(path: str, block: nn.Module) -> PruneGroup:
    """The hidden channels of a residual MLP block (``hidden_layer -> act -> output_layer``), as
    Chronos-Bolt's patch embeddings and TimesFM's tokenizer and output projections build them."""
    return PruneGroup(
        name=f"{path}.hidden",
        kind="mlp_hidden",
        units=block.hidden_layer.out_features,
        slices=(Slice(f"{path}.hidden_layer", "out"), Slice(f"{path}.output_layer", "in")),
        exact_by_zeroing=True,
    )


class ForecastModule(nn.Module, ABC):
    """``context [B, L] -> forecast [B, H]`` over a family's own model (kept as ``self.model``)."""

    family: str
    traced_coupling: bool = False
    """True where the coupling is not written in :meth:`pruning_spec` but left to compress to trace
    (a user's model, transformers' PatchTST): compress then adds the traced groups that it has
    checked remove exactly to this spec's groups. Families whose reshapes defeat the tracer write
    their spec and leave this False."""
    revision: str | None = None
    """The Hugging Face revision (branch, tag or commit) the weights were loaded from, if one was
    asked for; save_model, export manifests and reports record it."""

    def __init__(self, model: nn.Module, context_length: int, horizon: int):
        super().__init__()
        self.model = model
        self.context_length = context_length
        self.horizon = horizon

    @property
    def native_horizon(self) -> int:
        """Steps one pass of the model's forecast head gives; longer horizons roll it out (the
        forecast appended to the context, again), as each family's ``forward`` does."""
        return self.horizon

    def head_info(self) -> dict:
        """Which head makes the forecast: its length and how many passes ``horizon`` takes."""
        return {
            "native_horizon": self.native_horizon,
            "passes": -(-self.horizon // self.native_horizon),
            "horizon": self.horizon,
        }

    def grow_head(self, contexts: torch.Tensor | None = None) -> bool:
        """Give the module a forecast head of its whole ``horizon`` (to be trained) where one pass
        does not reach it; returns whether it did. ``contexts`` (``[N, L]`` training windows), where
        given, are what the new steps are initialised on: one pass should forecast for them what
        the roll-out does. Families whose head cannot grow keep rolling out."""
        return False

    @abstractmethod
    def forward(self, context: torch.Tensor) -> torch.Tensor: ...

    @property
    def quantile_levels(self) -> tuple[float, ...]:
        """The levels :meth:`quantiles` forecasts, ascending; empty for point-forecast families."""
        return ()

    def quantiles(self, context: torch.Tensor) -> torch.Tensor:
        """Quantile forecasts ``[B, Q, H]``, one per level in :attr:`quantile_levels`."""
        raise ModelError(f"the {self.family} model gives point forecasts only; it has no quantiles")

    def forecast_and_quantiles(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``forward`` and :meth:`quantiles` from one pass: the point forecast of a quantile family is
        its median, so it is read out of the quantiles rather than computed again (the exported
        graph with both outputs runs the model once)."""
        quantiles = self.quantiles(context)
        return quantiles[:, self.median_index, :], quantiles

    @property
    def median_index(self) -> int:
        """Where the median (the point forecast) is among :attr:`quantile_levels`."""
        return self.quantile_levels.index(0.5)

    def training_loss(self, context: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The scalar loss this family trains on, for ``context [B, L]`` and ``target [B, H]``.

        Fine-tuning and the loss-guided pruning scores use it, so a family that was trained on its
        own objective (Chronos-Bolt's quantile loss) keeps it; the default is the MSE of the point
        forecast. Evaluation always uses MSE/MAE of :meth:`forward`, whatever this is.
        """
        return torch.square(self(context) - target).mean()

    @abstractmethod
    def config_dict(self) -> dict:
        """The family's own model config, as JSON-serialisable data (to rebuild the architecture)."""

    def example_input(self, batch_size: int = 2) -> torch.Tensor:
        """A real-shaped input, for tracing, MAC counting and export."""
        return torch.randn(batch_size, self.context_length)

    def pruning_spec(self) -> PruningSpec:
        """The structures compress may prune, read from the module as it is now (none by default)."""
        return PruningSpec(groups=())


class ModelAdapter(ABC):
    """Loads one TSFM family."""

    family: str
    default_model: str

    @abstractmethod
    def load(
        self,
        source: str,
        horizon: int | None = None,
        context_length: int | None = None,
        revision: str | None = None,
    ) -> ForecastModule:
        """Load ``source`` (HF id or local directory) as a forecast module for ``horizon`` steps;
        ``revision`` is a Hugging Face branch, tag or commit of an HF id."""

    @abstractmethod
    def from_config(self, config: dict, context_length: int, horizon: int) -> ForecastModule:
        """A randomly initialised module of the architecture ``config`` describes."""

    @abstractmethod
    def recognises(self, config: dict) -> bool:
        """Whether a Hugging Face ``config.json`` belongs to this family."""
