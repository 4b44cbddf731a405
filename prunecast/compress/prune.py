"""``prune(module, train, val, config)``: progressive, loss-guided structured pruning to a budget.

Each step scores every unit of every prunable group (MLP hidden channels, attention heads,
residual widths, from the model's :class:`~prunecast.models.base.PruningSpec`), and every residual
block the spec lets go whole (:mod:`prunecast.compress.blocks`), on fresh training batches, smooths
the scores with an EMA across steps, ranks all units of all groups globally, and
physically removes the lowest-ranked ``step_fraction`` of the remaining units (fewer in the last
step, just enough to meet the budget). By default a unit's rank is its loss change per MAC (or
parameter) it saves, so a wide, cheap-to-lose residual unit and a narrow MLP channel are compared
on what they buy. Validation loss is tracked after every step; with a ``tolerance`` pruning stops
once it degrades past ``(1 + tolerance) *`` the starting loss and the last state within it is kept.
With ``recovery_windows``, the model trains briefly after every step (gradual pruning; on the
truth, or blended with the unpruned model's forecast), so each step scores and removes units of a
model that has recovered from the last.

``target="latency"`` budgets and ranks by seconds a :class:`~prunecast.compress.cost.LatencyModel`
predicts on the serving backend (``prunecast.bench.latency_model.MeasuredLatency`` measures its
building blocks there), and ends by rounding each width to a multiple that backend runs fast
(:mod:`prunecast.compress.rounding`); ``latency-estimate`` keeps the MAC-based estimate.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np
import torch
import torch_pruning as tp
from torch import nn

from prunecast.common.defaults import DEFAULT_BUDGET, IMPORTANCES, TARGETS, UNIT_KINDS
from prunecast.common.progress import progress
from prunecast.compress import blocks as depth
from prunecast.compress import distributed
from prunecast.compress.cost import (
    ACTIVATION_COST,
    LatencyModel,
    count_macs,
    count_params,
    latency_cost,
    linear_rows,
    linear_shapes,
)
from prunecast.compress.discover import DroppedGroup, dropped_groups, pruning_spec
from prunecast.compress.groups import remove_units, slice_width, tp_group
from prunecast.compress.importance import LossGuidedImportance
from prunecast.compress.measured import Delta, check, predict, seconds_per_unit, unit_deltas
from prunecast.compress.rounding import UnitLedger, WidthRounding, apply_rounding, plan_rounding
from prunecast.compress.training import Targets, sample_indices, tensors, train_windows, val_loss
from prunecast.data.windows import Windows
from prunecast.models.base import ForecastModule, PruneGroup


@dataclass
class PruneConfig:
    """How far and how to prune. Defaults suit TTM r2 on ETTh1-96 within a few minutes on 2 cores."""

    budget: float = DEFAULT_BUDGET
    """Fraction of the original ``target`` to keep: 0.5 means 2x fewer."""
    target: Literal["latency", "latency-estimate", "macs", "params"] = "latency-estimate"
    """``latency-estimate`` (the library's default, needing nothing but the module): estimated CPU
    cost, MACs plus the elementwise work on activations
    (:func:`~prunecast.compress.cost.latency_cost`); ``latency`` (what ``prunecast prune`` and
    ``prunecast run`` default to): seconds on the serving backend, as the ``latency`` model given to :func:`prune`
    predicts them from measured blocks; ``macs``: Linear MACs alone; ``params``: parameter count."""
    importance: Literal["loss", "loss2", "magnitude"] = "loss"
    """``loss``: first-order mask score; ``loss2``: with per-sample second-order term;
    ``magnitude``: Torch-Pruning's group L2 magnitude (the ablation)."""
    kinds: tuple[str, ...] = UNIT_KINDS
    """Unit kinds that may go: MLP hidden channels, attention heads, residual widths, and whole
    residual blocks (depth pruning, :mod:`prunecast.compress.blocks`; scored by the loss
    importances only, not ``magnitude``)."""
    step_fraction: float = 0.1
    """Share of the remaining prunable units removed per step."""
    max_steps: int = 30
    macro_batch: int = 512
    """Training windows whose accumulated gradient scores one step (under ``torchrun``, split
    evenly over the processes, so it must be a multiple of their number)."""
    micro_batch: int = 128
    """Windows per forward/backward pass while accumulating (per process: memory, not results)."""
    per_sample_batch: int = 64
    """``loss2`` only: windows whose per-sample gradients give the second-order term (split
    over the processes like ``macro_batch``)."""
    ema_alpha: float = 0.5
    """Weight of the previous steps' scores in the EMA (0: use only the fresh scores)."""
    min_keep_fraction: float = 0.1
    """Never prune a group below this share of its original units."""
    cost_normalized: bool = True
    """Rank by ``|score| / cost`` (loss change per MAC or parameter saved) instead of ``|score|``."""
    val_windows: int | None = 4096
    """Validation windows (a fixed random subset) for the per-step loss; None for all."""
    recovery_windows: int = 0
    """Training windows (a fresh random draw each step) the model trains on after every step,
    before the next one scores it; 0 prunes without training in between."""
    recovery_lr: float = 1e-3
    """Adam's learning rate for the recovery training (a fresh optimiser each step: the shapes changed)."""
    recovery_batch: int = 64
    """Windows per recovery optimiser step (over all processes under ``torchrun``)."""
    recovery_distill: float = 0.0
    """Weight of the unpruned model's forecast in the recovery targets (as ``FinetuneConfig.distill``;
    0: the truth alone)."""
    tolerance: float | None = None
    """Stop once val loss exceeds ``(1 + tolerance) *`` the starting loss; None never stops early."""
    round_widths: bool = True
    """``latency`` target: end by rounding each width to a multiple of 4, 8 or 16 the latency model
    prices well, within the budget (:mod:`prunecast.compress.rounding`)."""
    seed: int = 0
    show_progress: bool | None = None

    def check(self) -> None:
        if not 0 < self.budget <= 1:
            raise ValueError(
                f"budget must be in (0, 1] (fraction of {self.target} to keep), got {self.budget}"
            )
        if self.target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}, got {self.target!r}")
        if self.importance not in IMPORTANCES:
            raise ValueError(f"importance must be one of {IMPORTANCES}, got {self.importance!r}")
        if not 0 < self.step_fraction <= 1:
            raise ValueError(f"step_fraction must be in (0, 1], got {self.step_fraction}")
        if not 0 <= self.ema_alpha < 1:
            raise ValueError(f"ema_alpha must be in [0, 1), got {self.ema_alpha}")
        if (
            self.macro_batch < 1
            or self.micro_batch < 1
            or self.per_sample_batch < 1
            or self.recovery_batch < 1
        ):
            raise ValueError("batch sizes must be positive")
        if self.recovery_windows < 0:
            raise ValueError(f"recovery_windows must be 0 or more, got {self.recovery_windows}")
        if not 0 <= self.recovery_distill <= 1:
            raise ValueError(f"recovery_distill must be in [0, 1], got {self.recovery_distill}")
        if self.recovery_windows and self.recovery_lr <= 0:
            raise ValueError(f"recovery_lr must be positive, got {self.recovery_lr}")
        if self.recovery_windows:
            distributed.check_divides(self.recovery_batch, "recovery_batch")
        if self.recovery_windows and self.target == "latency" and self.round_widths:
            raise ValueError(
                "recovery_windows with target 'latency' and round_widths: rounding rebuilds the model "
                "from the unpruned weights, which would discard the recovery training; set "
                "round_widths=False or recovery_windows=0"
            )
        if self.importance != "magnitude":
            distributed.check_divides(self.macro_batch, "macro_batch")
        if self.importance == "loss2":
            distributed.check_divides(self.per_sample_batch, "per_sample_batch")


