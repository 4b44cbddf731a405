"""Latency of the original and pruned models across backends (issue 6 benchmark).

    python benchmarks/latency.py --pruned runs/latest/pruned_model   # a model from `prunecast run`

Times PyTorch eager, onnxruntime CPU and (when it loads) TensorRT at batch 1, 8, 64 and 256 with
fixed threads, warm-up excluded, in interleaved rounds so that every speedup is a ratio of figures
taken side by side. Writes ``benchmarks/results/latency_cpu.json`` (rows, speedups, MAC
reduction, machine and versions) and ``latency_cpu.png``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from prunecast.bench import BenchConfig, bench  # noqa: E402
from prunecast.bench.timing import TimingConfig  # noqa: E402
from prunecast.common.defaults import DEFAULT_MODEL  # noqa: E402
from prunecast.compress import (
    count_macs,  # noqa: E402
    load_model,  # noqa: E402
)

RESULTS = Path(__file__).resolve().parent / "results"


def plot(result: dict, path: Path) -> None:
    """p50 latency against batch size, one line per (model, backend), log-log."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    series: dict[str, list[tuple[int, float]]] = {}
    for r in result["rows"]:
        series.setdefault(f"{r['model']} / {r['backend']}", []).append((r["batch"], r["p50_ms"]))
    for label, points in series.items():
        points.sort()
        ax.plot(*zip(*points, strict=True), marker="o", label=label, ls="--" if "original" in label else "-")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch size (series)")
    ax.set_ylabel("p50 latency (ms)")
    ax.set_title(f"{result['machine']['processor']}, {result['config']['threads']} threads")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--original", default=DEFAULT_MODEL, help="original model (HF id, dir or artifact)")
    parser.add_argument("--pruned", required=True, help="pruned model directory or artifact")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--output", type=Path, default=RESULTS / "latency_cpu.json")
    args = parser.parse_args()

    timing = TimingConfig(warmup=5, rounds=args.rounds, round_seconds=1.0)
    result = bench(
        {"original": args.original, "pruned": args.pruned}, BenchConfig(threads=args.threads, timing=timing)
    )
    macs = {}
    for name, source in (("original", args.original), ("pruned", args.pruned)):
        path = Path(source) / "torch" if (Path(source) / "manifest.json").is_file() else source
        macs[name] = count_macs(load_model(str(path)))
    result["macs"] = macs
    result["macs_reduction"] = round(macs["original"] / macs["pruned"], 3)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    plot(result, args.output.with_suffix(".png"))
    print(f"MACs reduction {result['macs_reduction']}x; p50 speedups vs {result['speedups']['baseline']}:")
    for key, by_batch in result["speedups"]["p50_ratio"].items():
        print(f"  {key}: " + ", ".join(f"batch {b}: {r:.2f}x" for b, r in by_batch.items()))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
