"""Pruning against a :class:`~prunecast.compress.cost.LatencyModel`: seconds, not MAC estimates.

What a unit of a group costs is read off the model's own structure: a copy with ``k`` of the
group's units removed shows how every Linear's shape moves per unit (its own slices, and the
rows of others, as a residual width moves the rows of the layers that mix across it), so the
shapes of any candidate width follow by adding that change, and the latency model prices them.

Predictions are checked against measurements: when pruning meets the budget as predicted, the
model is measured (:func:`check`); if it is still over, the latency model learns from it and
pruning goes on, a few times at most.

Under ``torchrun`` the latency model runs on rank 0 alone (it measures on the machine) and every
rank receives its figures, so the ranks keep taking the same decisions.
"""

from __future__ import annotations

import copy

import torch

from prunecast.compress import distributed
from prunecast.compress.cost import LatencyModel, LinearShape, linear_shapes
from prunecast.compress.groups import remove_units
from prunecast.models.base import ForecastModule, PruneGroup

Shapes = dict[str, LinearShape]
Delta = dict[str, tuple[float, float, float]]

PROBE_UNITS = 8
"""Units removed to read a group's change per unit, and priced as one removal: single units are
below what a timer resolves, and SIMD kernels move in steps of several channels."""


def predict(latency: LatencyModel, tables: list[Shapes]) -> list[float]:
    """The latency model's seconds for each shape table, computed on rank 0 and shared."""
    values = [latency.seconds(t) for t in tables] if distributed.is_main() else [0.0] * len(tables)
    if distributed.world_size() == 1:
        return values
    return distributed.broadcast_tensor(torch.tensor(values, dtype=torch.float64)).tolist()


def check(latency: LatencyModel, module: ForecastModule) -> tuple[float, float]:
    """``(predicted, measured)`` seconds of ``module``: the prediction made before the latency
    model measures it (on rank 0, shared) and learns from the measurement."""
    predicted = predict(latency, [linear_shapes(module, latency.batch_size)])[0]
    measured = latency.calibrate(module) if distributed.is_main() else 0.0
    if distributed.world_size() > 1:
        measured = float(distributed.broadcast_tensor(torch.tensor([measured], dtype=torch.float64))[0])
    return predicted, measured


def unit_deltas(
    module: ForecastModule, groups: list[PruneGroup], floor: dict[str, int], batch: int
) -> dict[str, Delta]:
    """Per group, how each Linear's ``(rows, in, out)`` changes per unit removed (a group at
    its floor is probed with one unit it may not lose: the change per unit is the same)."""
    base = linear_shapes(module, batch)
    deltas: dict[str, Delta] = {}
    for g in groups:
        k = max(1, min(PROBE_UNITS, g.units - max(floor[g.name], g.min_units)))
        if g.units - k < g.min_units:
            continue
        probe = copy.deepcopy(module)
        remove_units(probe, g, list(range(g.units - k, g.units)))
        after = linear_shapes(probe, batch)
        deltas[g.name] = {
            n: tuple((b - a) / k for b, a in zip(base[n], after[n], strict=True))
            for n in base
            if n in after and base[n] != after[n]
        }
    return deltas


def moved(shapes: Shapes, delta: Delta, units: float) -> Shapes:
    """``shapes`` with ``units`` more units of the group ``delta`` describes (negative: fewer)."""
    out = dict(shapes)
    for name, d in delta.items():
        out[name] = tuple(max(1, round(v + units * dv)) for v, dv in zip(shapes[name], d, strict=True))
    return out


def seconds_per_unit(
    latency: LatencyModel,
    shapes: Shapes,
    groups: list[PruneGroup],
    deltas: dict[str, Delta],
    floor: dict[str, int],
) -> dict[str, float]:
    """Seconds one unit of each group saves: the prediction for removing ``PROBE_UNITS`` of it
    (as many as it may lose) from ``shapes``, per unit; 0 for a group that cannot shrink."""
    probes = {
        g.name: min(PROBE_UNITS, g.units - floor[g.name])
        for g in groups
        if g.name in deltas and g.units > floor[g.name]
    }
    names = list(probes)
    figures = predict(latency, [shapes] + [moved(shapes, deltas[n], -probes[n]) for n in names])
    now = figures[0]
    saved = {g.name: 0.0 for g in groups}
    for name, after in zip(names, figures[1:], strict=True):
        saved[name] = (now - after) / probes[name]
    return saved
