"""``prunecast run``: the whole prune-then-finetune job on one benchmark, ending in a report.

Stages: zero-shot test accuracy -> (optional) full fine-tuning baseline -> loss-guided
progressive pruning -> fine-tuning of the pruned model -> test accuracy -> ONNX export of the
original and pruned models with parity -> latency of both on every backend -> report.json,
report.md and plots. The test split is only ever evaluated, never used to choose anything.

Under ``torchrun`` every rank joins the two training stages (pruning, fine-tuning, and the full
fine-tuning baseline), data-parallel; evaluation, export, latency and the report are rank 0's
alone, and the other ranks return once training is done.

Past the checkpoint's horizon the zero-shot row rolls the native head out (each variant's
``head`` in the report says how many passes), pruning scores the loss of that roll-out over the
whole horizon, and both fine-tunings give their model a head of the whole horizon to train.
"""

from __future__ import annotations

import copy
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from prunecast.bench import BenchConfig, bench
from prunecast.bench.latency_model import LatencySettings, latency_model_for
from prunecast.compress import (
    FinetuneConfig,
    PruneConfig,
    count_macs,
    count_params,
    distributed,
    finetune,
    grow_head,
    load_model,
    prune,
    save_model,
)
from prunecast.compress.finetune import FinetuneReport
from prunecast.compress.prune import PruneReport
from prunecast.data import TimeAxisPolicy, prepare_windows
from prunecast.data.windows import PreparedData
from prunecast.evaluate import evaluate
from prunecast.models import DEFAULT_MODEL, ForecastModule
from prunecast.pipeline.deploy import deploy_block, deploy_line

VARIANTS = ("zero_shot", "full_finetune", "pruned_finetune")


@dataclass
class RunConfig:
    """Everything ``prunecast run`` does, with defaults for TTM r2 on the bundled ETTh1, horizon 96."""

    out: Path
    model: str = DEFAULT_MODEL
    revision: str | None = None
    """HF branch, tag or commit of ``model`` (TTM r2: ``512-192-r2`` ...); None: the main branch."""
    data: str = "ETTh1"
    time_axis: TimeAxisPolicy = TimeAxisPolicy()
    """What to do with a repeated or missing timestamp in ``data`` (default: refuse, naming the rows)."""
    horizon: int = 96
    prune: PruneConfig = field(default_factory=PruneConfig)
    latency: LatencySettings = field(default_factory=LatencySettings)
    """Where ``prune.target == "latency"`` measures: the serving backend, batch and threads (its
    ``data`` and ``time_axis`` are taken from this config's)."""
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    compare_full_finetune: bool = False
    test_limit: int | None = None
    """Evaluate only the first N test windows (quick runs); None: the whole test split."""
    bench: BenchConfig = field(default_factory=BenchConfig)
    int8: bool = True
    """Also export the pruned model to INT8 (behind the export's accuracy guard) as a candidate to ship."""
    int8_tolerance: float = 0.005
    """Relative rise of validation MSE the INT8 candidate may cost over FP32 (``export --int8-tolerance``)."""
    examples: int = 3
    """Test series drawn in the forecast plot."""


def run(config: RunConfig, log=None) -> dict:
    """Run every stage, write ``config.out``, and return the report as a dict (on rank 0; the
    other ranks of a ``torchrun`` job return an empty dict after fine-tuning)."""
    main = distributed.is_main()
    log = (log or _stderr) if main else _silent
    out = Path(config.out)
    if main:
        out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    stages = 6 + int(config.compare_full_finetune)
    stage = iter(range(1, stages + 1))

    log(f"[{next(stage)}/{stages}] loading {config.model} and {config.data}; zero-shot test evaluation")
    original = load_model(config.model, horizon=config.horizon, revision=config.revision)
    data = prepare_windows(config.data, original.context_length, config.horizon, policy=config.time_axis)
    report: dict = {
        "model": config.model,
        "revision": config.revision,
        "data": str(data.benchmark.path),
        "data_repairs": list(data.benchmark.notes),
        "horizon": config.horizon,
        "context_length": original.context_length,
        "test_windows": len(data.test)
        if config.test_limit is None
        else min(config.test_limit, len(data.test)),
    }
    variants: dict[str, ForecastModule] = {"zero_shot": original}
    if main:
        report["zero_shot"] = accuracy(original, data.test, config.test_limit)

    if config.compare_full_finetune:
        log(f"[{next(stage)}/{stages}] full fine-tuning baseline")
        full, ft = full_finetune(original, data, config.finetune)
        if main:
            report["full_finetune"] = {
                **accuracy(full, data.test, config.test_limit),
                "finetune": ft.to_dict(),
            }
        variants["full_finetune"] = full

    log(
        f"[{next(stage)}/{stages}] loss-guided progressive pruning (budget {config.prune.budget} of {config.prune.target})"
    )
    pruned, pr, ft = prune_finetune(
        original,
        data,
        config.prune,
        config.finetune,
        latency=replace(config.latency, data=config.data, time_axis=config.time_axis),
        on_pruned=lambda: log(
            f"[{next(stage)}/{stages}] fine-tuning the pruned model, distilling from the original"
        ),
    )
    if not main:
        return {}
    report["world_size"] = distributed.world_size()
    model_dir = save_model(
        pruned, out / "pruned_model", metadata={"source_model": config.model, "revision": config.revision}
    )
    report["pruned_finetune"] = {
        **accuracy(pruned, data.test, config.test_limit),
        "model_dir": model_dir.name,
        "prune": pr.to_dict(),
        "finetune": ft.to_dict(),
    }
    variants["pruned_finetune"] = pruned

    log(f"[{next(stage)}/{stages}] ONNX export of the original and pruned models, with parity (and INT8)")
    from prunecast.export.onnx_export import ExportConfig, export_onnx

    artifacts = out / "artifacts"
    report["export"] = {}
    for name, module in (("original", original), ("pruned", pruned)):
        manifest = export_onnx(
            module,
            artifacts / name,
            ExportConfig(
                source_model=config.model,
                source_revision=config.revision,
                data=config.data,
                time_axis=config.time_axis,
            ),
        )
        report["export"][name] = {"artifact": f"artifacts/{name}", "parity": asdict(manifest.parity)}
    candidates, precisions, rejected = {"pruned": "artifacts/pruned"}, {"pruned": "fp32"}, {}
    if config.int8:
        int8 = _export_int8(artifacts / "pruned", artifacts / "pruned_int8", config)
        if int8.accepted:
            candidates["pruned_int8"], precisions["pruned_int8"] = "artifacts/pruned_int8", "int8"
        else:
            rejected["pruned_int8"] = int8.decision
        report["export"]["pruned_int8"] = {"int8": asdict(int8)}

    log(
        f"[{next(stage)}/{stages}] latency of original vs pruned on {', '.join(config.bench.backends or ('every backend',))}"
    )
    timing = bench(
        {"original": artifacts / "original", **{n: out / a for n, a in candidates.items()}}, config.bench
    )
    report["latency"] = timing["rows"]
    report["speedups"] = timing["speedups"]
    report["machine"] = timing["machine"]
    report["bench_config"] = timing["config"]
    report["deploy"] = deploy_block(
        timing, candidates, precisions, config.latency.batch, out, data.test, config.test_limit, rejected
    )
    log(deploy_line(report["deploy"]).replace("**", ""))

    log(f"[{next(stage)}/{stages}] report and plots")
    report["seconds"] = round(time.perf_counter() - started, 1)
    from prunecast.pipeline.report import write_report

    write_report(report, out, _examples(variants, data.test, config.examples), pr.layers)
    log(f"done in {report['seconds']} s: {out / 'report.md'}")
    return report


