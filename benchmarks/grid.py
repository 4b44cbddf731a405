"""The paper's benchmark grid (issue 15): datasets x horizons x variants x seeds, and zero-shot transfer.

Each cell is one (dataset, horizon, variant, seed): test MSE/MAE on the scaled test split, the
model's parameters and MACs (batch 1), and the cell's wall time. The variants are the three rows
``prunecast run --compare-full-finetune`` reports, trained by the same functions
(:func:`prunecast.pipeline.job.full_finetune` and :func:`~prunecast.pipeline.job.prune_finetune`
at the default budget and settings):

- ``zero_shot``: the checkpoint as it is (past its native horizon, its head rolled out). It
  involves no randomness, so it has one cell per dataset x horizon, seed 0.
- ``full_finetune``: every weight fine-tuned on the truth.
- ``pruned_finetune``: pruned to the default latency budget, fine-tuned distilling from the original.
  Past the native horizon both trained variants grow a head of the whole horizon, fitted to the
  roll-out first (the pruned one before it is pruned).

Variants tried against a losing cell (opt-in with ``--variants``; their own table in ``grid.md``,
beside the default pruned cell, never in the grid's columns or averages):

- ``pruned_rollout``: as ``pruned_finetune``, but past the checkpoint's native horizon the pruned
  model keeps its native head and is fine-tuned through the roll-out (``FinetuneConfig.head =
  "rollout"``), like the zero-shot row, instead of growing a head of the whole horizon (so it is
  also pruned as the roll-out, where the default cell prunes the grown one-pass model). At or
  below the native horizon it is the same as ``pruned_finetune``.
- ``pruned_truth``: as ``pruned_finetune``, fine-tuned on the truth alone (``FinetuneConfig.distill
  = 0``): tests whether, where full fine-tuning beats zero-shot by far, distilling from the
  original holds the pruned model back at the worse zero-shot forecast (on weather-96 it did not).
- ``pruned_distill08``: as ``pruned_finetune``, the fine-tuning target 0.8 the original's forecast
  (``distill = 0.8``): where fine-tuning cannot beat zero-shot (ETTh1 past 96), the pruned model's
  best is to forecast as the original does.
- ``pruned_long``: as ``pruned_finetune``, fine-tuned for 20 epochs instead of 10: the pruned model
  starts further from its best than the full one and costs less per epoch.
- ``pruned_budget035``: as ``pruned_finetune``, pruned to a budget of 0.35 instead of 0.18: whether a
  losing cell lacks capacity rather than training.
- ``pruned_budget050``, ``pruned_budget070``: budgets 0.5 and 0.7, with 0.18 and 0.35 the sweep of
  how much pruning a cell takes before it loses to full fine-tuning (``grid_budgets.png``).
- ``pruned_budget035_long``: both changes, budget 0.35 and 20 epochs.
- ``pruned_budget050_long``: budget 0.5 and 20 epochs, about full fine-tuning's training MACs: at
  0.35, 20 epochs brought ETTm1-96 and weather-96 within 1% of full fine-tuning.
- ``full_long``: a control, not pruned: full fine-tuning for 20 epochs, as the 20-epoch pruned
  variants train (``Tried.pruned = False``).
- ``pruned_budget050_distill08``: budget 0.5 and distill 0.8: where full fine-tuning cannot beat
  zero-shot (ETTh1 past 96), the pruned model's best is to forecast as the checkpoint does.
- ``pruned_budget035_long_recovery``: ``pruned_budget035_long`` with ``pruned_recovery``'s training
  between pruning steps.
- ``pruned_lr_high``: as ``pruned_finetune``, the learning rate chosen on validation among 1e-3, 3e-3
  and 1e-2: every default pruned cell chose the highest of 1e-4, 3e-4 and 1e-3.
- ``pruned_recovery``: as ``pruned_finetune``, with 2048 training windows of recovery training after
  every pruning step (``PruneConfig.recovery_windows``): pruning to 0.18 in one go of scoring steps
  costs a large loss (ETTm1-96 validation 0.39 -> 0.83) that fine-tuning must win back.
- ``pruned_recovery_distill``: as ``pruned_recovery``, the recovery targets half the unpruned model's
  forecast (``PruneConfig.recovery_distill = 0.5``), as fine-tuning distils.
- ``pruned_ft_teacher``: as ``pruned_finetune``, but fine-tuning distils from the same cell's fully
  fine-tuned model instead of the checkpoint: where full fine-tuning beats zero-shot by far
  (ETTm1, weather), half of the default target is the worse zero-shot forecast.
- ``pruned_from_ft``: fine-tune, prune, fine-tune: the cell's fully fine-tuned model is pruned (its
  scores read on a model already specialised to the dataset) and fine-tuned again, distilling from
  itself. Both variants train the full model once per dataset x horizon x seed and cache it in
  ``--work-dir``.
- ``pruned_budget050_truth``, ``pruned_budget050_ft_teacher``: budget 0.5 fine-tuned on the truth
  alone, or distilling from the fully fine-tuned model: ETTm1-96 and weather-96 stayed above full
  fine-tuning even at budget 0.7, so what holds a lightly pruned model back may be the pull
  towards the checkpoint's zero-shot forecast rather than capacity.
- ``pruned_run_default``: pruned as ``prunecast run`` prunes by default (``MEASURED_BUDGET`` of the
  latency measured on onnxruntime, blocks allowed) where the grid keeps the estimate's 0.18 on
  widths: ``prunecast run --horizon 192`` on ETTm1 beat full fine-tuning where the grid's cell did not.

Zero-shot transfer: the pruned model a ``pruned_finetune`` cell trained (cached in ``--work-dir``)
is evaluated, without further training, on another dataset's test split at the same horizon,
against the original model's zero-shot cell on that dataset.

Resumable: ``benchmarks/results/grid.json`` holds every finished cell under
``"dataset|horizon|variant|seed"`` (transfers under ``"source->target|horizon|seed"``); a cell
already there is skipped, and the file is replaced atomically after every cell, so an interrupted
run keeps what it finished and the next one carries on. ``--max-minutes`` stops before a cell
whose estimated time (the longest finished cell of the same dataset and variant, else of the same
variant) would pass it. Every run renders ``grid.md`` (the paper's layout: rows dataset x horizon
and each dataset's average, MSE and MAE per variant, the best of each row in bold) and
``grid.png`` from everything in the file.

    flock /tmp/prunecast-bench.lock python benchmarks/grid.py --datasets ETTh1 --horizons 96 --seeds 0
    flock /tmp/prunecast-bench.lock python benchmarks/grid.py --max-minutes 50   # as much as fits
    python benchmarks/grid.py --render          # only re-render grid.md / grid.png from grid.json

Dataset names ``ETTh1``, ``ETTm1`` and ``weather`` mean the files under ``--data-dir`` (the
shared benchmark data); any other value is a CSV path, named by its file stem.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

import torch

from prunecast.common.defaults import DEFAULT_MODEL, MEASURED_BUDGET, UNIT_KINDS, WIDTH_KINDS
from prunecast.compress import FinetuneConfig, PruneConfig, load_model, save_model
from prunecast.data import TimeAxisPolicy, prepare_windows
from prunecast.data.windows import PreparedData
from prunecast.pipeline.job import accuracy, full_finetune, prune_finetune

RESULTS = Path(__file__).resolve().parent / "results"
DATA_DIR = Path(
    os.environ.get("PRUNECAST_DATA_DIR", Path(__file__).resolve().parents[1].parent / "shared" / "data")
)
SHARED_FILES = {
    "ETTh1": "ETT-small/ETTh1.csv",
    "ETTm1": "ETT-small/ETTm1.csv",
    "weather": "weather/weather.csv",
}
HORIZONS = (96, 192, 336, 720)
VARIANTS = ("zero_shot", "full_finetune", "pruned_finetune")
"""The grid's variants: run by default, the table's columns."""


@dataclass(frozen=True)
class Tried:
    """A variant tried against a losing cell: the default pruned cell with ``prune`` and ``finetune``
    changed (fields of :class:`PruneConfig` and :class:`FinetuneConfig`), or, with ``pruned``
    False, the full fine-tuning cell with ``finetune`` changed (a control); ``label`` heads its
    rows, ``does`` says in ``grid.md`` what it changes."""

    label: str
    does: str
    prune: dict = field(default_factory=dict)
    finetune: dict = field(default_factory=dict)
    start: Literal["original", "full_finetune"] = "original"
    """The model pruned: the checkpoint, or the cell's fully fine-tuned model (specialise first)."""
    teacher: Literal["original", "full_finetune"] = "original"
    """The model fine-tuning distils from: the checkpoint (the default cell's), or the cell's fully
    fine-tuned model, which forecasts the target dataset better than the checkpoint does."""
    pruned: bool = True
    """False: a control, the full fine-tuning cell with ``finetune`` changed, to tell whether what
    helps the pruned model would help the baseline as much."""

    def __post_init__(self) -> None:
        if not self.pruned and (self.prune or "full_finetune" in (self.start, self.teacher)):
            raise ValueError(
                f"{self.label}: a full fine-tuning control prunes nothing and distils from nothing"
            )

    @property
    def needs_full_finetune(self) -> bool:
        return "full_finetune" in (self.start, self.teacher)


