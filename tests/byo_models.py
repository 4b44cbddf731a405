"""User forecasters for the bring-your-own-model tests, importable by name (``tests.byo_models:X``)
so saved generic models can be rebuilt from their constructor."""

from __future__ import annotations

import torch
from torch import nn


class PatchMLP(nn.Module):
    """Patches -> Linear embedding -> residual MLP blocks with LayerNorm -> mean over patches ->
    Linear head: a small in-house forecaster, ``[B, L] -> [B, H]``."""

    def __init__(
        self, context_length: int = 32, horizon: int = 8, patch: int = 8, d: int = 12, hidden: int = 24
    ):
        super().__init__()
        self.patch = patch
        self.embed = nn.Linear(patch, d)
        self.blocks = nn.ModuleList(
            nn.ModuleDict({"norm": nn.LayerNorm(d), "fc1": nn.Linear(d, hidden), "fc2": nn.Linear(hidden, d)})
            for _ in range(2)
        )
        self.head = nn.Linear(d, horizon)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean, std = x.mean(-1, keepdim=True), x.std(-1, keepdim=True) + 1e-5
        z = self.embed(((x - mean) / std).unflatten(-1, (-1, self.patch)))
        for b in self.blocks:
            z = z + b["fc2"](torch.relu(b["fc1"](b["norm"](z))))
        return self.head(z.mean(1)) * std + mean


class GatedMLP(PatchMLP):
    """PatchMLP with a softmax gate over the features (as TTM's gated attention): removing a
    feature renormalises the gate, which masking cannot express."""

    def __init__(
        self, context_length: int = 32, horizon: int = 8, patch: int = 8, d: int = 12, hidden: int = 24
    ):
        super().__init__(context_length, horizon, patch, d, hidden)
        self.gate = nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.embed(x.unflatten(-1, (-1, self.patch)))
        z = z * torch.softmax(self.gate(z), dim=-1)
        for b in self.blocks:
            z = z + b["fc2"](torch.relu(b["fc1"](b["norm"](z))))
        return self.head(z.mean(1))


class PatchMixer(nn.Module):
    """Embedding, then a Linear across patches through a transpose (as TTM's patch mixer). With as
    many patches as features, the tracer maps features onto the patch mixer's input: a whole-axis
    layout that is wrong."""

    def __init__(self, context_length: int = 32, horizon: int = 8, patch: int = 8):
        super().__init__()
        self.patch = patch
        patches = context_length // patch
        self.embed = nn.Linear(patch, patches)  # d == patches
        self.mix = nn.Linear(patches, patches)
        self.head = nn.Linear(patches, horizon)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.embed(x.unflatten(-1, (-1, self.patch)))  # [B, P, d]
        z = z + self.mix(z.transpose(1, 2)).transpose(1, 2)
        return self.head(z.mean(1))
