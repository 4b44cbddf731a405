"""Wall time of the main job past the checkpoint's horizon (issue 15): ``prunecast run --horizon H
--compare-full-finetune`` on ETTm1 for H in 192, 336 and 720, each in its own process, with its
defaults (measured-latency budget, export, latency benchmark, INT8 candidate). The target: each
finishes within 25 minutes on 2 cores.

    flock /tmp/prunecast-bench.lock python benchmarks/run_horizons.py

Writes ``benchmarks/results/run_horizons.json``: per horizon the wall time, the load average before
and after (a run on a busy machine is slower; the file says whether it was idle), and the report's
zero-shot, full fine-tuning and pruned test MSE. Resumable: a horizon already in the file is skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "run_horizons.json"
DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ETT-small" / "ETTm1.csv"
HORIZONS = (192, 336, 720)
LIMIT_MINUTES = 25.0


def run_one(horizon: int, data: Path, out: Path) -> dict:
    """One ``prunecast run`` in a fresh process: its wall time and headline figures."""
    command = [
        sys.executable, "-m", "prunecast", "run", "--data", str(data), "--horizon", str(horizon),
        "--compare-full-finetune", "--out", str(out), "--json",
    ]  # fmt: skip
    load_before = os.getloadavg()
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"prunecast run --horizon {horizon} failed:\n{done.stderr[-3000:]}")
    report = json.loads(done.stdout)
    return {
        "horizon": horizon,
        "seconds": round(seconds, 1),
        "minutes": round(seconds / 60, 2),
        "within_limit": seconds / 60 <= LIMIT_MINUTES,
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
        "mse": {v: report[v]["mse"] for v in ("zero_shot", "full_finetune", "pruned_finetune")},
        "deploy": {k: report["deploy"][k] for k in ("artifact", "precision", "backend")},
        "finished_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--horizons", type=int, nargs="+", default=list(HORIZONS))
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    results = json.loads(args.results.read_text()) if args.results.exists() else {
        "benchmark": "prunecast run --horizon H --compare-full-finetune on ETTm1: wall time (target: "
        f"{LIMIT_MINUTES:.0f} minutes on 2 cores)",
        "machine": f"{os.cpu_count()} CPU cores; a run's loadavg_before includes the tail of the run "
        "before it in the same invocation",
        "runs": {},
    }  # fmt: skip
    for horizon in args.horizons:
        if str(horizon) in results["runs"]:
            continue
        with tempfile.TemporaryDirectory() as out:
            results["runs"][str(horizon)] = run_one(horizon, args.data, Path(out))
        print(json.dumps(results["runs"][str(horizon)]), flush=True)
        args.results.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