@dataclass
class LayerWidth:
    """Units of one group before and after pruning (for a kept-fraction-per-layer plot)."""

    name: str
    kind: str
    original: int
    kept: int


@dataclass
class PruneStep:
    step: int
    removed: dict[str, int]
    params: int
    macs: int
    val_loss: float
    seconds: float
    predicted_ms: float | None = None
    """``latency`` target: the latency model's prediction after the step."""


@dataclass
class PruneReport:
    module: ForecastModule
    config: PruneConfig
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    val_loss_before: float
    val_loss_after: float
    seconds: float
    stopped_early: bool
    steps: list[PruneStep] = field(default_factory=list)
    layers: list[LayerWidth] = field(default_factory=list)
    dropped: list[DroppedGroup] = field(default_factory=list)
    """Traced groups not offered (failed the exactness check, or cannot be sliced), with why."""
    latency: dict | None = None
    """``latency`` target: predicted ms before, at the goal and after, the latency model's fit."""
    rounding: list[WidthRounding] = field(default_factory=list)
    blocks_removed: list[str] = field(default_factory=list)
    """Residual blocks removed whole (depth pruning), in the order they went."""

    def to_dict(self) -> dict:
        """Everything but the module, as JSON-serialisable data."""
        out: dict = {}
        for name in self.__dataclass_fields__:
            if name == "module":
                continue
            value = getattr(self, name)
            if name == "config":
                value = asdict(value)
            elif name in ("steps", "layers", "dropped", "rounding"):
                value = [asdict(v) for v in value]
            out[name] = value
        out["macs_reduction"] = self.macs_before / max(self.macs_after, 1)
        out["params_reduction"] = self.params_before / max(self.params_after, 1)
        return out


