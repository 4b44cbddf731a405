"""Wall time of ``prunecast prune`` and ``finetune`` under torchrun with 1 vs 2 workers, one thread each.

Real TTM r2 on ETTh1 (the defaults), fewer pruning steps and epochs to bound the run (``--max-steps``,
``--windows-per-epoch``). Each pair is measured side by side in one run; results go to
``benchmarks/results/ddp_scaling.json`` and a bar plot beside it. Run it under
``flock /tmp/prunecast-bench.lock``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from prunecast.bench.timing import machine_info

OUT = Path(__file__).parent / "results" / "ddp_scaling.json"


def torchrun(workers: int, *args: str) -> tuple[float, dict]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={workers}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    done = subprocess.run([*cmd, "-m", "prunecast", *args, "--json"], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(done.stderr[-3000:])
    return wall, json.loads([line for line in done.stdout.splitlines() if line.startswith("{")][-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-steps", type=int, default=5, help="pruning steps")
    parser.add_argument("--windows-per-epoch", type=int, default=4096, help="fine-tuning windows (1 epoch)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    load_before = os.getloadavg()
    tmp = Path(tempfile.mkdtemp())
    rows = []
    for workers in (1, 2):
        steps = str(args.max_steps)
        wall, r = torchrun(workers, "prune", "-o", str(tmp / f"p{workers}"), "--max-steps", steps)
        kept = {layer["name"]: layer["kept"] for layer in r["layers"]}
        rows.append(
            {
                "command": f"prune --max-steps {steps}",
                "workers": workers,
                "wall_s": wall,
                "in_process_s": r["seconds"],
                "val_loss_after": r["val_loss_after"],
                "kept": kept,
            }
        )
    for workers in (1, 2):
        wall, r = torchrun(
            workers,
            "finetune",
            "--model",
            str(tmp / "p1"),
            "-o",
            str(tmp / f"f{workers}"),
            "--lr",
            "1e-3",
            "--epochs",
            "1",
            "--windows-per-epoch",
            str(args.windows_per_epoch),
        )
        rows.append(
            {
                "command": f"finetune --lr 1e-3 --epochs 1 --windows-per-epoch {args.windows_per_epoch}",
                "workers": workers,
                "wall_s": wall,
                "in_process_s": r["seconds"],
                "best_val_loss": r["best_val_loss"],
            }
        )
    kept1, kept2 = rows[0]["kept"], rows[1]["kept"]
    result = {
        "machine": {
            **machine_info(),
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
        },
        "machine_idle_before": bool(load_before[0] < 0.5 * (os.cpu_count() or 1)),
        "threads_per_worker": 1,
        "rows": rows,
        "prune_speedup_in_process": rows[0]["in_process_s"] / rows[1]["in_process_s"],
        "finetune_speedup_in_process": rows[2]["in_process_s"] / rows[3]["in_process_s"],
        "prune_speedup_wall": rows[0]["wall_s"] / rows[1]["wall_s"],
        "finetune_speedup_wall": rows[2]["wall_s"] / rows[3]["wall_s"],
        "max_kept_difference_per_group": max(abs(kept1[g] - kept2[g]) for g in kept1),
    }
    result["measured_at"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    _plot(rows, args.out.with_suffix(".png"))
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}, indent=1))


def _plot(rows: list[dict], path: Path) -> None:
    """Wall and in-process seconds of each command with 1 and 2 workers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(8, 3.4))
    for ax, command in zip(axes, ("prune", "finetune"), strict=True):
        picked = [r for r in rows if r["command"].startswith(command)]
        labels = [f"{r['workers']} worker{'s' * (r['workers'] > 1)}" for r in picked]
        x = range(len(picked))
        wall = ax.bar([i - 0.2 for i in x], [r["wall_s"] for r in picked], 0.4, label="wall (torchrun)")
        inner = ax.bar([i + 0.2 for i in x], [r["in_process_s"] for r in picked], 0.4, label="in process")
        ax.bar_label(wall, fmt="%.0f")
        ax.bar_label(inner, fmt="%.0f")
        ax.set_xticks(list(x), labels)
        ax.set_title(picked[0]["command"], fontsize=9)
        ax.set_ylabel("seconds")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
