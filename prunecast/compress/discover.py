"""Pruning groups found by tracing: Torch-Pruning's ``DependencyGraph``, each group checked for
exact removal before it is offered.

Hand-written specs (:meth:`~prunecast.models.base.ForecastModule.pruning_spec`) exist because the
tracer can mis-map channels through reshapes, transposes and broadcasts (TTM's adaptive patching)
and then silently yields a wrong model. A module that sets ``traced_coupling`` (a wrapped user
model, PatchTST, PatchTSMixer) gets its groups from the tracer instead, and each candidate is kept
only if removing a few of its units on a copy gives exactly what the original computes with those
units masked out (:func:`check_group`). A group that fails is dropped, with the reason, in
:attr:`Discovery.dropped`; the prune report lists them. The check is conservative: an op that
normalises over the pruned axis which the masked reference cannot see (a softmax over features)
fails it, and the group is dropped rather than trusted.

This lives in compress because it is about pruning; models only declare ``traced_coupling``.
"""

from __future__ import annotations

import copy
import warnings
import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn

from prunecast.compress.groups import remove_units, slice_width, unit_channels
from prunecast.models.base import ForecastModule, PruneGroup, PruningSpec, Slice

SLICEABLE = (nn.Linear, nn.LayerNorm, nn.Embedding)
"""Layers a :class:`~prunecast.models.base.Slice` can cut; a traced group touching any other
weight (a bare ``nn.Parameter``, a BatchNorm, a Conv) is dropped."""


@dataclass(frozen=True)
class DroppedGroup:
    """A traced group that is not offered, and why."""

    name: str
    reason: str


@dataclass(frozen=True)
class Discovery:
    """What tracing found: the groups that passed the exactness check and those dropped."""

    groups: tuple[PruneGroup, ...]
    dropped: tuple[DroppedGroup, ...]


@dataclass(frozen=True)
class _Template:
    """A checked group, by layer paths, with how many channels of its first slice one unit owns:
    the group's current unit count is re-read from the layer after every removal."""

    group: PruneGroup
    per_unit: int


_CACHE: weakref.WeakKeyDictionary[ForecastModule, tuple[tuple[_Template, ...], tuple[DroppedGroup, ...]]]
_CACHE = weakref.WeakKeyDictionary()


def pruning_spec(module: ForecastModule) -> PruningSpec:
    """Every group compress may prune in ``module``: its own spec, plus, for a module that sets
    ``traced_coupling``, the traced groups that passed the check and share no slice with it (a
    hand-written group, such as PatchTST's attention heads, wins over the tracer's)."""
    own = module.pruning_spec()
    if not getattr(module, "traced_coupling", False):
        return own
    return PruningSpec(groups=own.groups + _traced(module, own).groups, blocks=own.blocks)


def dropped_groups(module: ForecastModule) -> tuple[DroppedGroup, ...]:
    """The traced groups of ``module`` that were not offered, with the reason (none for a spec)."""
    if not getattr(module, "traced_coupling", False):
        return ()
    return _traced(module, module.pruning_spec()).dropped