def prune(
    module: ForecastModule,
    train: Windows,
    val: Windows,
    config: PruneConfig | None = None,
    latency: LatencyModel | None = None,
) -> PruneReport:
    """Prune ``module`` in place until ``config.budget`` of its latency (as ``latency`` predicts
    it on the serving backend), estimated latency, MACs or parameters is left."""
    config = config or PruneConfig()
    config.check()
    if config.target == "latency" and latency is None:
        raise ValueError(
            "target 'latency' measures on the serving backend: pass latency="
            "MeasuredLatency(module, LatencySettings(...)) (prunecast.bench.latency_model), "
            "or use target 'latency-estimate'"
        )
    start = time.perf_counter()
    groups = _groups(module, config.kinds)
    dropped = dropped_groups(module)
    if not groups and not _blocks(module, config):
        raise ValueError(f"{module.family} offers no prunable groups or blocks of kinds {config.kinds}")
    original = {g.name: g.units for g in groups}
    kinds = {g.name: g.kind for g in groups}
    floor = {g.name: max(g.min_units, math.ceil(config.min_keep_fraction * g.units), 1) for g in groups}
    unpruned = copy.deepcopy(module) if config.target == "latency" and config.round_widths else None
    ledger = UnitLedger.start(groups)
    recovery_target = None
    if config.recovery_windows:
        teacher = copy.deepcopy(module).eval() if config.recovery_distill > 0 else None
        recovery_target = Targets(teacher, config.recovery_distill)
    val_idx = sample_indices(val, config.val_windows, config.seed)
    params0, macs0 = count_params(module), count_macs(module)
    loss0 = val_loss(module, val, val_idx)
    metric0 = _measure(module, config.target, latency)
    goal = config.budget * metric0
    ema: dict[str, torch.Tensor] = {}
    # each group's per-unit change of every Linear's shape: the same at any width (each dimension of
    # a Linear is one group's width, times constants), so probed once per group, not every step
    deltas: dict[str, Delta] = {}
    steps: list[PruneStep] = []
    stopped_early = False
    show = distributed.show_progress(config.show_progress)
    bar = progress(range(config.max_steps), config.max_steps, "prune", show)
    checks: list[dict] = []
    for step in bar:
        metric = _measure(module, config.target, latency)
        if latency is not None and _check_due(metric, goal, checks):
            checks.append(_check(module, latency, config.kinds, step, _level(metric, goal)))
            if checks[-1]["measured_ms"] <= goal * 1e3 * (1 + CHECK_SLACK):
                break  # at the goal as measured
            metric = _measure(module, config.target, latency)  # the latency model has learnt it
        if metric <= goal:
            break
        step_start = time.perf_counter()
        groups = _groups(module, config.kinds)
        blocks = _blocks(module, config)
        scores = _scores(module, groups, blocks, train, config, seed=config.seed * 1000 + step)
        for name, fresh in scores.items():
            prev = ema.get(name)
            ema[name] = fresh if prev is None else config.ema_alpha * prev + (1 - config.ema_alpha) * fresh
        costs = _unit_costs(module, groups, floor, config.target, latency, deltas)
        costs |= depth.block_savings(module, blocks, lambda m: _measure(m, config.target, latency))
        chosen = _agree(groups, blocks, _choose(groups, blocks, ema, floor, metric - goal, costs, config))
        gone = [b for b in blocks if chosen.pop(b, None)]
        if not any(chosen.values()) and not gone:
            break
        snapshot = (copy.deepcopy(module.model), ledger.copy()) if config.tolerance is not None else None
        for name, units in chosen.items():
            if units:
                group = {g.name: g for g in _groups(module, config.kinds)}[name]
                remove_units(module, group, units)
                ledger.remove(name, units)
                keep = torch.tensor(sorted(set(range(group.units)) - set(units)))
                ema[name] = ema[name][keep]
        for b in gone:  # after the units: a group inside a block is still in the spec until it goes
            depth.skip_block(module, b)
            ledger.skipped.append(b)
        if gone:
            deltas.clear()  # every group's per-unit shape change is re-read on the smaller model
        if recovery_target is not None:
            _recover(module, train, config, recovery_target, seed=10**6 + config.seed * 1000 + step)
        loss = val_loss(module, val, val_idx)
        steps.append(
            PruneStep(
                step=step,
                removed={k: len(v) for k, v in chosen.items() if v} | {b: 1 for b in gone},
                params=count_params(module),
                macs=count_macs(module),
                val_loss=loss,
                seconds=time.perf_counter() - step_start,
                predicted_ms=_measure(module, "latency", latency) * 1e3 if latency is not None else None,
            )
        )
        if config.tolerance is not None and loss > loss0 * (1 + config.tolerance):
            module.model, ledger = snapshot
            stopped_early = True
            break
    rounding: list[WidthRounding] = []
    if unpruned is not None:
        rounding = _round(module, unpruned, ledger, ema, floor, original, latency, goal, config.kinds, deltas)
    final = {g.name: g.units for g in _groups(module, config.kinds)}
    rounded = bool(rounding) and any(r.rounded != r.pruned for r in rounding)
    return PruneReport(
        module=module,
        config=config,
        params_before=params0,
        params_after=count_params(module),
        macs_before=macs0,
        macs_after=count_macs(module),
        val_loss_before=loss0,
        val_loss_after=val_loss(module, val, val_idx)
        if stopped_early or rounded
        else (steps[-1].val_loss if steps else loss0),
        seconds=time.perf_counter() - start,
        stopped_early=stopped_early,
        steps=steps,
        layers=[LayerWidth(n, kinds[n], original[n], final.get(n, 0)) for n in original],
        dropped=list(dropped),
        latency=None
        if latency is None
        else _latency_summary(module, latency, metric0, goal, checks, config.kinds),
        rounding=rounding,
        blocks_removed=list(ledger.skipped),
    )