TRIED = {
    "pruned_rollout": Tried(
        "prune + fine-tune, rolled-out head",
        "pruned as prune + fine-tune, then fine-tuned through the roll-out of the native head (no grown "
        "head) past the checkpoint's horizon",
        finetune={"head": "rollout"},
    ),
    "pruned_truth": Tried(
        "prune + fine-tune on the truth alone",
        "pruned as prune + fine-tune, then fine-tuned on the truth alone (distill 0: no pull towards "
        "the original's zero-shot forecast)",
        finetune={"distill": 0.0},
    ),
    "pruned_distill08": Tried(
        "prune + fine-tune, distill 0.8",
        "pruned as prune + fine-tune, then fine-tuned with the training target 0.8 the original's "
        "forecast and 0.2 the truth (the default: half and half)",
        finetune={"distill": 0.8},
    ),
    "pruned_long": Tried(
        "prune + fine-tune, 20 epochs",
        "pruned as prune + fine-tune, then fine-tuned for twice the epochs (20; its cosine schedule over "
        "all of them)",
        finetune={"epochs": 20},
    ),
    "pruned_budget035": Tried(
        "prune 0.35 + fine-tune",
        "pruned to 0.35 of the estimated latency instead of 0.18 (about half as much removed), then "
        "fine-tuned as prune + fine-tune",
        prune={"budget": 0.35},
    ),
    "pruned_budget050": Tried(
        "prune 0.5 + fine-tune",
        "pruned to 0.5 of the estimated latency instead of 0.18, then fine-tuned as prune + fine-tune",
        prune={"budget": 0.5},
    ),
    "pruned_budget070": Tried(
        "prune 0.7 + fine-tune",
        "pruned to 0.7 of the estimated latency instead of 0.18, then fine-tuned as prune + fine-tune",
        prune={"budget": 0.7},
    ),
    "pruned_budget035_long": Tried(
        "prune 0.35 + fine-tune, 20 epochs",
        "pruned to 0.35 as pruned_budget035, then fine-tuned for 20 epochs as pruned_long",
        prune={"budget": 0.35},
        finetune={"epochs": 20},
    ),
    "pruned_budget050_long": Tried(
        "prune 0.5 + fine-tune, 20 epochs",
        "pruned to 0.5 as pruned_budget050, then fine-tuned for 20 epochs as pruned_long (at 0.5 an "
        "epoch costs the pruned model about half the MACs it costs the full one, so 20 epochs are "
        "about full fine-tuning's 10 in MACs)",
        prune={"budget": 0.5},
        finetune={"epochs": 20},
    ),
    "full_long": Tried(
        "full fine-tune, 20 epochs (control)",
        "not pruned: full fine-tuning for 20 epochs instead of 10, the control for the 20-epoch pruned "
        "variants (whether the baseline was short of training too)",
        finetune={"epochs": 20},
        pruned=False,
    ),
    "pruned_budget050_distill08": Tried(
        "prune 0.5 + fine-tune, distill 0.8",
        "pruned to 0.5 as pruned_budget050, then fine-tuned with distill 0.8 as pruned_distill08",
        prune={"budget": 0.5},
        finetune={"distill": 0.8},
    ),
    "pruned_budget035_long_recovery": Tried(
        "prune 0.35 with recovery + fine-tune, 20 epochs",
        "pruned_budget035_long with pruned_recovery's training between pruning steps",
        prune={"budget": 0.35, "recovery_windows": 2048},
        finetune={"epochs": 20},
    ),
    "pruned_lr_high": Tried(
        "prune + fine-tune, learning rate up to 1e-2",
        "pruned as prune + fine-tune, then fine-tuned choosing its learning rate among 1e-3, 3e-3 and "
        "1e-2 (the default's highest, 1e-3, is what every pruned cell chose)",
        finetune={"lr_candidates": (1e-3, 3e-3, 1e-2)},
    ),
    "pruned_recovery": Tried(
        "prune with recovery + fine-tune",
        "pruned as prune + fine-tune, but trained on 2048 training windows (lr 1e-3) after every pruning "
        "step, so each step scores a model recovered from the last (gradual pruning); then fine-tuned "
        "as prune + fine-tune",
        prune={"recovery_windows": 2048},
    ),
    "pruned_recovery_distill": Tried(
        "prune with distilled recovery + fine-tune",
        "as pruned_recovery, the recovery targets blended half and half with the unpruned model's "
        "forecast (recovery_distill 0.5, as fine-tuning's distill)",
        prune={"recovery_windows": 2048, "recovery_distill": 0.5},
    ),
    "pruned_run_default": Tried(
        "prune (prunecast run's default) + fine-tune",
        "pruned as prunecast run does by default: to 0.2 of the latency measured on onnxruntime at "
        "batch 256 (2 threads), whole mixer blocks allowed, widths rounded; then fine-tuned as prune + "
        "fine-tune",
        prune={"target": "latency", "budget": MEASURED_BUDGET, "kinds": UNIT_KINDS},
    ),
    "pruned_ft_teacher": Tried(
        "prune + fine-tune distilling from full fine-tuning",
        "pruned as prune + fine-tune, then fine-tuned with the training target half the truth and half "
        "the forecast of the same cell's fully fine-tuned model (instead of the original's zero-shot "
        "forecast): where full fine-tuning beats zero-shot, the default pulls towards the worse forecast",
        teacher="full_finetune",
    ),
    "pruned_from_ft": Tried(
        "fine-tune, prune, fine-tune",
        "the same cell's fully fine-tuned model pruned as prune + fine-tune (scores read on a model "
        "already specialised to the dataset), then fine-tuned again distilling from it",
        start="full_finetune",
        teacher="full_finetune",
    ),
    "pruned_budget050_truth": Tried(
        "prune 0.5 + fine-tune on the truth alone",
        "pruned to 0.5 as pruned_budget050, then fine-tuned on the truth alone as full fine-tuning is "
        "(distill 0)",
        prune={"budget": 0.5},
        finetune={"distill": 0.0},
    ),
    "pruned_budget050_ft_teacher": Tried(
        "prune 0.5 + fine-tune distilling from full fine-tuning",
        "pruned to 0.5 as pruned_budget050, then fine-tuned distilling from the cell's fully "
        "fine-tuned model as pruned_ft_teacher",
        prune={"budget": 0.5},
        teacher="full_finetune",
    ),
    "pruned_blocks": Tried(
        "prune (blocks too) + fine-tune",
        "pruned as prune + fine-tune, but whole mixer blocks may go as well as widths (the library's "
        "default kinds since depth pruning), then fine-tuned as prune + fine-tune",
        prune={"kinds": UNIT_KINDS},
    ),
}
"""Variants tried against a losing cell (opt-in)."""
LABELS = {
    "zero_shot": "zero-shot",
    "full_finetune": "full fine-tune",
    "pruned_finetune": "prune + fine-tune",
    **{name: tried.label for name, tried in TRIED.items()},
}
TRANSFERS = (("ETTh1", "ETTm1"), ("ETTm1", "ETTh1"), ("ETTh1", "weather"))
PUBLISHED = {
    ("ETTh1", 96): {"PatchTST": 0.370, "DLinear": 0.375},
    ("ETTm1", 96): {"PatchTST": 0.290, "DLinear": 0.299},
    ("weather", 96): {"PatchTST": 0.149, "DLinear": 0.176},
}
"""Published test MSE (scaled) from ../shared/data/README.md; only horizon 96 is listed there."""
TIME_AXIS = {"weather": TimeAxisPolicy(duplicates="first", fill="interpolate")}
"""The loader's explicit opt-ins per shared file: weather.csv as shipped repeats 2020-05-12 06:00
(identical rows; the first is kept) and misses the 10-minute stamps before 2020-05-29 09:40."""
NOTES = [
    "weather.csv is read with --duplicates first --fill interpolate: it repeats one timestamp "
    "(2020-05-12 06:00, identical rows) and misses the 10-minute stamps before 2020-05-29 09:40.",
]


