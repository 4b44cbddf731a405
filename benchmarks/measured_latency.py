"""Pruning to measured latency (issue 16): the estimate's budget against the measured one, with
and without width rounding and depth pruning, then all of them timed side by side against the
original.

    flock /tmp/prunecast-bench.lock python benchmarks/measured_latency.py

TTM r2 on ETTh1-96 is pruned four ways (no fine-tuning: this is about speed and the latency
model, the accuracy benchmark covers fine-tuning): to the estimate's default budget
(``--target latency-estimate``, 0.18), and to the measured default (``--target latency``,
``MEASURED_BUDGET`` of the latency measured on onnxruntime at batch 256 with 2 threads; 0.35 when
``measured_latency.json`` was recorded, 0.2 since) without and with rounding the widths, these three on widths alone; and the default, which may also remove whole mixer blocks.
Each measured run's report holds its latency model's prediction for the final model, made before
that model was measured, beside the measurement. Then the original and the four
pruned models are exported and timed in one ``bench`` run (interleaved rounds), so every speedup
over the original in PyTorch eager is a ratio taken side by side. Writes
``benchmarks/results/measured_latency.json`` and ``measured_latency.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from prunecast.bench import BenchConfig, bench  # noqa: E402
from prunecast.bench.latency_model import LatencySettings, latency_model_for  # noqa: E402
from prunecast.bench.timing import TimingConfig  # noqa: E402
from prunecast.common.defaults import (  # noqa: E402
    DEFAULT_BUDGET,
    DEFAULT_MODEL,
    MEASURED_BUDGET,
    WIDTH_KINDS,
)
from prunecast.compress import PruneConfig, load_model, prune, save_model  # noqa: E402
from prunecast.data import prepare_windows  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
VARIANTS = {
    "estimate": PruneConfig(budget=DEFAULT_BUDGET, target="latency-estimate", kinds=WIDTH_KINDS),
    "measured": PruneConfig(budget=MEASURED_BUDGET, target="latency", round_widths=False, kinds=WIDTH_KINDS),
    "measured+rounding": PruneConfig(budget=MEASURED_BUDGET, target="latency", kinds=WIDTH_KINDS),
    "measured+rounding+blocks": PruneConfig(budget=MEASURED_BUDGET, target="latency"),
}
"""Each step's own effect: the first three narrow the model only; the last is the default, which may
also remove whole mixer blocks (depth pruning)."""


def prune_variants(data_name: str, horizon: int, settings: LatencySettings, workdir: Path) -> dict:
    """Prune a fresh copy of the model per variant; save each; return their summaries."""
    out = {}
    for name, config in VARIANTS.items():
        module = load_model(DEFAULT_MODEL, horizon=horizon)
        data = prepare_windows(data_name, module.context_length, horizon)
        latency = latency_model_for(config.target, module, settings)
        start = time.perf_counter()
        report = prune(module, data.train, data.val, config, latency=latency)
        save_model(module, workdir / name)
        summary = report.to_dict()
        out[name] = {
            "budget": config.budget,
            "target": config.target,
            "prune_seconds": round(time.perf_counter() - start, 1),
            "val_mse_before_finetune": round(report.val_loss_after, 4),
            "macs_reduction": round(summary["macs_reduction"], 2),
            "widths": {layer.name: layer.kept for layer in report.layers},
            "latency": summary["latency"],
            "rounding": summary["rounding"],
            "blocks_removed": summary["blocks_removed"],
        }
        print(f"{name}: {_line(out[name])}", flush=True)
    return out


def _line(v: dict) -> str:
    text = (
        f"{v['macs_reduction']}x fewer MACs, val MSE {v['val_mse_before_finetune']}, {v['prune_seconds']} s"
    )
    if v["latency"]:
        lat = v["latency"]
        text += (
            f"; predicted {lat['predicted_ms_after']:.3f} ms, realised {lat['realised_ms_after']:.3f} ms "
            f"(x{lat['realised_over_predicted']:.3f}; goal {lat['goal_ms']:.3f} ms)"
        )
    return text


def plot(result: dict, path: Path) -> None:
    """Left: predicted vs realised ms of the measured variants; right: speedups at batch 1 and 256."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    measured = {k: v for k, v in result["variants"].items() if v["latency"]}
    xs = range(len(measured))
    ax1.bar([x - 0.2 for x in xs], [v["latency"]["predicted_ms_after"] for v in measured.values()], 0.4)
    ax1.bar([x + 0.2 for x in xs], [v["latency"]["realised_ms_after"] for v in measured.values()], 0.4)
    ax1.axhline(next(iter(measured.values()))["latency"]["goal_ms"], color="k", ls="--", lw=1)
    ax1.set_xticks(list(xs), list(measured))
    ax1.legend(["goal", "predicted", "realised"], fontsize=8)
    ax1.set_ylabel("ms per batch of 256 (onnxruntime, 2 threads)")
    ratios = result["bench"]["speedups"]["p50_ratio"]
    names = list(result["variants"])
    for i, batch in enumerate(("1", "256")):
        ax2.bar(
            [x + 0.4 * i - 0.2 for x in range(len(names))],
            [ratios[f"{n}/onnxruntime"][batch] for n in names],
            0.4,
            label=f"batch {batch}",
        )
    ax2.set_xticks(range(len(names)), names)
    ax2.set_ylabel("p50 speedup vs original, PyTorch eager")
    ax2.legend(fontsize=8)
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default="ETTh1")
    parser.add_argument("--horizon", type=int, default=96)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--output", type=Path, default=RESULTS / "measured_latency.json")
    args = parser.parse_args()

    load_before = os.getloadavg()
    settings = LatencySettings(data=args.data, threads=args.threads)
    with tempfile.TemporaryDirectory(prefix="prunecast-measured-") as tmp:
        variants = prune_variants(args.data, args.horizon, settings, Path(tmp))
        models = {"original": DEFAULT_MODEL, **{n: str(Path(tmp) / n) for n in variants}}
        timing = TimingConfig(warmup=5, rounds=args.rounds, round_seconds=1.0)
        config = BenchConfig(batch_sizes=(1, 256), threads=args.threads, data=args.data, timing=timing)
        result = bench(models, config)
    out = {
        "benchmark": "prune to measured latency (issue 16): estimate vs measured budget, rounding, depth pruning",
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "machine_note": "2 cores; run under flock /tmp/prunecast-bench.lock; the load averages say "
        "whether other jobs shared the machine",
        "latency_settings": {
            "backend": settings.backend,
            "batch": settings.batch,
            "threads": settings.threads,
        },
        "variants": variants,
        "bench": result,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(out, indent=2) + "\n")
    plot(out, args.output.with_suffix(".png"))
    for key, by_batch in result["speedups"]["p50_ratio"].items():
        print(f"  {key}: " + ", ".join(f"batch {b}: {r:.2f}x" for b, r in by_batch.items()))
    print(f"load average before {load_before}, after {out['load_average_after']}; wrote {args.output}")


if __name__ == "__main__":
    main()
