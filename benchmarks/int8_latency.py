"""FP32 vs INT8 on onnxruntime CPU, original and pruned TTM r2 (issue 16 benchmark).

    prunecast export ibm-granite/granite-timeseries-ttm-r2 --int8 --out /tmp/int8/original
    prunecast export /work/artifacts/run_default/pruned_model --int8 --out /tmp/int8/pruned
    flock /tmp/prunecast-bench.lock python benchmarks/int8_latency.py \\
        --fp32 original=/work/artifacts/run_default/artifacts/original \\
        --fp32 pruned=/work/artifacts/run_default/artifacts/pruned \\
        --int8 original=/tmp/int8/original --int8 pruned=/tmp/int8/pruned

Every artifact is timed through the runtime ``Forecaster`` (onnxruntime, fixed threads, no spinning)
at batch 1, 8, 64 and 256 in interleaved rounds, together with the original in PyTorch eager, so
each ratio is of figures taken side by side in one run. An INT8 export the accuracy guard rejected
holds the FP32 graph; it is timed all the same, quantised again here with the export's own settings,
and marked ``rejected``. Validation and test MSE (scaled ETTh1, every window) of each artifact come
from the same Forecaster. Each row's ``parity_max_abs_err`` is against the baseline (the first
``--fp32``) in PyTorch eager on the timed inputs, so for another model it is that model's difference
from the baseline; ``guard`` holds each INT8 graph's error against its own FP32 graph. Writes
``benchmarks/results/int8_latency.json`` and ``.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from prunecast.bench.runner import BATCH_SIZES  # noqa: E402
from prunecast.bench.timing import Candidate, TimingConfig, machine_info, time_candidates  # noqa: E402
from prunecast.data import prepare_windows  # noqa: E402
from prunecast.export import load_manifest  # noqa: E402
from prunecast.export.manifest import ONNX_NAME  # noqa: E402
from prunecast.runtime import Forecaster  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
CPU_FLAGS = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8")


def cpu_flags() -> list[str]:
    """The SIMD features that decide whether INT8 matmuls can be fast here (VNNI above all)."""
    try:
        with open("/proc/cpuinfo") as fh:
            flags = next(line for line in fh if line.startswith("flags")).split(":", 1)[1].split()
    except (OSError, StopIteration):
        return []
    return [f for f in CPU_FLAGS if f in flags]


def requantized(art: Path, work: Path) -> Path:
    """A copy of a guard-rejected artifact whose model.onnx is the INT8 graph the guard judged."""
    from prunecast.export.int8 import calibration_indices, quantize_graph

    manifest = load_manifest(art)
    record = manifest.int8
    copy = work / art.name
    shutil.copytree(art, copy)
    train = prepare_windows(record.data, manifest.context_length, manifest.horizon).train
    contexts, _ = train.gather(calibration_indices(train, record.calibration_windows))
    quantize_graph(art / ONNX_NAME, copy / ONNX_NAME, contexts, tuple(record.op_types))
    return copy


def split_mse(forecaster: Forecaster, windows) -> float:
    sq, n = 0.0, 0
    for contexts, targets in windows.batches(1024):
        sq += float(np.square(forecaster.predict_batch(contexts).astype(np.float64) - targets).sum())
        n += targets.size
    return sq / n


def plot(result: dict, path: Path) -> None:
    """Left: p50 against batch, one line per model and precision. Right: FP32/INT8 p50 ratio."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    series: dict[str, list[tuple[int, float]]] = {}
    for r in result["rows"]:
        series.setdefault(r["model"], []).append((r["batch"], r["p50_ms"]))
    for label, points in sorted(series.items()):
        points.sort()
        left.plot(*zip(*points, strict=True), marker="o", label=label, ls="--" if "int8" in label else "-")
    left.set_xscale("log", base=2)
    left.set_yscale("log")
    left.set_xlabel("batch size (series)")
    left.set_ylabel("p50 latency (ms)")
    left.grid(alpha=0.3, which="both")
    left.legend(fontsize=8)
    for name, by_batch in result["int8_speedup"].items():
        batches = [int(b) for b in by_batch]
        right.plot(batches, list(by_batch.values()), marker="o", label=name)
    right.axhline(1.0, color="grey", lw=1)
    right.set_xscale("log", base=2)
    right.set_xlabel("batch size (series)")
    right.set_ylabel("FP32 p50 / INT8 p50 (onnxruntime)")
    right.grid(alpha=0.3, which="both")
    right.legend(fontsize=8)
    fig.suptitle(
        f"{result['machine']['processor']} ({', '.join(result['cpu_flags'])}), {result['threads']} threads"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _pairs(values: list[str]) -> dict[str, Path]:
    return {name: Path(path) for name, path in (v.split("=", 1) for v in values)}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--fp32", action="append", required=True, help="NAME=FP32 artifact (first: baseline)")
    parser.add_argument("--int8", action="append", required=True, help="NAME=artifact exported with --int8")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--round-seconds", type=float, default=0.6)
    parser.add_argument("--output", type=Path, default=RESULTS / "int8_latency.json")
    args = parser.parse_args()
    fp32, int8 = _pairs(args.fp32), _pairs(args.int8)
    if set(fp32) != set(int8):
        parser.error(f"--fp32 names {sorted(fp32)} and --int8 names {sorted(int8)} must match")
    loadavg = os.getloadavg()

    with tempfile.TemporaryDirectory(prefix="prunecast-int8-bench-") as tmp:
        artifacts, guard, requantised = {}, {}, set()
        for name in fp32:
            record = load_manifest(int8[name]).int8
            if record is None:
                parser.error(f"{int8[name]}: not exported with --int8 (no int8 record in its manifest)")
            guard[name] = {
                "accepted": record.accepted,
                "decision": record.decision,
                "calibration_windows": record.calibration_windows,
                "max_abs_err_vs_fp32": record.max_abs_err,
            }
            artifacts[f"{name}/fp32"] = fp32[name]
            artifacts[f"{name}/int8"] = int8[name] if record.accepted else requantized(int8[name], Path(tmp))
            if not record.accepted:
                requantised.add(f"{name}/int8")  # its manifest hashes the FP32 graph it shipped

        baseline = next(iter(fp32))
        forecasters = {
            key: Forecaster.load(
                art,
                backend="onnxruntime",
                device="cpu",
                threads=args.threads,
                spinning=False,
                verify=key not in requantised,
            )
            for key, art in artifacts.items()
        }
        eager = Forecaster.load(fp32[baseline], backend="torch", device="cpu", threads=args.threads)
        first = forecasters[f"{baseline}/fp32"]
        data = prepare_windows("ETTh1", first.context_length, first.horizon)
        inputs, _ = data.test.gather(np.arange(max(BATCH_SIZES)) % len(data.test))
        reference = eager.predict_batch(inputs)
        candidates = []
        for key, fc in [*forecasters.items(), (f"{baseline}/fp32-torch-eager", eager)]:
            err = float(np.abs(fc.predict_batch(inputs) - reference).max())
            backend = "torch" if key.endswith("eager") else "onnxruntime"
            for batch in BATCH_SIZES:
                candidates.append(
                    Candidate(key, backend, batch, args.threads, fc.predict_batch, inputs[:batch].copy(), err)
                )
        timing = TimingConfig(warmup=5, rounds=args.rounds, round_seconds=args.round_seconds)
        rows = [r.to_dict() for r in time_candidates(candidates, timing)]
        accuracy = {
            key: {
                "val_mse": round(split_mse(fc, data.val), 6),
                "test_mse": round(split_mse(fc, data.test), 6),
            }
            for key, fc in forecasters.items()
        }

    p50 = {(r["model"], r["batch"]): r["p50_ms"] for r in rows}
    int8_speedup = {
        name: {str(b): round(p50[(f"{name}/fp32", b)] / p50[(f"{name}/int8", b)], 3) for b in BATCH_SIZES}
        for name in fp32
    }
    vs_eager = {
        key: {str(b): round(p50[(f"{baseline}/fp32-torch-eager", b)] / p50[(key, b)], 3) for b in BATCH_SIZES}
        for key in forecasters
    }
    result = {
        "rows": rows,
        "int8_speedup": int8_speedup,
        "speedup_vs_original_torch_eager": vs_eager,
        "accuracy": accuracy,
        "guard": guard,
        "artifacts": {key: str(art) for key, art in artifacts.items()},
        "threads": args.threads,
        "timing": timing.__dict__,
        "loadavg_before": [round(x, 2) for x in loadavg],
        "idle": loadavg[0] < 0.5,
        "cpu_flags": cpu_flags(),
        "machine": machine_info(),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    plot(result, args.output.with_suffix(".png"))
    print(
        f"load average before {result['loadavg_before']}; CPU {result['machine']['processor']} {result['cpu_flags']}"
    )
    for name, by_batch in int8_speedup.items():
        print(f"{name}: FP32/INT8 p50 " + ", ".join(f"b{b} {r:.2f}x" for b, r in by_batch.items()))
        print(f"  guard: {guard[name]['decision']}")
    for key, by_batch in vs_eager.items():
        print(f"{key} vs {baseline} torch eager: " + ", ".join(f"b{b} {r:.2f}x" for b, r in by_batch.items()))
    for key, acc in accuracy.items():
        print(f"{key}: val MSE {acc['val_mse']}, test MSE {acc['test_mse']}")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