@dataclass
class GridConfig:
    """What to run and where the results go."""

    datasets: dict[str, Path]
    """Name (the table's row label) -> CSV path."""
    horizons: tuple[int, ...] = HORIZONS
    seeds: tuple[int, ...] = (0,)
    variants: tuple[str, ...] = VARIANTS
    transfers: tuple[tuple[str, str], ...] = TRANSFERS
    """(source, target) pairs; a pair runs where its source is in ``datasets`` and its target is
    there or in ``targets``."""
    targets: dict[str, Path] = field(default_factory=dict)
    """Transfer targets outside the grid's datasets (their zero-shot cells run, nothing else)."""
    model: str = DEFAULT_MODEL
    revision: str | None = None
    prune: PruneConfig = field(default_factory=lambda: PruneConfig(kinds=WIDTH_KINDS))
    """The library's prune defaults, widths only: the grid's cells were run before depth pruning
    (the ``block`` kind), and a file resumes only with the settings it was made with."""
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    test_limit: int | None = None
    """Evaluate only the first N test windows (quick runs); None: the whole test split."""
    results: Path = RESULTS / "grid.json"
    work_dir: Path = Path(tempfile.gettempdir()) / "prunecast-grid"
    """Where the pruned models live between their cell and the transfers that reuse them."""
    max_minutes: float | None = None


