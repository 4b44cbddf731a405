"""Wall time of ``prunecast prune`` and ``finetune`` under torchrun with 1 vs 2 workers, one thread each.

Real TTM r2 on ETTh1 (the defaults), fewer pruning steps and epochs to bound the run. Each pair is
measured side by side in one run; results go to ``benchmarks/results/ddp_scaling.json``.
Run it under ``flock /tmp/prunecast-bench.lock``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

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
    tmp = Path(tempfile.mkdtemp())
    rows = []
    for workers in (1, 2):
        wall, r = torchrun(workers, "prune", "-o", str(tmp / f"p{workers}"), "--max-steps", "5")
        kept = {layer["name"]: layer["kept"] for layer in r["layers"]}
        rows.append(
            {
                "command": "prune --max-steps 5",
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
            "4096",
        )
        rows.append(
            {
                "command": "finetune --lr 1e-3 --epochs 1 --windows-per-epoch 4096",
                "workers": workers,
                "wall_s": wall,
                "in_process_s": r["seconds"],
                "best_val_loss": r["best_val_loss"],
            }
        )
    kept1, kept2 = rows[0]["kept"], rows[1]["kept"]
    result = {
        "machine": f"2-core CPU, shared with other jobs; uptime load: {os.getloadavg()}",
        "threads_per_worker": 1,
        "rows": rows,
        "prune_speedup_in_process": rows[0]["in_process_s"] / rows[1]["in_process_s"],
        "finetune_speedup_in_process": rows[2]["in_process_s"] / rows[3]["in_process_s"],
        "prune_speedup_wall": rows[0]["wall_s"] / rows[1]["wall_s"],
        "finetune_speedup_wall": rows[2]["wall_s"] / rows[3]["wall_s"],
        "max_kept_difference_per_group": max(abs(kept1[g] - kept2[g]) for g in kept1),
    }
    OUT.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}, indent=1))


if __name__ == "__main__":
    main()
