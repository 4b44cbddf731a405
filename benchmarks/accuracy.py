"""Accuracy of prune-then-finetune on ETTh1-96 with TTM r2 (issue 8 benchmark).

Rows: zero-shot; full fine-tuning; prune-then-finetune at several budgets of ``--target`` (default
the estimated latency; ``--target latency`` measures on onnxruntime, as ``prunecast run``'s default
does) with the loss-guided score, fine-tuned with the unpruned model as teacher; two ablations at
one budget: Torch-Pruning's magnitude score, and fine-tuning on the truth alone (no
distillation); and DLinear trained from scratch. Every trained row runs over ``--seeds`` seeds
(mean and std of test MSE/MAE), with parameters, MACs (batch 1) and wall time. The test split is
only ever evaluated, never used to choose anything.

    python benchmarks/accuracy.py                         # the full table (about an hour on 2 cores)
    python benchmarks/accuracy.py --budgets 0.5 --seeds 0 # one quick row
    python benchmarks/accuracy.py --target latency --budgets 0.2 --ablation-budget 0 --skip-full \
        --output benchmarks/results/accuracy_depth020.json   # prunecast run's default, 3 seeds
    python benchmarks/accuracy.py --family patchtst       # PatchTST rows only (no TTM rows)

``--family patchtst`` trains the published ETTh1 PatchTST/42 shape (context 336, patch 16 stride
8, d_model 16, 4 heads, 3 layers, FFN 128; transformers' ``PatchTSTForPrediction``) from scratch
with a bounded budget (``--train-epochs`` x 4096 windows, far below the paper's 100 epochs over
all windows), then prunes it (traced groups plus its hand-written attention heads) and fine-tunes
it with the trained model as teacher, and times both on PyTorch and onnxruntime side by side.
Writes ``accuracy_patchtst.json`` / ``.png``.

Writes ``benchmarks/results/accuracy.json`` and ``accuracy.png`` (test MSE vs MACs, and the kept
fraction per layer of the first pruned run of each budget).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from prunecast.bench.latency_model import latency_model_for
from prunecast.cli.common import add_kinds_arg
from prunecast.common.defaults import TARGETS
from prunecast.compress import FinetuneConfig, PruneConfig, count_macs, count_params, finetune, prune
from prunecast.data import prepare_windows
from prunecast.evaluate import evaluate
from prunecast.models import ForecastModule, load_pretrained

LOAD_BEFORE: list[float] = []
"""``os.getloadavg()`` when the run started (run it under ``flock /tmp/prunecast-bench.lock``)."""
RESULTS = Path(__file__).resolve().parent / "results"
MODEL = "ibm-granite/granite-timeseries-ttm-r2"


class DLinear(ForecastModule):
    """DLinear (Zeng et al., 2023): moving-average trend + remainder, one shared Linear each."""

    family = "dlinear"

    def __init__(self, context_length: int, horizon: int, kernel: int = 25):
        super().__init__(nn.ModuleDict(), context_length, horizon)
        self.kernel = kernel
        self.model["trend"] = nn.Linear(context_length, horizon)
        self.model["seasonal"] = nn.Linear(context_length, horizon)

    def forward(self, context: torch.Tensor) -> torch.Tensor:
        pad = (self.kernel - 1) // 2
        padded = torch.cat(
            [context[:, :1].expand(-1, pad), context, context[:, -1:].expand(-1, self.kernel - 1 - pad)],
            dim=1,
        )
        trend = padded.unfold(1, self.kernel, 1).mean(-1)
        return self.model["trend"](trend) + self.model["seasonal"](context - trend)

    def config_dict(self) -> dict:
        return {"kernel": self.kernel}


def run_row(
    name: str, build, data, seeds, prune_cfg=None, ft_cfg=None, do_finetune=True, teacher=None, keep=False
) -> dict:
    """One table row over ``seeds``; a pruned row fine-tunes with ``teacher`` (the unpruned model).
    ``keep`` returns the last seed's module under ``"module"``."""
    runs = []
    for seed in seeds:
        torch.manual_seed(seed)
        module = build()
        start = time.perf_counter()
        prune_report = None
        if prune_cfg is not None:
            config = PruneConfig(**{**prune_cfg, "seed": seed})
            latency = latency_model_for(config.target, module)  # as prunecast run: measured on onnxruntime
            prune_report = prune(module, data.train, data.val, config, latency=latency)
        ft_report = None
        if do_finetune:
            ft_cfg_seed = FinetuneConfig(**{**(ft_cfg or {}), "seed": seed})
            ft_report = finetune(module, data.train, data.val, ft_cfg_seed, teacher=teacher)
        seconds = time.perf_counter() - start
        metrics = evaluate(module, data.test)
        run = {
            "seed": seed,
            "test_mse": metrics.mse,
            "test_mae": metrics.mae,
            "params": count_params(module),
            "macs": count_macs(module),
            "seconds": seconds,
        }
        if prune_report is not None:
            run["prune"] = {
                "seconds": prune_report.seconds,
                "steps": len(prune_report.steps),
                "macs_reduction": prune_report.macs_before / prune_report.macs_after,
                "val_loss_before": prune_report.val_loss_before,
                "val_loss_after": prune_report.val_loss_after,
                "layers": [vars(layer) for layer in prune_report.layers],
                "dropped": [vars(d) for d in prune_report.dropped],
                "d_model": getattr(getattr(module.model, "config", None), "d_model", None),
                "decoder_d_model": getattr(getattr(module.model, "config", None), "decoder_d_model", None),
            }
        if ft_report is not None:
            run["finetune"] = {
                "seconds": ft_report.seconds,
                "lr": ft_report.lr,
                "best_epoch": ft_report.best_epoch,
                "best_val_loss": ft_report.best_val_loss,
            }
        runs.append(run)
        print(
            f"{name} seed {seed}: MSE {metrics.mse:.4f} MAE {metrics.mae:.4f} ({seconds:.0f} s)", flush=True
        )
    return {**({"module": module} if keep else {}), **summary(name, runs)}