@dataclass(frozen=True)
class Task:
    """One cell: a grid cell (``target`` None) or a transfer of ``dataset``'s pruned model to ``target``."""

    dataset: str
    horizon: int
    variant: str
    seed: int
    target: str | None = None

    @property
    def key(self) -> str:
        if self.target is not None:
            return f"{self.dataset}->{self.target}|{self.horizon}|{self.seed}"
        return f"{self.dataset}|{self.horizon}|{self.variant}|{self.seed}"

    @property
    def section(self) -> str:
        return "transfer" if self.target is not None else "cells"


def plan(config: GridConfig) -> list[Task]:
    """Every cell in run order: per dataset and horizon, zero-shot once, then each seed's trained
    variants. A transfer runs as soon as both its ends are done (the source's pruned cell and the
    target's zero-shot, which it is compared against); a target outside the grid's datasets (only
    its zero-shot is needed) comes after all the grid's cells."""
    grid: list[Task] = []
    for name in config.datasets:
        for horizon in config.horizons:
            for seed in config.seeds:
                for variant in config.variants:
                    if variant != "zero_shot" or seed == config.seeds[0]:
                        grid.append(Task(name, horizon, variant, 0 if variant == "zero_shot" else seed))
    position = {t.key: i for i, t in enumerate(grid)}
    after: dict[str, list[Task]] = {}
    tail: list[Task] = []
    for source, target in config.transfers:
        if source not in config.datasets or target not in {**config.datasets, **config.targets}:
            continue
        for horizon in config.horizons:
            for seed in config.seeds:
                zero = Task(target, horizon, "zero_shot", 0)
                ends = [Task(source, horizon, "pruned_finetune", seed).key, zero.key]
                move = Task(source, horizon, "pruned_finetune", seed, target=target)
                if all(key in position for key in ends):
                    after.setdefault(max(ends, key=position.__getitem__), []).append(move)
                else:
                    tail += [zero, move]
    tasks = [task for cell in grid for task in (cell, *after.get(cell.key, ()))] + tail
    seen: set[str] = set()
    return [t for t in tasks if not (t.key in seen or seen.add(t.key))]


def model_dir(config: GridConfig, dataset: str, horizon: int, seed: int) -> Path:
    return config.work_dir / f"{dataset}-h{horizon}-s{seed}-pruned"


class Grid:
    """The results file and the runs that fill it."""

    def __init__(self, config: GridConfig, log: Callable[[str], None] = print):
        self.config = config
        self.log = log
        self.results = load_results(config)
        self._data: dict[tuple[str, int], PreparedData] = {}

    def run(self) -> list[str]:
        """Run every planned cell not yet in the results; returns the keys run this time."""
        config = self.config
        started = time.monotonic()
        deadline = None if config.max_minutes is None else started + 60 * config.max_minutes
        record = {
            "started_utc": _utc(),
            "loadavg_before": os.getloadavg(),
            "torch_threads": torch.get_num_threads(),
            "cells": [],
        }
        self.results["runs"].append(record)
        done: list[str] = []
        for task in plan(config):
            if task.key in self.results[task.section]:
                continue
            source = Task(task.dataset, task.horizon, "pruned_finetune", task.seed).key
            if task.target is not None and (
                source not in self.results["cells"]
                or not model_dir(config, task.dataset, task.horizon, task.seed).is_dir()
            ):
                # a model left in the cache by a cell no longer in the file is not that cell's
                self.log(
                    f"skip {task.key}: its source cell {source} is not in the results or its pruned "
                    f"model not in {config.work_dir} (rerun that cell)"
                )
                continue
            estimate = self.estimate(task)
            if deadline is not None and time.monotonic() + estimate > deadline:
                self.log(f"stopping before {task.key}: about {estimate:.0f} s would pass --max-minutes")
                record["stopped_before"] = task.key
                break
            self.log(f"{task.key}: running (load {os.getloadavg()[0]:.2f})")
            cell = self.run_task(task)
            self.results[task.section][task.key] = cell
            record["cells"].append(task.key)
            record["loadavg_after"] = os.getloadavg()
            record["minutes"] = round((time.monotonic() - started) / 60, 2)
            self.save()
            done.append(task.key)
            self.log(f"{task.key}: MSE {cell['mse']:.4f} MAE {cell['mae']:.4f} in {cell['seconds']:.0f} s")
        record["loadavg_after"] = os.getloadavg()
        self.save(plot_too=True)
        return done

    def estimate(self, task: Task) -> float:
        """Seconds ``task`` will likely take: the longest finished cell most like it (a tried
        variant with no cell yet: like the default pruned one, or full fine-tuning for a control),
        else 0."""
        section = self.results[task.section].values()
        tried = TRIED.get(task.variant)
        kinds = (task.variant, "full_finetune" if tried and not tried.pruned else "pruned_finetune")
        kind = next((k for k in kinds if any(c["variant"] == k for c in section)), task.variant)
        same_kind = [c for c in section if c["variant"] == kind]
        for pool in (
            [c for c in same_kind if c["dataset"] == task.dataset and c["horizon"] == task.horizon],
            [c for c in same_kind if c["dataset"] == task.dataset],
            same_kind,
        ):
            if pool:
                return max(c["seconds"] for c in pool)
        return 0.0

    def data(self, name: str, context_length: int, horizon: int) -> PreparedData:
        key = (name, horizon)
        if key not in self._data:
            paths = {**self.config.targets, **self.config.datasets}
            policy = TIME_AXIS.get(name, TimeAxisPolicy())
            self._data[key] = prepare_windows(paths[name], context_length, horizon, policy=policy)
        return self._data[key]

    def run_task(self, task: Task) -> dict:
        config = self.config
        loadavg = os.getloadavg()
        start = time.perf_counter()
        torch.manual_seed(task.seed)
        extra: dict = {}
        if task.target is not None:
            module = load_model(model_dir(config, task.dataset, task.horizon, task.seed))
            data = self.data(task.target, module.context_length, task.horizon)
        else:
            original = load_model(config.model, horizon=task.horizon, revision=config.revision)
            data = self.data(task.dataset, original.context_length, task.horizon)
            module = original
            ft_cfg = replace(config.finetune, seed=task.seed)
            tried = TRIED.get(task.variant)
            if task.variant == "full_finetune" or (tried is not None and not tried.pruned):
                ft_cfg = replace(ft_cfg, **(tried.finetune if tried else {}))
                module, ft = full_finetune(original, data, ft_cfg)
                extra["finetune"] = _finetune_summary(ft.to_dict())
            elif task.variant == "pruned_finetune" or tried is not None:
                tried = tried or Tried("", "")
                prune_cfg = replace(config.prune, seed=task.seed, **tried.prune)
                models = {"original": original}
                if tried.needs_full_finetune:
                    models["full_finetune"] = self.full_model(task, original, data, ft_cfg)
                    extra["full_finetune_mse"] = accuracy(
                        models["full_finetune"], data.test, config.test_limit
                    )["mse"]
                ft_cfg = replace(ft_cfg, **tried.finetune)
                module, pr, ft = prune_finetune(
                    models[tried.start], data, prune_cfg, ft_cfg, teacher=models[tried.teacher]
                )
                extra["prune"] = _prune_summary(pr.to_dict())
                extra["finetune"] = _finetune_summary(ft.to_dict())
            if task.variant == "pruned_finetune":
                save_model(
                    module,
                    model_dir(config, task.dataset, task.horizon, task.seed),
                    metadata={
                        "source_model": config.model,
                        "revision": config.revision,
                        "grid_cell": task.key,
                    },
                )
        metrics = accuracy(module, data.test, config.test_limit)
        return {
            "dataset": task.dataset,
            **({"target": task.target} if task.target is not None else {}),
            "horizon": task.horizon,
            "variant": task.variant,
            "seed": task.seed,
            "data": str(data.benchmark.path),
            **metrics,
            "seconds": round(time.perf_counter() - start, 1),
            "finished_utc": _utc(),
            "loadavg_before": loadavg,
            **extra,
        }

    def full_model(self, task: Task, original, data: PreparedData, ft_cfg: FinetuneConfig):
        """The cell's fully fine-tuned model (as its ``full_finetune`` cell trains it), cached in
        ``work_dir`` so the tried variants that start from it or distil from it train it once."""
        path = self.config.work_dir / f"{task.dataset}-h{task.horizon}-s{task.seed}-full"
        if path.is_dir():
            return load_model(path)
        module, _ = full_finetune(original, data, ft_cfg)
        save_model(
            module, path, metadata={"source_model": self.config.model, "revision": self.config.revision}
        )
        return module

    def save(self, plot_too: bool = False) -> None:
        """The JSON (atomically) and ``grid.md`` after every cell; the plot, which takes seconds, at the end."""
        save_results(self.results, self.config.results)
        render(self.results, self.config.results, plot_too)