def _export_int8(fp32_art: Path, art: Path, config: RunConfig):
    """The pruned FP32 artifact quantised to INT8 (calibrated on training windows) and judged by
    the export's guard on validation; a rejected attempt leaves no artifact, only its record."""
    import shutil

    from prunecast.export.onnx_export import ExportConfig, quantize_artifact

    manifest = quantize_artifact(
        fp32_art,
        art,
        ExportConfig(data=config.data, time_axis=config.time_axis, int8_tolerance=config.int8_tolerance),
    )
    if not manifest.int8.accepted:
        shutil.rmtree(art)
    return manifest.int8


def full_finetune(
    original: ForecastModule, data: PreparedData, config: FinetuneConfig
) -> tuple[ForecastModule, FinetuneReport]:
    """The baseline pruning has to beat: a copy of ``original`` fine-tuned on the truth alone."""
    full = copy.deepcopy(original)
    return full, finetune(full, data.train, data.val, config)


def prune_finetune(
    original: ForecastModule,
    data: PreparedData,
    prune_config: PruneConfig,
    finetune_config: FinetuneConfig,
    latency: LatencySettings | None = None,
    on_pruned=None,
    teacher: ForecastModule | None = None,
) -> tuple[ForecastModule, PruneReport, FinetuneReport]:
    """The pruned variant: a copy of ``original`` pruned to ``prune_config.budget``, then fine-tuned
    distilling from ``teacher`` (default ``original``: the model before pruning; the benchmark grid
    also tries the fully fine-tuned model). ``on_pruned`` is called between the two (progress logging).
    ``latency``: where a ``latency`` target measures (default :class:`LatencySettings`).
    One function, so ``prunecast run`` and the benchmark grid train the same variant.

    Past the checkpoint's horizon the copy grows its head (fitted to the roll-out) before it is
    pruned, so pruning scores, budgets and removes units of the one-pass model that will be served,
    not of the roll-out it replaces. On ETTh1-336 that left validation MSE 1.315 after pruning
    where pruning the roll-out and growing the pruned model's head after left 1.386."""
    pruned = copy.deepcopy(original)
    grown = grow_head(pruned, data.train, finetune_config)
    model = latency_model_for(prune_config.target, pruned, latency)
    pr = prune(pruned, data.train, data.val, prune_config, latency=model)
    if on_pruned is not None:
        on_pruned()
    ft = finetune(
        pruned, data.train, data.val, finetune_config, teacher=original if teacher is None else teacher
    )
    return pruned, pr, replace(ft, grown_head=ft.grown_head or grown)


def accuracy(module: ForecastModule, windows, limit: int | None = None) -> dict:
    """Test MSE/MAE of ``module`` (first ``limit`` windows), its size, cost and forecast head."""
    metrics = evaluate(module, windows, limit=limit)
    return {
        **metrics.to_dict(),
        "params": count_params(module),
        "macs": count_macs(module),
        "head": module.head_info(),
    }


@torch.inference_mode()
def _examples(variants: dict[str, ForecastModule], windows, count: int) -> dict:
    """A few test series spread over the split, with every variant's forecast of them."""
    indices = np.linspace(0, len(windows) - 1, count + 2)[1:-1].round().astype(np.int64)
    contexts, truths = windows.gather(indices)
    x = torch.from_numpy(contexts)
    return {
        "contexts": contexts,
        "truths": truths,
        "forecasts": {name: m.eval()(x).numpy() for name, m in variants.items()},
    }


def _silent(message: str) -> None:
    pass


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
