"""Turn a model's plain-data :class:`~prunecast.models.base.PruningSpec` into Torch-Pruning groups.

Torch-Pruning's tracer (``DependencyGraph``) cannot follow the reshapes and transposes of TSFMs
such as TTM's adaptive patching, so the coupling comes from the model's spec instead, and is
expressed as a ``torch_pruning`` :class:`Group`: one dependency per slice, each channel carrying
the index of the unit it belongs to (``root_idxs``). Torch-Pruning importances (magnitude,
Taylor, ours) then score units over every coupled slice, and its pruning functions remove them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch_pruning as tp
from torch import nn

from prunecast.models.base import Attribute, ForecastModule, PruneGroup, Slice

_OUT = {
    nn.Linear: tp.prune_linear_out_channels,
    nn.LayerNorm: tp.prune_layernorm_out_channels,
    nn.Embedding: tp.prune_embedding_out_channels,
}
_IN = {nn.Linear: tp.prune_linear_in_channels}


def slice_width(layer: nn.Module, sl: Slice) -> int:
    """Channels on the sliced axis of ``layer``."""
    if isinstance(layer, nn.LayerNorm):
        return int(layer.normalized_shape[-1])
    if isinstance(layer, nn.Embedding):
        return int(layer.embedding_dim)
    return int(layer.out_features if sl.axis == "out" else layer.in_features)


def unit_channels(width: int, units: int, unit: int, layout: str, chunks: int = 1) -> list[int]:
    """Channels of ``unit`` in an axis of ``width`` channels split into ``chunks`` equal parts,
    each shared among ``units`` units as ``layout`` says."""
    if width % (units * chunks):
        raise ValueError(f"axis of {width} channels cannot hold {units} equal units in {chunks} chunks")
    part = width // chunks
    repeat = part // units
    if layout == "interleaved":
        inside = [unit + k * units for k in range(repeat)]
    else:
        inside = [unit * repeat + k for k in range(repeat)]
    return [c * part + i for c in range(chunks) for i in inside]


def pruning_fn(layer: nn.Module, sl: Slice):
    table = _OUT if sl.axis == "out" else _IN
    for kind, fn in table.items():
        if isinstance(layer, kind):
            return fn
    raise ValueError(f"{sl.module}: cannot prune the {sl.axis} axis of a {type(layer).__name__}")


def tp_group(module: ForecastModule, group: PruneGroup, units: Sequence[int] | None = None) -> tp.Group:
    """A Torch-Pruning group covering ``units`` (all by default) of ``group`` in every slice."""
    units = list(range(group.units)) if units is None else list(units)
    layers = [module.get_submodule(sl.module) for sl in group.slices]
    root_fn = pruning_fn(layers[0], group.slices[0])
    root = tp.dependency.Node(layers[0], None, group.slices[0].module)
    out = tp.Group()
    for sl, layer in zip(group.slices, layers, strict=True):
        fn = pruning_fn(layer, sl)
        target = root if layer is layers[0] and fn is root_fn else tp.dependency.Node(layer, None, sl.module)
        width = slice_width(layer, sl)
        idxs, root_idxs = [], []
        for u in units:
            channels = unit_channels(width, group.units, u, sl.layout, sl.chunks)
            idxs += channels
            root_idxs += [u] * len(channels)
        out.add_dep(tp.dependency.Dependency(root_fn, fn, source=root, target=target), idxs)
        out[len(out) - 1].root_idxs = root_idxs
    return out


def remove_units(module: ForecastModule, group: PruneGroup, units: Sequence[int]) -> None:
    """Physically remove ``units`` of ``group`` from every slice, then update config and attributes.

    The model's spec must be re-read afterwards: unit counts and widths have changed.
    """
    units = sorted(set(units))
    if not units:
        return
    if len(units) > group.units - group.min_units:
        raise ValueError(
            f"{group.name}: removing {len(units)} of {group.units} units leaves < {group.min_units}"
        )
    for dep, idxs in tp_group(module, group, units):
        dep(idxs)
    kept = group.units - len(units)
    if group.config_key is not None:
        setattr(module.model.config, group.config_key, kept * group.config_scale)
    for attr in group.attributes:
        if isinstance(attr, str):
            attr = Attribute(attr, group.config_scale)
        set_attribute(module, attr.path, kept * attr.scale)


def set_attribute(root: object, path: str, value: int) -> None:
    """``root.<path> = value``; a frozen dataclass on the way (a layer's own config) is replaced
    by an updated copy, set on its owner in turn."""
    *owners, name = path.split(".")
    objects = [root]
    for part in owners:
        objects.append(getattr(objects[-1], part))
    for part, owner in zip(reversed([*owners, name]), reversed(objects), strict=True):
        if dataclasses.is_dataclass(owner) and owner.__dataclass_params__.frozen:
            value = dataclasses.replace(owner, **{part: value})
            continue
        setattr(owner, part, value)
        return