# --- the results file


def _settings(config: GridConfig) -> dict:
    """What must match for cells of two runs to sit in one file."""
    return {
        "model": config.model,
        "revision": config.revision,
        "test_limit": config.test_limit,
        "prune": asdict(replace(config.prune, seed=0, show_progress=None)),
        "finetune": asdict(replace(config.finetune, seed=0, show_progress=None)),
    }


def load_results(config: GridConfig) -> dict:
    """The results so far, or a fresh file; refuses a file made with other settings, whose cells
    would not be comparable with the new ones."""
    settings = json.loads(json.dumps(_settings(config)))
    if not config.results.exists():
        return {
            "benchmark": "prunecast benchmark grid (issue 15): test MSE/MAE on the scaled test split",
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores "
            "(shared with other jobs: see each cell's loadavg_before)",
            "settings": settings,
            "notes": NOTES,
            "published": {f"{d}|{h}": v for (d, h), v in PUBLISHED.items()},
            "cells": {},
            "transfer": {},
            "runs": [],
        }
    results = json.loads(config.results.read_text())
    _fill_added_settings(results.get("settings"))
    if results.get("settings") != settings and _only_grown_heads_differ(results.get("settings"), settings):
        _drop_grown_head_cells(results, settings)
    if results.get("settings") != settings:
        raise SystemExit(
            f"{config.results} was made with other settings than this run's (model, revision, test limit, "
            f"prune or fine-tune configuration); pass --results for a new file.\n"
            f"file: {json.dumps(results.get('settings'))}\nthis run: {json.dumps(settings)}"
        )
    return results


ADDED_SETTINGS = {
    "prune": {"recovery_windows": 0, "recovery_lr": 1e-3, "recovery_batch": 64, "recovery_distill": 0.0}
}
"""Settings introduced after a results file was made, each with the value that does what the code
did before it: a file made without them reads as if it had these values."""


def _fill_added_settings(settings: dict | None) -> None:
    for section, added in ADDED_SETTINGS.items():
        if settings is not None and section in settings:
            for key, value in added.items():
                settings[section].setdefault(key, value)


GROWN_HEAD_SETTINGS = ("head_fit_windows",)
"""Fine-tuning settings that act only where a head grows (past the checkpoint's native horizon)."""


def _only_grown_heads_differ(old: dict | None, new: dict) -> bool:
    """Whether ``old`` settings differ from ``new`` only in :data:`GROWN_HEAD_SETTINGS` (a setting
    missing from ``old`` had not been introduced: the file was made without it)."""
    if old is None:
        return False

    def rest(settings: dict) -> dict:
        finetune = {k: v for k, v in settings["finetune"].items() if k not in GROWN_HEAD_SETTINGS}
        return {**settings, "finetune": finetune}

    return rest(old) == rest(new)