def summary(name: str, runs: list[dict]) -> dict:
    """A table row: mean and std of test MSE/MAE over ``runs`` (one per seed), size, wall time."""
    mses = [r["test_mse"] for r in runs]
    maes = [r["test_mae"] for r in runs]
    return {
        "name": name,
        "test_mse_mean": statistics.mean(mses),
        "test_mse_std": statistics.stdev(mses) if len(mses) > 1 else 0.0,
        "test_mae_mean": statistics.mean(maes),
        "test_mae_std": statistics.stdev(maes) if len(maes) > 1 else 0.0,
        "params": runs[0]["params"],
        "macs": runs[0]["macs"],
        "seconds_mean": statistics.mean(r["seconds"] for r in runs),
        "runs": runs,
    }


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["rows"] if r["name"] != "DLinear"]
    pruned = [r for r in rows if r["runs"][0].get("prune")]
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    for r in rows:
        axes[0].errorbar(r["macs"] / 1e6, r["test_mse_mean"], yerr=r["test_mse_std"], fmt="o", capsize=3)
        axes[0].annotate(r["name"], (r["macs"] / 1e6, r["test_mse_mean"]), fontsize=7)
    axes[0].set_xlabel("MACs per window (millions)")
    axes[0].set_ylabel("test MSE (ETTh1-96)")
    axes[0].set_title(f"{result['benchmark'].rsplit(', ', 1)[-1]}: accuracy vs compute")
    for r in pruned:
        layers = r["runs"][0]["prune"]["layers"]
        axes[1].plot([layer["kept"] / layer["original"] for layer in layers], marker=".", label=r["name"])
    if pruned:
        names = [
            layer["name"].replace("model.", "").replace("mlp_mixer_encoder.", "").replace("encoder.", "")
            for layer in layers
        ]
        axes[1].set_xticks(range(len(names)), names, rotation=90, fontsize=5)
    axes[1].set_ylabel("kept fraction")
    axes[1].set_title("kept fraction per pruning group")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--budgets", type=float, nargs="+", default=None, help="default: 0.5 0.25 0.12 (ttm), 0.5 (patchtst)"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--target",
        choices=TARGETS,
        default="latency-estimate",
        help="what --budgets are fractions of (latency: measured on onnxruntime, as prunecast run's default)",
    )
    add_kinds_arg(parser)
    parser.add_argument(
        "--ablation-budget", type=float, default=0.12, help="budget of the two ablations (0: skip)"
    )
    parser.add_argument("--skip-full", action="store_true", help="skip the full fine-tuning baseline")
    parser.add_argument("--output", default=None, help="default: results/accuracy[_FAMILY].json")
    parser.add_argument("--family", choices=("ttm", "patchtst"), default="ttm")
    parser.add_argument("--train-epochs", type=int, default=12, help="patchtst: epochs from scratch")
    args = parser.parse_args()
    LOAD_BEFORE.extend(os.getloadavg())
    if args.family == "patchtst":
        args.output = args.output or str(RESULTS / "accuracy_patchtst.json")
        args.budgets = args.budgets or [0.5]
        return patchtst_rows(args)
    args.output = args.output or str(RESULTS / "accuracy.json")
    args.budgets = args.budgets or [0.5, 0.25, 0.12]

    data = prepare_windows("ETTh1", 512, 96)
    ttm = lambda: load_pretrained(MODEL, horizon=96)  # noqa: E731
    rows = [run_row("zero-shot", ttm, data, [0], do_finetune=False)]
    if not args.skip_full:
        rows.append(run_row("full fine-tune", ttm, data, args.seeds))
    teacher = ttm()  # the unpruned model the pruned ones distil from (prunecast run does the same)
    # a latency-estimate row keeps the name it had before --target existed
    of = "" if args.target == "latency-estimate" else f" of {args.target}"

    def prune_cfg(budget: float, **changes) -> dict:
        return {"budget": budget, "target": args.target, "kinds": tuple(args.kinds), **changes}

    for budget in args.budgets:
        name = f"prune {budget:g}{of} + ft (loss)"
        rows.append(run_row(name, ttm, data, args.seeds, prune_cfg=prune_cfg(budget), teacher=teacher))
        _save(args.output, rows, args)
    if args.ablation_budget:
        budget = args.ablation_budget
        cfg = prune_cfg(budget, importance="magnitude")
        name = f"prune {budget:g}{of} + ft (magnitude)"
        rows.append(run_row(name, ttm, data, args.seeds, prune_cfg=cfg, teacher=teacher))
        name = f"prune {budget:g}{of} + ft (loss, no distillation)"
        rows.append(run_row(name, ttm, data, args.seeds, prune_cfg=prune_cfg(budget)))
        _save(args.output, rows, args)
    dlinear_ft = {"lr_candidates": (1e-3, 3e-3, 1e-2), "epochs": 10}
    rows.append(run_row("DLinear", lambda: DLinear(512, 96), data, args.seeds, ft_cfg=dlinear_ft))
    _save(args.output, rows, args)


