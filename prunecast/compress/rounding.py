"""Round each pruned width to a multiple the backend runs fast, without crossing the budget.

Kernels vectorise over channels in steps of 4, 8 or 16, so a width of 39 can cost what 40 or
48 cost, or more. Once pruning has met the budget, every MLP hidden width and residual width is
moved to a multiple of 4, 8 or 16 next to it, as the latency model prices the candidates:

1. up, for free: the widest multiple above that the model predicts no slower than the pruned width;
2. up, within the budget: the next multiple of 4 above, cheapest seconds per unit first, while the
   whole model stays within the budget (the slack the last pruning step left);
3. otherwise down to the multiple of 4 below (fewer units, never slower), unless that crosses
   the group's floor.

Units come back in the reverse of the order they went (the last removed first: the best ranked
of those removed) and go in the order of their scores, and the model is rebuilt from the
unpruned copy with exactly those units, so every choice is recorded and reproducible.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

from prunecast.compress.blocks import without
from prunecast.compress.cost import LatencyModel
from prunecast.compress.discover import pruning_spec
from prunecast.compress.groups import remove_units
from prunecast.compress.measured import Delta, Shapes, moved, predict
from prunecast.models.base import ForecastModule, PruneGroup

QUANTA = (4, 8, 16)
ROUNDED_KINDS = ("mlp_hidden", "width")
"""Attention heads are whole heads already; their count is not a SIMD width."""


@dataclass
class UnitLedger:
    """Per group, the original indices of the units still present (in the module's order), and
    of those removed, in the order they went (within a step, lowest ranked first); and the blocks
    removed whole, in order."""

    kept: dict[str, list[int]] = field(default_factory=dict)
    removed: dict[str, list[int]] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)

    @classmethod
    def start(cls, groups: list[PruneGroup]) -> UnitLedger:
        return cls({g.name: list(range(g.units)) for g in groups}, {g.name: [] for g in groups})

    def remove(self, name: str, units: list[int]) -> None:
        """Record that the module's current ``units`` of group ``name`` went, in this order."""
        self.removed[name] += [self.kept[name][u] for u in units]
        gone = set(units)
        self.kept[name] = [u for i, u in enumerate(self.kept[name]) if i not in gone]

    def copy(self) -> UnitLedger:
        return UnitLedger(copy.deepcopy(self.kept), copy.deepcopy(self.removed), list(self.skipped))


@dataclass
class WidthRounding:
    """One group's width before and after rounding, and why (for the report)."""

    name: str
    kind: str
    pruned: int
    rounded: int
    quantum: int | None
    predicted_ms_change: float
    reason: str


def plan_rounding(
    latency: LatencyModel,
    shapes: Shapes,
    groups: list[PruneGroup],
    deltas: dict[str, Delta],
    floor: dict[str, int],
    original: dict[str, int],
    goal: float,
) -> list[WidthRounding]:
    """The rounded width of every group of a rounded kind, from the latency model's prices."""
    groups = [g for g in groups if g.kind in ROUNDED_KINDS and g.name in deltas]
    options = {g.name: _options(g.units, max(floor[g.name], g.min_units), original[g.name]) for g in groups}
    tables = [shapes] + [moved(shapes, deltas[g.name], m - g.units) for g in groups for m in options[g.name]]
    figures = iter(predict(latency, tables))
    now = next(figures)
    price = {g.name: {m: next(figures) - now for m in options[g.name]} for g in groups}
    chosen: dict[str, tuple[int, str]] = {}
    for g in groups:
        free = [m for m, d in price[g.name].items() if m > g.units and d <= 0]
        if free:
            chosen[g.name] = (max(free), "up: no slower")
    offers = []
    for g in groups:
        up = _next_multiple(g.units, 4)
        if g.name not in chosen and g.units % 4 and up in price[g.name]:
            offers.append((price[g.name][up] / (up - g.units), g, up))
    for _, g, up in sorted(offers, key=lambda o: o[0]):
        trial = {**chosen, g.name: (up, "up: within the budget")}
        if predict(latency, [_combined(shapes, groups, deltas, trial)])[0] <= goal:
            chosen = trial
    for g in groups:
        down = 4 * (g.units // 4)
        if g.name not in chosen and g.units % 4 and down in price[g.name]:
            chosen[g.name] = (down, "down: no budget to round up")
    out = []
    for g in groups:
        width, reason = chosen.get(g.name, (g.units, "kept" if g.units % 4 == 0 else "kept: at its floor"))
        out.append(
            WidthRounding(
                name=g.name,
                kind=g.kind,
                pruned=g.units,
                rounded=width,
                quantum=max((q for q in QUANTA if width % q == 0), default=None),
                predicted_ms_change=round(price[g.name].get(width, 0.0) * 1e3, 4),
                reason=reason,
            )
        )
    return out


def apply_rounding(
    module: ForecastModule,
    original: ForecastModule,
    ledger: UnitLedger,
    rounding: list[WidthRounding],
    drop_order: dict[str, list[int]],
) -> None:
    """Give ``module`` the rounded widths: restore the last-removed units or drop the lowest
    ranked (``drop_order``: current unit indices, lowest score first), then rebuild it from
    ``original`` with exactly the units kept."""
    changed = [r for r in rounding if r.rounded != r.pruned]
    if not changed:
        return
    for r in changed:
        if r.rounded > r.pruned:
            back = ledger.removed[r.name][-(r.rounded - r.pruned) :]
            ledger.removed[r.name] = ledger.removed[r.name][: -(r.rounded - r.pruned)]
            ledger.kept[r.name] = sorted(ledger.kept[r.name] + back)
        else:
            ledger.remove(r.name, drop_order[r.name][: r.pruned - r.rounded])
    module.model = rebuild(original, ledger).model


def rebuild(original: ForecastModule, ledger: UnitLedger) -> ForecastModule:
    """A copy of ``original`` without the blocks ``ledger`` skipped, holding exactly the units it
    keeps of each group left."""
    out = without(original, ledger.skipped)
    for name, kept in ledger.kept.items():
        group = {g.name: g for g in pruning_spec(out).groups}.get(name)
        if group is not None:  # None: the group was inside a block that went
            remove_units(out, group, sorted(set(range(group.units)) - set(kept)))
    return out


def _options(units: int, low: int, high: int) -> list[int]:
    """Multiples of each quantum next to ``units`` (below and above), within ``[low, high]``."""
    near = {q * (units // q) for q in QUANTA} | {_next_multiple(units, q) for q in QUANTA}
    return sorted(m for m in near if low <= m <= high and m != units)


def _next_multiple(units: int, q: int) -> int:
    return q * math.ceil(units / q) if units % q else units + q


def _combined(shapes: Shapes, groups: list[PruneGroup], deltas: dict[str, Delta], chosen: dict) -> Shapes:
    out = shapes
    for g in groups:
        if g.name in chosen:
            out = moved(out, deltas[g.name], chosen[g.name][0] - g.units)
    return out