def _drop_grown_head_cells(results: dict, settings: dict) -> None:
    """Adopt ``settings`` in ``results``, dropping only the cells they change: trained cells whose
    fine-tuning grew a head, and transfers of those models (they rerun). Zero-shot cells and cells
    within the native horizon are the same under either setting, so they stay; a note says so."""
    grown = {key for key, cell in results["cells"].items() if cell.get("finetune", {}).get("grown_head")}
    transfers = {
        key
        for key, cell in results["transfer"].items()
        if f"{cell['dataset']}|{cell['horizon']}|pruned_finetune|{cell['seed']}" in grown
    }
    changed = {
        k: (results["settings"]["finetune"].get(k), settings["finetune"].get(k)) for k in GROWN_HEAD_SETTINGS
    }
    for key in grown:
        del results["cells"][key]
    for key in transfers:
        del results["transfer"][key]
    results["notes"].append(
        f"{_utc()}: fine-tuning settings {changed} (old, new) act only on grown heads; the "
        f"{len(grown)} cells whose fine-tuning grew a head and {len(transfers)} transfers of such "
        "models were dropped to rerun, the other cells kept."
    )
    results["settings"] = settings


def save_results(results: dict, path: Path) -> None:
    """Write ``results`` atomically: a reader (or an interrupted run) sees the old file or the new."""
    _replace(path, lambda f: f.write(json.dumps(results, indent=1, default=str) + "\n"))