CHECK_AT = (2.0, 1.4, 1.15, 1.0)
"""``latency`` target: pruning measures the model it reached when the prediction first falls to
these multiples of the goal (and every time it meets the goal), and the latency model learns from
each measurement: a prediction is surest near a model measured, so the last steps, where the
budget is decided, are priced from one measured close by."""
MAX_CHECKS = 6
CHECK_SLACK = 0.05
"""A measured latency this far over the goal passes the check: timer noise, not a miss."""


def _level(metric: float, goal: float) -> int:
    return sum(metric <= goal * c for c in CHECK_AT)


def _check_due(metric: float, goal: float, checks: list[dict]) -> bool:
    if len(checks) >= MAX_CHECKS:
        return False
    return metric <= goal or _level(metric, goal) > max((c["level"] for c in checks), default=0)


def _check(
    module: ForecastModule, latency: LatencyModel, kinds: tuple[str, ...], step: int, level: int
) -> dict:
    """Measure the model pruning reached, beside what the latency model predicted for it."""
    predicted, measured = check(latency, module)
    widths = {g.name: g.units for g in _groups(module, kinds)}
    return {
        "step": step,
        "level": level,
        "predicted_ms": round(predicted * 1e3, 4),
        "measured_ms": round(measured * 1e3, 4),
        "widths": widths,
    }