PATCHTST_ETTH1 = {
    "model_type": "patchtst",
    "context_length": 336,
    "prediction_length": 96,
    "num_input_channels": 1,
    "patch_length": 16,
    "patch_stride": 8,
    "d_model": 16,
    "num_attention_heads": 4,
    "num_hidden_layers": 3,
    "ffn_dim": 128,
    "dropout": 0.3,
    "head_dropout": 0.0,
    "pooling_type": None,
    "norm_type": "batchnorm",
    "scaling": "std",
}
"""PatchTST/42's ETTh1 hyper-parameters (Nie et al., ICLR 2023), whose published test MSE at
horizon 96 is 0.370; transformers' names."""


def patchtst_rows(args) -> None:
    """Per seed: train PatchTST from scratch, prune + distilled fine-tune, time both."""
    import copy
    import tempfile

    from prunecast.bench import BenchConfig, bench
    from prunecast.bench.timing import TimingConfig
    from prunecast.compress import save_model
    from prunecast.models.patchtst import PatchTSTAdapter

    data = prepare_windows("ETTh1", PATCHTST_ETTH1["context_length"], 96)
    train_cfg = {"lr": 1e-3, "epochs": args.train_epochs, "windows_per_epoch": 4096, "batch_size": 128}
    ft_cfg = {"epochs": 4, "windows_per_epoch": 4096, "lr_trial_windows": 2048, "batch_size": 128}
    rows = []
    trained: dict[int, ForecastModule] = {}

    def from_scratch() -> ForecastModule:
        return PatchTSTAdapter().from_config(PATCHTST_ETTH1, PATCHTST_ETTH1["context_length"], 96)

    def build_trained(seed: int):
        return lambda: copy.deepcopy(trained[seed])

    for seed in args.seeds:  # one seed at a time: the pruned row starts from that seed's model
        row = run_row("PatchTST from scratch", from_scratch, data, [seed], ft_cfg=train_cfg, keep=True)
        trained[seed] = row.pop("module")
        rows.append(row)
        for budget in args.budgets:
            name = f"PatchTST prune {budget:g} + ft"
            pruned = run_row(
                name,
                build_trained(seed),
                data,
                [seed],
                prune_cfg={"budget": budget},
                ft_cfg=ft_cfg,
                teacher=trained[seed],
                keep=True,
            )
            with tempfile.TemporaryDirectory(prefix="prunecast-acc-") as tmp:
                save_model(trained[seed], Path(tmp) / "trained")
                save_model(pruned.pop("module"), Path(tmp) / "pruned")
                timing = BenchConfig(
                    batch_sizes=(1, 256), backends=("torch", "onnxruntime"), timing=TimingConfig(rounds=3)
                )
                pruned["latency"] = bench(
                    {"trained": Path(tmp) / "trained", "pruned": Path(tmp) / "pruned"}, timing
                )
            pruned["onnxruntime_speedup"] = ort_speedup(pruned["latency"])
            print(f"{name} seed {seed}: onnxruntime p50 speedup {pruned['onnxruntime_speedup']}", flush=True)
            rows.append(pruned)
        _save(
            args.output, _merge(rows), args, "ETTh1, horizon 96, context 336, test split (scaled), PatchTST"
        )