def _replace(path: Path, write: Callable) -> None:
    """Call ``write`` on a temporary file beside ``path``, then rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix)
    try:
        with os.fdopen(fd, "wb" if path.suffix == ".png" else "w") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _prune_summary(report: dict) -> dict:
    keep = ("params_before", "params_after", "macs_before", "macs_after", "val_loss_before", "val_loss_after")
    return {
        **{k: report[k] for k in keep},
        "seconds": report["seconds"],
        "steps": len(report["steps"]),
        "macs_reduction": report["macs_reduction"],
        "budget": report["config"]["budget"],
        "target": report["config"]["target"],
    }


def _finetune_summary(report: dict) -> dict:
    return {**{k: v for k, v in report.items() if k != "config"}, "distill": report["config"]["distill"]}


def _utc() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- the table and the plot


def aggregate(cells: dict) -> dict[tuple[str, int, str], dict]:
    """Mean and std over seeds per (dataset, horizon, variant)."""
    groups: dict[tuple[str, int, str], list[dict]] = {}
    for cell in cells.values():
        groups.setdefault((cell["dataset"], cell["horizon"], cell["variant"]), []).append(cell)
    out = {}
    for key, group in groups.items():
        mses, maes = [c["mse"] for c in group], [c["mae"] for c in group]
        out[key] = {
            "mse": statistics.mean(mses),
            "mae": statistics.mean(maes),
            "mse_std": statistics.stdev(mses) if len(mses) > 1 else 0.0,
            "seeds": len(group),
            "seconds": statistics.mean(c["seconds"] for c in group),
            "params": group[0]["params"],
            "macs": group[0]["macs"],
        }
    return out


def _bold_row(values: list[float | None]) -> list[str]:
    """Four decimals, the smallest (all ties) in bold, a dash where missing."""
    present = [round(v, 4) for v in values if v is not None]
    best = min(present) if present else None
    out = []
    for v in values:
        if v is None:
            out.append("–")
        else:
            text = f"{v:.4f}"
            out.append(f"**{text}**" if len(present) > 1 and round(v, 4) == best else text)
    return out


def grid_table(results: dict) -> list[str]:
    """The paper's layout: a row per dataset x horizon plus each dataset's average over the horizons
    every variant has; MSE and MAE per variant, the best of each row in bold (published references
    alongside, not bolded: they are other models)."""
    agg = {k: s for k, s in aggregate(results["cells"]).items() if k[2] in VARIANTS}
    datasets = list(dict.fromkeys(d for d, _, _ in agg))
    variants = [v for v in VARIANTS if any(k[2] == v for k in agg)]
    refs = sorted({name for v in results.get("published", {}).values() for name in v})
    header = ["dataset", "horizon"]
    for v in variants:
        header += [f"{LABELS[v]} MSE", f"{LABELS[v]} MAE"]
    header += [f"{r} MSE (published)" for r in refs] + ["seeds"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]

    def row(label: str, horizon: str, stats: list[dict | None], published: dict, seeds: str) -> str:
        mses = _bold_row([s["mse"] if s else None for s in stats])
        maes = _bold_row([s["mae"] if s else None for s in stats])
        cells = [label, horizon] + [x for pair in zip(mses, maes, strict=True) for x in pair]
        cells += [f"{published[r]:.3f}" if r in published else "–" for r in refs] + [seeds]
        return "| " + " | ".join(cells) + " |"

    for dataset in datasets:
        horizons = sorted({h for d, h, _ in agg if d == dataset})
        for h in horizons:
            stats = [agg.get((dataset, h, v)) for v in variants]
            seeds = "/".join(str(s["seeds"]) if s else "0" for s in stats)
            published = results.get("published", {}).get(f"{dataset}|{h}", {})
            lines.append(row(dataset, str(h), stats, published, seeds))
        complete = [h for h in horizons if all((dataset, h, v) in agg for v in variants)]
        if complete:
            mean = [
                {k: statistics.mean(agg[(dataset, h, v)][k] for h in complete) for k in ("mse", "mae")}
                for v in variants
            ]
            label = "avg" if len(complete) == len(HORIZONS) else f"avg of {', '.join(map(str, complete))}"
            lines.append(row(f"**{dataset}**", label, mean, {}, ""))
    return lines


def transfer_table(results: dict) -> list[str]:
    """Per source -> target and horizon: the original model's zero-shot on the target against the
    source's pruned + fine-tuned model applied there untrained (best in bold), with the target's own
    pruned + fine-tuned model as the in-domain reference (not bolded)."""
    agg = aggregate(results["cells"])
    groups: dict[tuple[str, str, int], list[dict]] = {}
    for cell in results["transfer"].values():
        groups.setdefault((cell["dataset"], cell["target"], cell["horizon"]), []).append(cell)
    header = [
        "source → target",
        "horizon",
        "original zero-shot MSE",
        "original zero-shot MAE",
        "pruned on source, transferred MSE",
        "pruned on source, transferred MAE",
        "pruned on target (in-domain) MSE",
        "seeds",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for (source, target, h), group in sorted(groups.items()):
        zero = agg.get((target, h, "zero_shot"))
        moved = {k: statistics.mean(c[k] for c in group) for k in ("mse", "mae")}
        mses = _bold_row([zero["mse"] if zero else None, moved["mse"]])
        maes = _bold_row([zero["mae"] if zero else None, moved["mae"]])
        own = agg.get((target, h, "pruned_finetune"))
        lines.append(
            "| "
            + " | ".join(
                [f"{source} → {target}", str(h), mses[0], maes[0], mses[1], maes[1]]
                + [f"{own['mse']:.4f}" if own else "–", str(len(group))]
            )
            + " |"
        )
    return lines


def extra_table(results: dict) -> list[str]:
    """Each tried variant's cells against the same row's default variants on the same seeds (zero-shot
    has one), best MSE and MAE in bold among all four, so a change is judged against the cells it
    tries to win and not against a mean over seeds it did not run."""
    cells = results["cells"]
    agg = aggregate(cells)
    header = ["dataset", "horizon", "tried variant", "MSE", "MAE"]
    header += [f"{LABELS[v]} {m}" for v in VARIANTS for m in ("MSE", "MAE")] + ["seeds"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for (d, h, v), s in sorted(agg.items()):
        if v not in TRIED:
            continue
        seeds = {c["seed"] for c in cells.values() if (c["dataset"], c["horizon"], c["variant"]) == (d, h, v)}
        same = aggregate(
            {k: c for k, c in cells.items() if c["seed"] in seeds or c["variant"] == "zero_shot"}
        )
        stats = [s] + [same.get((d, h, base)) for base in VARIANTS]
        mses = _bold_row([x["mse"] if x else None for x in stats])
        maes = _bold_row([x["mae"] if x else None for x in stats])
        pairs = [x for pair in zip(mses, maes, strict=True) for x in pair]
        lines.append("| " + " | ".join([d, str(h), LABELS[v], *pairs, str(s["seeds"])]) + " |")
    return lines


def render(results: dict, json_path: Path, plot_too: bool = True) -> None:
    """``grid.md`` (and ``grid.png`` with ``plot_too``) beside ``json_path``, from every cell in ``results``."""
    loads = [r["loadavg_before"][0] for r in results["runs"] if r.get("cells")]
    lines = [
        "# Benchmark grid: TTM r2, test MSE / MAE on the scaled test split",
        "",
        f"Model `{results['settings']['model']}` (revision {results['settings']['revision'] or 'main'}), "
        f"prune budget {results['settings']['prune']['budget']} of {results['settings']['prune']['target']}; "
        "means over seeds (the seeds column: cells averaged per variant, in column order). Best of each "
        "row in bold among the variants. Written by "
        "`benchmarks/grid.py` from `grid.json`.",
        "",
        *grid_table(results),
        "",
    ]
    if results["transfer"]:
        lines += ["## Zero-shot transfer", "", *transfer_table(results), ""]
    tried = sorted({c["variant"] for c in results["cells"].values()} & set(TRIED))
    if tried:
        lines += ["## Variants tried against losing cells", ""]
        lines += [f"- {LABELS[v]} (`{v}`): {TRIED[v].does}." for v in tried]
        lines += ["", *extra_table(results), ""]
    lines += [
        "## Timing",
        "",
        "| dataset | horizon | variant | seconds per cell (mean) | params | MACs |",
        "|---|---|---|---|---|---|",
    ]
    for (d, h, v), s in aggregate(results["cells"]).items():
        lines.append(f"| {d} | {h} | {LABELS[v]} | {s['seconds']:.0f} | {s['params']:,} | {s['macs']:,} |")
    lines += [
        "",
        f"Machine: {results['machine']}; load average (1 min) at the start of each run: "
        f"{', '.join(f'{x:.2f}' for x in loads) or '–'}.",
        "",
        *[f"- {note}" for note in results.get("notes", [])],
        "",
    ]
    _replace(json_path.with_suffix(".md"), lambda f: f.write("\n".join(lines)))
    if plot_too and results["cells"]:
        plot(results, json_path.with_suffix(".png"))
        sweeps = budget_sweeps(results)
        if sweeps:
            plot_budgets(sweeps, json_path.with_name(f"{json_path.stem}_budgets.png"))


BUDGET_ONLY = (
    "pruned_finetune",
    *(
        v
        for v, t in TRIED.items()
        if set(t.prune) == {"budget"} and t == Tried(t.label, t.does, prune=t.prune)
    ),
)
"""The default pruned cell and the tried variants that change nothing but the prune budget."""


def budget_sweeps(results: dict) -> dict[tuple[str, int], dict]:
    """Per dataset x horizon with seed-0 cells at two budgets or more: test MSE per budget (and the
    MACs it kept) beside full fine-tuning and zero-shot, seed 0 too, so every point is one run."""
    budgets = {"pruned_finetune": results["settings"]["prune"]["budget"]}
    budgets |= {v: TRIED[v].prune["budget"] for v in BUDGET_ONLY if v in TRIED}
    seed0 = {
        (c["dataset"], c["horizon"], c["variant"]): c for c in results["cells"].values() if c["seed"] == 0
    }
    sweeps = {}
    datasets = list(dict.fromkeys(d for d, _, _ in seed0))
    rows = sorted({(d, h) for d, h, _ in seed0}, key=lambda row: (datasets.index(row[0]), row[1]))
    for dataset, horizon in rows:  # panels by dataset, then horizon
        points = sorted(
            (budgets[v], c["mse"], c["prune"]["macs_before"] / c["macs"])
            for v in BUDGET_ONLY
            if (c := seed0.get((dataset, horizon, v))) is not None
        )
        if len(points) >= 2:
            sweeps[(dataset, horizon)] = {
                "points": points,
                **{
                    v: seed0[(dataset, horizon, v)]["mse"]
                    for v in ("zero_shot", "full_finetune")
                    if (dataset, horizon, v) in seed0
                },
            }
    return sweeps


def plot_budgets(sweeps: dict[tuple[str, int], dict], path: Path) -> None:
    """Test MSE against the prune budget, one panel per dataset x horizon, with full fine-tuning
    and zero-shot as lines: how far a cell can be pruned before it loses to full fine-tuning."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(3, len(sweeps))
    rows = -(-len(sweeps) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.6 * rows), squeeze=False)
    for ax in axes.flat[len(sweeps) :]:
        ax.set_visible(False)
    for ax, ((dataset, horizon), sweep) in zip(axes.flat, sweeps.items(), strict=False):
        budgets, mses, cuts = zip(*sweep["points"], strict=True)
        ax.plot(budgets, mses, marker="o", label="prune + fine-tune")
        for b, m, cut in sweep["points"]:
            ax.annotate(
                f"{cut:.1f}x", (b, m), textcoords="offset points", xytext=(0, 6), fontsize=7, ha="center"
            )
        for variant, style in (("full_finetune", "--"), ("zero_shot", ":")):
            if variant in sweep:
                ax.axhline(sweep[variant], linestyle=style, color="0.3", label=LABELS[variant])
        ax.set_xlabel("budget (fraction of estimated latency kept)")
        ax.set_ylabel("test MSE (scaled), seed 0")
        ax.set_title(f"{dataset}-{horizon} (labels: fewer MACs)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    _replace(path, lambda f: fig.savefig(f, dpi=110, format="png"))
    plt.close(fig)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    agg = aggregate(results["cells"])
    datasets = list(dict.fromkeys(d for d, _, _ in agg))
    fig, axes = plt.subplots(1, len(datasets), figsize=(4.5 * len(datasets), 3.8), squeeze=False)
    for ax, dataset in zip(axes[0], datasets, strict=True):
        for variant in VARIANTS:
            points = sorted((h, s) for (d, h, v), s in agg.items() if d == dataset and v == variant)
            if points:
                ax.errorbar(
                    [h for h, _ in points],
                    [s["mse"] for _, s in points],
                    yerr=[s["mse_std"] for _, s in points],
                    marker="o",
                    capsize=3,
                    label=LABELS[variant],
                )
        published = results.get("published", {}).get(f"{dataset}|96", {})
        for (name, mse), marker in zip(published.items(), "xd", strict=False):
            ax.scatter([96], [mse], marker=marker, color="0.3", label=f"{name} (published)")
        ax.set_xscale("log")
        ax.set_xticks(HORIZONS, [str(h) for h in HORIZONS])
        ax.minorticks_off()
        ax.set_xlabel("horizon")
        ax.set_ylabel("test MSE (scaled)")
        ax.set_title(dataset)
        ax.legend(fontsize=7)
    fig.tight_layout()
    _replace(path, lambda f: fig.savefig(f, dpi=110, format="png"))
    plt.close(fig)


# --- command line


def resolve_datasets(values: list[str], data_dir: Path) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for value in values:
        path = data_dir / SHARED_FILES[value] if value in SHARED_FILES else Path(value)
        if not path.is_file():
            raise SystemExit(f"{path}: no such CSV (dataset {value!r}; --data-dir is {data_dir})")
        name = value if value in SHARED_FILES else path.stem
        if name in out:
            raise SystemExit(f"two datasets named {name!r}: {out[name]} and {path}")
        out[name] = path
    return out


def parse_transfer(value: str) -> tuple[str, str]:
    source, sep, target = value.partition(":")
    if not sep or not source or not target:
        raise argparse.ArgumentTypeError(f"expected SOURCE:TARGET, got {value!r}")
    return source, target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--datasets", nargs="+", default=list(SHARED_FILES), help="names or CSV paths")
    parser.add_argument(
        "--data-dir", type=Path, default=DATA_DIR, help=f"shared benchmark data (default {DATA_DIR})"
    )
    parser.add_argument("--horizons", type=int, nargs="+", default=list(HORIZONS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument(
        "--variants",
        nargs="+",
        choices=[*VARIANTS, *TRIED],
        default=list(VARIANTS),
        help=f"default: the grid's {', '.join(VARIANTS)}; tried against losing cells: {', '.join(TRIED)}",
    )
    parser.add_argument(
        "--transfers",
        type=parse_transfer,
        nargs="*",
        default=list(TRANSFERS),
        help="SOURCE:TARGET pairs (default ETTh1:ETTm1 ETTm1:ETTh1 ETTh1:weather; none: no transfers)",
    )
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--revision", default=None)
    parser.add_argument("--test-limit", type=int, default=None, help="only the first N test windows")
    parser.add_argument("--results", type=Path, default=RESULTS / "grid.json")
    parser.add_argument("--work-dir", type=Path, default=GridConfig.work_dir, help="cache of pruned models")
    parser.add_argument("--max-minutes", type=float, default=None, help="start no cell that would pass this")
    parser.add_argument("--render", action="store_true", help="only re-render grid.md and grid.png")
    args = parser.parse_args(argv)
    if args.render:
        render(json.loads(args.results.read_text()), args.results)
        return 0
    datasets = resolve_datasets(args.datasets, args.data_dir)
    targets = {t for _, t in args.transfers if t not in datasets and t in SHARED_FILES}
    config = GridConfig(
        datasets=datasets,
        targets=resolve_datasets(sorted(targets), args.data_dir),
        horizons=tuple(args.horizons),
        seeds=tuple(args.seeds),
        variants=tuple(args.variants),
        transfers=tuple(args.transfers),
        model=args.model,
        revision=args.revision,
        test_limit=args.test_limit,
        results=args.results,
        work_dir=args.work_dir,
        max_minutes=args.max_minutes,
    )
    done = Grid(config, log=lambda m: print(m, file=sys.stderr, flush=True)).run()
    print(json.dumps({"ran": done, "results": str(config.results)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