def _latency_summary(
    module: ForecastModule,
    latency: LatencyModel,
    metric0: float,
    goal: float,
    checks: list[dict],
    kinds: tuple[str, ...],
) -> dict:
    """The report's latency block: predicted before and at the goal, every check on the way, and
    the final model's prediction (made before it was measured) beside its measurement."""
    widths = {g.name: g.units for g in _groups(module, kinds)}
    last = checks[-1] if checks and checks[-1]["widths"] == widths else _check(module, latency, kinds, -1, 0)
    return {
        "predicted_ms_before": round(metric0 * 1e3, 4),
        "goal_ms": round(goal * 1e3, 4),
        "checks": [{k: v for k, v in c.items() if k not in ("widths", "level")} for c in checks],
        "predicted_ms_after": last["predicted_ms"],
        "realised_ms_after": last["measured_ms"],
        "realised_over_predicted": round(last["measured_ms"] / max(last["predicted_ms"], 1e-9), 4),
        **({"model": latency.to_dict()} if hasattr(latency, "to_dict") and distributed.is_main() else {}),
    }


def _round(
    module: ForecastModule,
    unpruned: ForecastModule,
    ledger: UnitLedger,
    ema: dict[str, torch.Tensor],
    floor: dict[str, int],
    original: dict[str, int],
    latency: LatencyModel,
    goal: float,
    kinds: tuple[str, ...],
    deltas: dict[str, Delta],
) -> list[WidthRounding]:
    """Round the widths of ``module`` (see :mod:`prunecast.compress.rounding`) and return the plan."""
    groups = _groups(module, kinds)
    shapes = linear_shapes(module, latency.batch_size)
    deltas = _deltas(module, groups, floor, latency.batch_size, deltas)
    plan = plan_rounding(latency, shapes, groups, deltas, floor, original, goal)
    order = {
        g.name: torch.argsort(ema[g.name].abs()).tolist() if g.name in ema else list(range(g.units))
        for g in groups
    }
    apply_rounding(module, unpruned, ledger, plan, order)
    return plan


def _recover(module: ForecastModule, train: Windows, config: PruneConfig, target: Targets, seed: int) -> None:
    """Train ``module`` on ``config.recovery_windows`` fresh training windows."""
    opt = torch.optim.Adam(module.parameters(), lr=config.recovery_lr)
    indices = sample_indices(train, config.recovery_windows, seed)
    train_windows(module, train, indices, opt, config.recovery_batch, seed, target)


def _measure(module: ForecastModule, target: str, latency: LatencyModel | None = None) -> float:
    """The quantity the budget is a fraction of (seconds for ``latency``)."""
    if target == "latency":
        return predict(latency, [linear_shapes(module, latency.batch_size)])[0]
    if target == "latency-estimate":
        return latency_cost(module)
    return count_macs(module) if target == "macs" else count_params(module)


def _groups(module: ForecastModule, kinds: tuple[str, ...]) -> list[PruneGroup]:
    return [g for g in pruning_spec(module).groups if g.kind in kinds]


def _blocks(module: ForecastModule, config: PruneConfig) -> tuple[str, ...]:
    """The blocks that may go whole: with the ``block`` kind and a loss importance (magnitude has
    no block score)."""
    if depth.KIND not in config.kinds or config.importance == "magnitude":
        return ()
    return pruning_spec(module).blocks


