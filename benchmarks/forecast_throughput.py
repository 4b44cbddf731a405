"""End-to-end throughput of ``prunecast forecast`` on a 10,000-series ragged panel.

The panel is cut from the shared benchmark files (ETTh1, ETTm1, weather, national_illness): every
column of every file, at many start offsets and lengths, so series differ in start, length and
frequency. It is written once as Parquet, then forecast through ``forecast_file`` (the code path of
the CLI) with the original and the pruned TTM artifacts, alternating, ``--rounds`` times each. Each
stage's seconds come from the summary: reading, validation, fill, batching, the model, assembling
and writing the output. The target: reading + validation + writing take less time than the model
does for the pruned artifact. Writes the results JSON and, beside it, a PNG of the stage seconds
stacked per artifact (``forecast_throughput.png``).

    flock /tmp/prunecast-bench.lock python benchmarks/forecast_throughput.py \
        --original runs/latest/artifacts/original --pruned runs/latest/artifacts/pruned
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from prunecast.bench.timing import machine_info
from prunecast.runtime import Forecaster
from prunecast.runtime.frame import forecast_file

DATA = Path(
    os.environ.get("PRUNECAST_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data")
)
FILES = {
    "ETTh1": DATA / "ETT-small" / "ETTh1.csv",
    "ETTm1": DATA / "ETT-small" / "ETTm1.csv",
    "weather": DATA / "weather" / "weather.csv",
}
OUT = Path(__file__).parent / "results" / "forecast_throughput.json"
OUTSIDE = ("read", "validate", "write")
STACK = ("read", "validate", "fill", "model", "write")
"""The stages drawn in the plot, bottom to top; batching and assembling the output are drawn as "other"."""


def build_panel(n_series: int, context: int, seed: int = 0) -> pd.DataFrame:
    """``n_series`` long-format series (``unique_id/ds/y``) of 1-2x ``context`` points each."""
    rng = np.random.default_rng(seed)
    sources = []
    for name, path in FILES.items():
        frame = pd.read_csv(path, encoding_errors="replace")
        frame["date"] = pd.to_datetime(frame["date"])
        if name == "weather":  # the shipped file repeats one timestamp; keep the clean part after it
            frame = frame.iloc[19046 : 19046 + 9000].reset_index(drop=True)
            frame = frame[frame["date"] >= "2020-05-29 09:40:00"].reset_index(drop=True)
        for col in frame.columns[1:]:
            sources.append((name, frame["date"].to_numpy(), frame[col].to_numpy(np.float32)))
    ids, stamps, values = [], [], []
    for i in range(n_series):
        name, t, y = sources[i % len(sources)]
        length = int(rng.integers(context, 2 * context))
        start = int(rng.integers(0, len(y) - length))
        ids.append(np.full(length, f"{name}-{i:05d}"))
        stamps.append(t[start : start + length])
        values.append(y[start : start + length])
    return pd.DataFrame(
        {"unique_id": np.concatenate(ids), "ds": np.concatenate(stamps), "y": np.concatenate(values)}
    )


def plot(results: dict, target: bool, path: Path) -> None:
    """Stacked bars of the best round's stage seconds, one bar per artifact."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    bottom = np.zeros(len(names))
    for stage in (*STACK, "other"):
        if stage == "other":
            heights = [
                results[n]["seconds"] - sum(results[n]["stage_seconds"].get(k, 0.0) for k in STACK)
                for n in names
            ]
        else:
            heights = [results[n]["stage_seconds"].get(stage, 0.0) for n in names]
        bars = ax.bar(names, heights, bottom=bottom, label=stage, hatch="//" if stage == "model" else None)
        for bar, h in zip(bars, heights, strict=True):
            if h > 0.02 * max(r["seconds"] for r in results.values()):
                ax.text(
                    bar.get_x() + bar.get_width() / 2,
                    bar.get_y() + h / 2,
                    f"{h:.3f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                )
        bottom += np.asarray(heights)
    for i, n in enumerate(names):
        ax.text(
            i,
            bottom[i],
            f"{results[n]['seconds']:.2f} s, {results[n]['series_per_s']:,.0f} series/s",
            ha="center",
            va="bottom",
            fontsize=8,
        )
    ax.set_ylabel("seconds (best round)")
    verdict = "met" if target else "not met"
    ax.set_title(
        f"prunecast forecast, {results[names[0]]['series']:,}-series panel, stage seconds\ntarget read+validate+write < model (pruned): {verdict}",
        fontsize=9,
    )
    ax.legend(fontsize=7, loc="upper right")
    ax.set_ylim(0, bottom.max() * 1.15)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--original", required=True)
    parser.add_argument("--pruned", required=True)
    parser.add_argument("--series", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    load_before = os.getloadavg()

    models = {
        name: Forecaster.load(path, threads=args.threads)
        for name, path in (("original", args.original), ("pruned", args.pruned))
    }
    tmp = Path(tempfile.mkdtemp(prefix="prunecast-throughput-"))
    panel = build_panel(args.series, models["pruned"].context_length)
    data = tmp / "panel.parquet"
    panel.to_parquet(data)
    runs: dict[str, list[dict]] = {name: [] for name in models}
    for _ in range(args.rounds):
        for name, fc in models.items():
            runs[name].append(forecast_file(fc, data, tmp / f"{name}.parquet"))
    results = {}
    for name, summaries in runs.items():
        best = min(summaries, key=lambda s: s["seconds"])
        stages = best["stage_seconds"]
        outside = sum(stages.get(k, 0.0) for k in OUTSIDE)
        results[name] = {
            "series": best["series"],
            "rows_read": len(panel),
            "series_per_s": round(best["series"] / best["seconds"], 1),
            "seconds": best["seconds"],
            "stage_seconds": stages,
            "outside_model_share": round((best["seconds"] - stages["model"]) / best["seconds"], 3),
            "read_validate_write_s": round(outside, 4),
            "model_s": stages["model"],
            "rounds_seconds": [s["seconds"] for s in summaries],
        }
    target = results["pruned"]["read_validate_write_s"] < results["pruned"]["model_s"]
    report = {
        "benchmark": "prunecast forecast end to end (forecast_file), Parquet in and out",
        "panel": {"series": args.series, "rows": len(panel), "files": sorted(FILES)},
        "machine": {**machine_info(), "load_average_before": load_before},
        "threads": args.threads,
        "rounds": args.rounds,
        "best_round_of_each": results,
        "target_read_validate_write_below_model_pruned": bool(target),
        "measured_at": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    plot(results, bool(target), args.out.with_suffix(".png"))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
