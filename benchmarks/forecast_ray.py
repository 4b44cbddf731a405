"""Series/s of ``prunecast forecast`` in-process (``--engine local``) vs on Ray (``--engine ray``).

The panel is forecast_throughput.py's 10,000-series ragged panel (every column of ETTh1, ETTm1 and
weather at many offsets and lengths), written once as Parquet. Both engines forecast it with the
same artifact, Parquet in and out, alternating, ``--rounds`` times each: the local engine with
``--threads`` backend threads in this process; Ray on a local cluster of ``--workers`` actors with
one backend thread each, plus one CPU for Ray Data's tasks, as the CLI starts it (the cluster is started once, its start-up timed on its
own, as a command that starts a cluster pays it once). The outputs of the two engines are checked
equal. On a 2-core machine Ray cannot win: the read, the shuffle by series and the collection cost
more than they spread; the point is that the same code path scales out to a real cluster.

    flock /tmp/prunecast-bench.lock python benchmarks/forecast_ray.py \\
        --artifact /work/artifacts/run_default/artifacts/pruned
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).parent))
import forecast_throughput  # noqa: E402

from prunecast.bench.timing import machine_info  # noqa: E402
from prunecast.runtime import Forecaster  # noqa: E402
from prunecast.runtime.frame import forecast_file  # noqa: E402
from prunecast.runtime.ray_engine import RayConfig, forecast_file_ray  # noqa: E402

OUT = Path(__file__).parent / "results" / "forecast_ray.json"
SHARED_DATA = os.environ.get("PRUNECAST_SHARED_DATA")
"""The shared data elsewhere than beside the repository (e.g. from a git worktree)."""


def build_panel(n_series: int, context: int):
    """forecast_throughput.py's panel, read from ``PRUNECAST_SHARED_DATA`` when that is set."""
    if SHARED_DATA:
        forecast_throughput.FILES = {
            name: Path(SHARED_DATA) / path.relative_to(forecast_throughput.DATA)
            for name, path in forecast_throughput.FILES.items()
        }
    return forecast_throughput.build_panel(n_series, context)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifact", required=True, help="an exported artifact directory (the pruned TTM)")
    parser.add_argument("--series", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="backend threads of the local engine")
    parser.add_argument("--workers", type=int, default=2, help="Ray actors (one thread each)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    import ray

    load_before = os.getloadavg()
    tmp = Path(tempfile.mkdtemp(prefix="prunecast-ray-bench-"))
    local_fc = Forecaster.load(args.artifact, threads=args.threads)
    panel = build_panel(args.series, local_fc.context_length)
    data = tmp / "panel.parquet"
    panel.to_parquet(data)
    started = time.perf_counter()
    # one CPU more than the actors hold, for Ray Data's read and shuffle tasks (as the CLI starts it)
    ray.init(
        num_cpus=args.workers + 1, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR
    )
    startup_s = time.perf_counter() - started
    ray_config = RayConfig(num_workers=args.workers, threads=1)
    runs: dict[str, list[dict]] = {"local": [], "ray": []}
    for _ in range(args.rounds):
        runs["local"].append(forecast_file(local_fc, data, tmp / "local.parquet"))
        runs["ray"].append(forecast_file_ray(args.artifact, data, tmp / "ray.parquet", ray_config=ray_config))
    ray.shutdown()
    pd.testing.assert_frame_equal(
        pd.read_parquet(tmp / "ray.parquet"), pd.read_parquet(tmp / "local.parquet")
    )
    results = {}
    for name, summaries in runs.items():
        best = min(summaries, key=lambda s: s["seconds"])
        results[name] = {
            "series": best["series"],
            "seconds": best["seconds"],
            "series_per_s": round(best["series"] / best["seconds"], 1),
            "stage_seconds": best["stage_seconds"],
            "rounds_seconds": [s["seconds"] for s in summaries],
        }
    with_startup = results["ray"]["seconds"] + startup_s
    results["ray"]["cluster_startup_s"] = round(startup_s, 3)
    results["ray"]["series_per_s_with_startup"] = round(args.series / with_startup, 1)
    report = {
        "benchmark": "prunecast forecast, --engine local vs --engine ray (local cluster), Parquet in and out",
        "artifact": str(args.artifact),
        "panel": {"series": args.series, "rows": len(panel)},
        "machine": {**machine_info(), "ray": ray.__version__, "load_average_before": load_before},
        "machine_idle_before": bool(load_before[0] < 0.5 * (os.cpu_count() or 1)),
        "local_threads": args.threads,
        "ray_workers": args.workers,
        "ray_threads_per_worker": 1,
        "rounds": args.rounds,
        "outputs_equal": True,
        "best_round_of_each": results,
        "ray_over_local_series_per_s": round(
            results["ray"]["series_per_s"] / results["local"]["series_per_s"], 4
        ),
        "measured_at": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    _plot(report, args.out.with_suffix(".png"))
    print(json.dumps(report, indent=2))


def _plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    best = report["best_round_of_each"]
    labels = [
        f"local\n({report['local_threads']} threads)",
        f"ray\n({report['ray_workers']} actors)",
        "ray incl.\ncluster start",
    ]
    values = [
        best["local"]["series_per_s"],
        best["ray"]["series_per_s"],
        best["ray"]["series_per_s_with_startup"],
    ]
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    bars = ax.bar(labels, values, color=["#4c72b0", "#dd8452", "#c8a58a"])
    ax.bar_label(bars, fmt="%.0f")
    ax.set_ylabel("series / s")
    ax.set_title(f"forecast {report['panel']['series']:,} series ({report['machine']['cpu_count']} cores)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