def _scores(
    module: ForecastModule,
    groups: list[PruneGroup],
    blocks: tuple[str, ...],
    train: Windows,
    config: PruneConfig,
    seed: int,
) -> dict[str, torch.Tensor]:
    """Signed (loss) or non-negative (magnitude) scores per unit of every group, on fresh batches,
    and each block's (one unit: its first-order score, from the same passes; for ``loss2`` too)."""
    if config.importance == "magnitude":
        magnitude = tp.importance.GroupMagnitudeImportance(p=2, group_reduction="sum", normalizer="mean")
        return {g.name: magnitude(tp_group(module, g))[: g.units].double() for g in groups}
    was_training = module.training
    module.eval()  # score the deterministic network, without dropout noise
    importance = LossGuidedImportance(second_order=config.importance == "loss2")
    idx = sample_indices(train, config.macro_batch, seed)
    module.zero_grad(set_to_none=True)
    if importance.second_order:
        importance.per_sample_grads = per_sample_gradients(
            module, *tensors(train, distributed.shard(idx[: config.per_sample_batch]))
        )
    # each rank accumulates its share of the macro batch, weighted by its share of the whole,
    # so the gradients summed over the ranks are the macro batch's (loss2 reads them for blocks only)
    passes = not importance.second_order or bool(blocks)
    local = distributed.shard(idx) if passes else []
    with depth.recording_scores(module, blocks) as block_scores:
        for i in range(0, len(local), config.micro_batch):
            x, y = tensors(train, local[i : i + config.micro_batch])
            loss = module.training_loss(x, y) * (len(x) / len(idx))
            loss.backward()
    if not importance.second_order:
        distributed.all_reduce_gradients(module.parameters())
    scores = {g.name: importance.signed(tp_group(module, g), g.units) for g in groups}
    if blocks:
        summed = distributed.all_reduce_tensor(torch.stack([block_scores[b] for b in blocks]))
        scores |= {b: summed[i : i + 1] for i, b in enumerate(blocks)}
    module.zero_grad(set_to_none=True)
    module.train(was_training)
    return scores