def _traced(module: ForecastModule, own: PruningSpec) -> Discovery:
    """The traced groups, discovered and checked once per module, re-sized to its current widths."""
    if module not in _CACHE:
        taken = {(sl.module, sl.axis) for g in own.groups for sl in g.slices}
        found = discover(module)
        templates, dropped = [], list(found.dropped)
        for g in found.groups:
            if any((sl.module, sl.axis) in taken for sl in g.slices):
                dropped.append(DroppedGroup(g.name, "overlaps a group of the model's own spec"))
                continue
            width = slice_width(module.get_submodule(g.slices[0].module), g.slices[0])
            templates.append(_Template(g, width // g.units))
        _CACHE[module] = (tuple(templates), tuple(dropped))
    templates, dropped = _CACHE[module]
    groups = []
    for t in templates:
        first = t.group.slices[0]
        units = slice_width(module.get_submodule(first.module), first) // t.per_unit
        groups.append(PruneGroup(**{**t.group.__dict__, "units": units}))
    return Discovery(tuple(groups), dropped)


def discover(module: ForecastModule, probe: torch.Tensor | None = None) -> Discovery:
    """Trace ``module`` on a real-shaped input, turn each DependencyGraph group into a
    :class:`PruneGroup` and keep those that pass :func:`check_group` on ``probe`` (by default 8
    random contexts, fixed seed)."""
    modes = {m: m.training for m in module.modules()}  # restored exactly: a wrapper's flag may differ
    module.eval()
    try:
        with warnings.catch_warnings():
            # Torch-Pruning warns that it would prune a bare nn.Parameter (PatchTST's position
            # encoding) along its last axis; prunecast never does: such groups are dropped below.
            warnings.filterwarnings("ignore", "Unwrapped parameters detected", UserWarning)
            graph = tp.DependencyGraph().build_dependency(module, example_inputs=module.example_input(2))
        candidates: list[PruneGroup] = []
        dropped: list[DroppedGroup] = []
        for tp_group in graph.get_all_groups(root_module_types=SLICEABLE):
            group = _as_prune_group(module, graph, tp_group)
            if isinstance(group, DroppedGroup):
                dropped.append(group)
            else:
                candidates.append(group)
        if probe is None:
            probe = torch.randn(8, module.context_length, generator=torch.Generator().manual_seed(0))
        kept = []
        for group in candidates:
            reason = check_group(module, group, probe)
            if reason is None:
                kept.append(group)
            else:
                dropped.append(DroppedGroup(group.name, reason))
    finally:
        for m, training in modes.items():
            m.training = training
    return Discovery(tuple(kept), tuple(dropped))


def _as_prune_group(module: ForecastModule, graph: tp.DependencyGraph, tp_group) -> PruneGroup | DroppedGroup:
    """One traced group as plain slices, or why it cannot be one."""
    names = {m: n for n, m in module.named_modules()}
    root = tp_group[0].dep.target.module
    name = names.get(root, type(root).__name__)
    units = len(tp_group[0].idxs)
    channels: dict[tuple[str, str], tuple[list[int], list[int]]] = {}
    for item in tp_group:
        target = item.dep.target
        if target.type == tp.ops.OPTYPE.OUTPUT:
            return DroppedGroup(name, "its channels reach the model's output (the forecast steps)")
        layer = target.module
        if isinstance(layer, nn.Parameter):
            pname = graph._param_to_name.get(layer, "a parameter")
            return DroppedGroup(name, f"couples {pname}, a bare nn.Parameter, which prunecast does not slice")
        if layer not in names:
            continue  # a traced op (reshape, add, activation) that holds no weights
        if not isinstance(layer, SLICEABLE):
            if any(True for _ in layer.parameters(recurse=False)):
                kind = type(layer).__name__
                return DroppedGroup(name, f"couples {names[layer]}, a {kind}, which prunecast does not slice")
            continue
        axis = "out" if graph.is_out_channel_pruning_fn(item.dep.handler) else "in"
        idxs, roots = channels.setdefault((names[layer], axis), ([], []))
        idxs += list(item.idxs)
        roots += list(item.root_idxs)
    slices = []
    for (path, axis), (idxs, roots) in channels.items():
        sl = _fit_layout(module.get_submodule(path), path, axis, units, idxs, roots)
        if sl is None:
            return DroppedGroup(
                name,
                f"the tracer's channels of {path} ({axis}) are not a whole-axis "
                "interleaved or blocked layout of the root's units",
            )
        slices.append(sl)
    kinds = {type(module.get_submodule(sl.module)) for sl in slices}
    outs = sum(sl.axis == "out" for sl in slices)
    mlp = kinds == {nn.Linear} and outs == 1
    return PruneGroup(
        name=name,
        kind="mlp_hidden" if mlp else "width",
        units=units,
        slices=tuple(slices),
        exact_by_zeroing=nn.LayerNorm not in kinds,
    )


def _fit_layout(
    layer: nn.Module, path: str, axis: str, units: int, idxs: list[int], roots: list[int]
) -> Slice | None:
    """The :class:`Slice` whose layout puts every traced channel with its root unit, if any does."""
    width = slice_width(layer, Slice(path, axis))  # type: ignore[arg-type]
    if sorted(idxs) != list(range(width)) or width % units:
        return None
    by_unit: dict[int, list[int]] = {}
    for i, r in zip(idxs, roots, strict=True):
        by_unit.setdefault(r, []).append(i)
    for layout in ("interleaved", "blocked"):
        if all(sorted(by_unit.get(u, [])) == unit_channels(width, units, u, layout) for u in range(units)):
            return Slice(path, axis, layout)  # type: ignore[arg-type]
    return None


def check_group(
    module: ForecastModule, group: PruneGroup, probe: torch.Tensor, removed: Sequence[int] | None = None
) -> str | None:
    """None if removing ``removed`` units of ``group`` (by default up to three, spread over the axis)
    on a copy of ``module`` gives, on ``probe``, what the original gives with those units masked
    (:func:`masked_reference`), in float64 to 1e-6 of the output scale; else the reason it does not."""
    if group.units - group.min_units < 1:
        return f"{group.units} unit(s): nothing to remove"
    if removed is None:
        removed = sorted({0, group.units // 2, group.units - 1})[: group.units - group.min_units]
    probe = probe.double()
    pruned = copy.deepcopy(module).double().eval()
    try:
        remove_units(pruned, group, removed)
        with torch.no_grad():
            got = pruned(probe)
    except Exception as exc:  # noqa: BLE001 - any failure means the group cannot be removed cleanly
        return f"removing units fails: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    with torch.no_grad():
        want = masked_reference(module, group, removed).double()(probe)
    if got.shape != want.shape:
        return f"removing units changes the output shape {tuple(want.shape)} -> {tuple(got.shape)}"
    err = float((got - want).abs().max())
    scale = max(1.0, float(want.abs().max()))
    if not err <= 1e-6 * scale:  # also catches NaN
        return (
            f"removal differs from the masked original by {err:.3g} (scale {scale:.3g}): "
            "channels mis-mapped, or an op (softmax, norm) normalises over the axis"
        )
    return None


class _KeptLayerNorm(nn.Module):
    """A LayerNorm that normalises over its kept channels only and outputs 0 on the removed ones:
    what a LayerNorm of the kept width computes, embedded back into the full width."""

    def __init__(self, norm: nn.LayerNorm, keep: torch.Tensor):
        super().__init__()
        self.norm = norm
        self.register_buffer("keep", keep)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        idx = self.keep.nonzero().squeeze(-1)
        weight = None if self.norm.weight is None else self.norm.weight[idx]
        bias = None if self.norm.bias is None else self.norm.bias[idx]
        kept = nn.functional.layer_norm(x.index_select(-1, idx), (len(idx),), weight, bias, self.norm.eps)
        return torch.zeros_like(x).index_copy(-1, idx, kept)


def masked_reference(module: ForecastModule, group: PruneGroup, removed: Sequence[int]) -> ForecastModule:
    """A copy of ``module`` in which ``removed`` units of ``group`` are masked out: their Linear
    rows, biases and columns and Embedding columns zeroed, and every LayerNorm on the axis
    normalising over the kept channels only. Where that is all the coupling, pruning the units
    must reproduce it exactly."""
    ref = copy.deepcopy(module).eval()
    with torch.no_grad():
        for sl in group.slices:
            layer = ref.get_submodule(sl.module)
            width = slice_width(layer, sl)
            gone = sorted(
                c for u in removed for c in unit_channels(width, group.units, u, sl.layout, sl.chunks)
            )
            if isinstance(layer, nn.LayerNorm):
                keep = torch.ones(width, dtype=torch.bool)
                keep[gone] = False
                parent, _, attr = sl.module.rpartition(".")
                setattr(ref.get_submodule(parent), attr, _KeptLayerNorm(layer, keep))
            elif isinstance(layer, nn.Embedding):
                layer.weight[:, gone] = 0
            elif sl.axis == "out":
                layer.weight[gone] = 0
                if layer.bias is not None:
                    layer.bias[gone] = 0
            else:
                layer.weight[:, gone] = 0
    return ref