def ort_speedup(latency: dict) -> dict[str, float]:
    """Per batch size: trained p50 / pruned p50 on onnxruntime, both timed in the same run."""
    p50 = {(r["model"], r["batch"]): r["p50_ms"] for r in latency["rows"] if r["backend"] == "onnxruntime"}
    return {
        str(batch): p50[("trained", batch)] / p50[("pruned", batch)]
        for model, batch in p50
        if model == "pruned"
    }


def _merge(rows: list[dict]) -> list[dict]:
    """One row per name over the seeds run so far (mean and std of test MSE/MAE)."""
    by_name: dict[str, list[dict]] = {}
    for r in rows:
        by_name.setdefault(r["name"], []).append(r)
    out = []
    for name, parts in by_name.items():
        merged = summary(name, [run for p in parts for run in p["runs"]])
        if "latency" in parts[0]:
            merged["latency"] = [p["latency"] for p in parts]
            speedups = [p["onnxruntime_speedup"] for p in parts]
            merged["onnxruntime_speedup"] = speedups
            merged["onnxruntime_speedup_mean"] = {
                batch: statistics.mean(s[batch] for s in speedups) for batch in speedups[0]
            }
        out.append(merged)
    return out


def _save(
    output: str,
    rows: list[dict],
    args,
    benchmark: str = "ETTh1, horizon 96, context 512, test split (scaled), TTM r2",
) -> None:
    result = {
        "benchmark": benchmark,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, torch threads "
        f"{torch.get_num_threads()} (shared with other jobs)",
        "load_before": LOAD_BEFORE,
        "idle": bool(LOAD_BEFORE) and LOAD_BEFORE[0] < 0.5 * (os.cpu_count() or 1),
        "defaults": {"prune": vars(PruneConfig()), "finetune": vars(FinetuneConfig())},
        "args": vars(args),
        "rows": rows,
    }
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    Path(output).write_text(json.dumps(result, indent=2, default=str))
    plot(result, Path(output).with_suffix(".png"))
    print(f"wrote {output}", flush=True)


if __name__ == "__main__":
    main()