class _TrainingLoss(nn.Module):
    """``module.training_loss`` as a forward, so ``torch.func.functional_call`` can run it."""

    def __init__(self, module: ForecastModule):
        super().__init__()
        self.module = module

    def forward(self, context: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.module.training_loss(context, target)


def per_sample_gradients(
    module: ForecastModule, x: torch.Tensor, y: torch.Tensor
) -> dict[nn.Parameter, torch.Tensor]:
    """Gradient of each window's own training loss, ``[samples, *param.shape]`` per parameter
    (``torch.func``)."""
    from torch.func import functional_call, grad, vmap

    wrapper = _TrainingLoss(module)
    params = {n: p.detach() for n, p in wrapper.named_parameters() if p.requires_grad}

    def loss_fn(p, xi, yi):
        return functional_call(wrapper, p, (xi.unsqueeze(0), yi.unsqueeze(0)))

    grads = vmap(grad(loss_fn), in_dims=(None, 0, 0))(params, x, y)
    lookup = dict(wrapper.named_parameters())
    return {lookup[n]: grads[n] for n in params}


def _unit_costs(
    module: ForecastModule,
    groups: list[PruneGroup],
    floor: dict[str, int],
    target: str,
    latency: LatencyModel | None,
    deltas: dict[str, Delta],
) -> dict[str, float]:
    """What removing one unit of each group saves: predicted seconds, estimated cost, MACs or parameters."""
    if target == "latency":
        shapes = linear_shapes(module, latency.batch_size)
        deltas = _deltas(module, groups, floor, latency.batch_size, deltas)
        return seconds_per_unit(latency, shapes, groups, deltas, floor)
    rows = linear_rows(module) if target in ("macs", "latency-estimate") else {}
    return {g.name: _group_unit_cost(module, g, rows, target) for g in groups}


def _deltas(
    module: ForecastModule,
    groups: list[PruneGroup],
    floor: dict[str, int],
    batch: int,
    known: dict[str, Delta],
) -> dict[str, Delta]:
    """``known`` (updated in place) with the per-unit shape changes of groups not probed yet."""
    missing = [g for g in groups if g.name not in known]
    if missing:
        known.update(unit_deltas(module, missing, floor, batch))
    return known


def _group_unit_cost(module: ForecastModule, group: PruneGroup, rows: dict[str, int], target: str) -> float:
    """MACs, estimated latency cost or parameters one unit of ``group`` costs."""
    cost = 0.0
    for sl in group.slices:
        layer = module.get_submodule(sl.module)
        per_unit = slice_width(layer, sl) // group.units
        if isinstance(layer, nn.Linear):
            other = layer.in_features if sl.axis == "out" else layer.out_features
            if target in ("macs", "latency-estimate"):
                cost += rows.get(sl.module, 0) * other * per_unit
                if target == "latency-estimate":  # the unit's activation elements, in or out of this Linear
                    cost += ACTIVATION_COST * rows.get(sl.module, 0) * per_unit
            else:
                cost += (other + (1 if sl.axis == "out" and layer.bias is not None else 0)) * per_unit
        elif target == "params" and isinstance(layer, nn.Embedding):
            cost += layer.num_embeddings * per_unit
        elif target == "params":
            cost += sum(p.shape[-1] > 0 for p in layer.parameters()) * per_unit
    return cost


def _agree(
    groups: list[PruneGroup], blocks: tuple[str, ...], chosen: dict[str, list[int]]
) -> dict[str, list[int]]:
    """Rank 0's choice of units (and blocks) on every rank: the scores agree across ranks, but a
    last-bit difference (another CPU in a multi-node job) must never give the ranks different models."""
    if distributed.world_size() == 1:
        return chosen
    sizes = [(g.name, g.units) for g in groups] + [(b, 1) for b in blocks]
    offsets = np.cumsum([0] + [n for _, n in sizes])
    mask = torch.zeros(int(offsets[-1]), dtype=torch.uint8)
    for (name, _), start in zip(sizes, offsets, strict=False):
        mask[start + torch.tensor(chosen[name], dtype=torch.long)] = 1
    distributed.broadcast_tensor(mask)
    return {
        name: torch.nonzero(mask[start : start + n]).flatten().tolist()
        for (name, n), start in zip(sizes, offsets, strict=False)
    }


def _choose(
    groups: list[PruneGroup],
    blocks: tuple[str, ...],
    scores: dict[str, torch.Tensor],
    floor: dict[str, int],
    needed: float,
    costs: dict[str, float],
    config: PruneConfig,
) -> dict[str, list[int]]:
    """The units to remove this step: globally lowest ranked, at most ``step_fraction`` of those
    remaining, and no more than the cost (``costs``: per unit of each group) still ``needed``
    to meet the budget. Each group's units are listed lowest ranked first. A block is one unit
    (``chosen[block] == [0]``); once chosen, the units of the groups inside it are not."""
    candidates = []
    units = {g.name: g.units for g in groups} | {b: 1 for b in blocks}
    for name, count in units.items():
        cost = costs[name]
        rank = scores[name].abs().numpy()
        if config.cost_normalized:
            rank = rank / cost if cost > 0 else np.full_like(rank, np.inf)
        for u in range(count):
            candidates.append((float(rank[u]), name, u, cost))
    candidates.sort(key=lambda c: c[0])
    quota = max(1, math.ceil(config.step_fraction * sum(units.values())))
    left = {g.name: g.units - floor[g.name] for g in groups} | {b: 1 for b in blocks}
    within = {b: [g.name for g in groups if depth.inside(g, b)] for b in blocks}
    chosen: dict[str, list[int]] = {name: [] for name in units}
    saved, taken = 0.0, 0
    for _, name, unit, cost in candidates:
        if taken >= quota or saved >= needed:
            break
        if left[name] <= 0 or cost <= 0:
            continue
        chosen[name].append(unit)
        left[name] -= 1
        saved += cost
        taken += 1
        for inner in within.get(name, ()):
            left[inner] = 0
    return chosen
