"""Where onnxruntime spends its time in the exported pruned model, before and after the graph rewrites.

    flock /tmp/prunecast-bench.lock python benchmarks/graph_profile.py \\
        --pruned /work/artifacts/run_default/pruned_model

Exports the saved pruned model once (torch dynamo) and builds three graphs from it: ``none`` (no
rewrites), ``before`` (the bias-into-Gemm and square-as-Mul rewrites export applied before the
layout rewrites existed) and ``after`` (every rewrite in :data:`prunecast.export.optimize.REWRITES`).
For each: the op counts in the file and after onnxruntime's own basic (constant-folding) pass,
parity against PyTorch on real test windows, onnxruntime's profiler (``enable_profiling``) at
batch 256 summed per executed op type, and p50 latency at batch 1 and 256 timed in interleaved
rounds (FP32, CPU, one session per graph, fixed threads). Writes
``benchmarks/results/graph_profile.json`` and ``graph_profile.png`` (kernel time per op type).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402

from prunecast.bench.timing import Candidate, TimingConfig, machine_info, time_candidates  # noqa: E402
from prunecast.compress import load_model  # noqa: E402
from prunecast.export.onnx_export import export_graph, parity_windows  # noqa: E402
from prunecast.export.optimize import REWRITES, optimize_graph  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
VARIANTS = {"none": (), "before": ("matmul_bias_to_gemm", "square_to_mul"), "after": REWRITES}


def session(path: Path, threads: int, profile_prefix: str | None = None, level=None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    if level is not None:
        options.graph_optimization_level = level
        options.optimized_model_filepath = str(path.with_suffix(".ort_basic.onnx"))
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def profile(path: Path, inputs: np.ndarray, threads: int, runs: int, workdir: Path) -> dict:
    """Kernel time per executed op type (after onnxruntime's fusions), over ``runs`` timed runs."""
    sess = session(path, threads, str(workdir / path.stem))
    for _ in range(3):
        sess.run(None, {"context": inputs})
    events_start = time.perf_counter()
    for _ in range(runs):
        sess.run(None, {"context": inputs})
    wall = time.perf_counter() - events_start
    events = json.loads(Path(sess.end_profiling()).read_text())
    per_op: dict[str, list[float]] = collections.defaultdict(list)
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            per_op[event["args"]["op_name"]].append(event["dur"])
    total_runs = runs + 3  # the profiler also saw the warm-up runs
    total = sum(sum(d) for d in per_op.values())
    ops = {
        op: {
            "share": round(sum(d) / total, 4),
            "ms_per_run": round(sum(d) / total_runs / 1e3, 4),
            "kernels_per_run": round(len(d) / total_runs),
        }
        for op, d in sorted(per_op.items(), key=lambda kv: -sum(kv[1]))
    }
    return {
        "kernel_ms_per_run": round(total / total_runs / 1e3, 3),
        "wall_ms_per_run_profiled": round(wall / runs * 1e3, 3),
        "ops": ops,
    }


def op_counts(model: onnx.ModelProto) -> dict[str, int]:
    return dict(collections.Counter(node.op_type for node in model.graph.node).most_common())


def plot(result: dict, path: Path) -> None:
    """Kernel ms per run per executed op type at batch 256, one bar per graph."""
    names = list(result["graphs"])
    ops = sorted(
        {op for g in result["graphs"].values() for op in g["profile_b256"]["ops"]},
        key=lambda op: (
            -max(
                g["profile_b256"]["ops"].get(op, {"ms_per_run": 0})["ms_per_run"]
                for g in result["graphs"].values()
            )
        ),
    )[:14]
    fig, ax = plt.subplots(figsize=(10, 4.8))
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        prof = result["graphs"][name]["profile_b256"]
        values = [prof["ops"].get(op, {"ms_per_run": 0.0})["ms_per_run"] for op in ops]
        p50 = result["graphs"][name]["p50_ms"]["256"]
        ax.bar(
            np.arange(len(ops)) + i * width, values, width, label=f"{name} (p50 {p50:.1f} ms at batch 256)"
        )
    ax.set_xticks(np.arange(len(ops)) + width * (len(names) - 1) / 2, ops, rotation=35, ha="right")
    ax.set_ylabel("kernel ms per run (batch 256)")
    load = result["loadavg_before"][0]
    ax.set_title(
        f"pruned TTM r2 on onnxruntime CPU, {result['threads']} threads (load avg {load:.2f} before)"
    )
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--pruned", default="/work/artifacts/run_default/pruned_model", help="saved pruned model"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--profile-runs", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--output", type=Path, default=RESULTS / "graph_profile.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    loadavg_before = os.getloadavg()
    module = load_model(args.pruned).eval()
    contexts = parity_windows("ETTh1", module, 256)
    with torch.inference_mode():
        reference = module(torch.from_numpy(contexts)).numpy()
    result = {
        "pruned": str(args.pruned),
        "threads": args.threads,
        "loadavg_before": loadavg_before,
        "machine": machine_info(),
        "graphs": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        export_graph(module, work / "raw.onnx", 18)
        paths = {}
        for name, rewrites in VARIANTS.items():
            model, counts = optimize_graph(onnx.load(work / "raw.onnx"), rewrites)
            onnx.checker.check_model(model, full_check=True)
            paths[name] = work / f"{name}.onnx"
            onnx.save(model, paths[name])
            session(paths[name], args.threads, level=ort.GraphOptimizationLevel.ORT_ENABLE_BASIC)
            got = session(paths[name], args.threads).run(None, {"context": contexts})[0]
            result["graphs"][name] = {
                "rewrites": {k: v for k, v in counts.items() if k in rewrites},
                "nodes": len(model.graph.node),
                "op_counts": op_counts(model),
                "nodes_after_ort_basic": len(
                    onnx.load(paths[name].with_suffix(".ort_basic.onnx")).graph.node
                ),
                "parity_max_abs_err_vs_torch_b256": float(np.abs(got - reference).max()),
            }
        for name, path in paths.items():
            result["graphs"][name]["profile_b256"] = profile(
                path, contexts, args.threads, args.profile_runs, work
            )
        candidates = []
        for name, path in paths.items():
            sess = session(path, args.threads)
            for batch in (1, 256):
                candidates.append(
                    Candidate(
                        name,
                        "onnxruntime",
                        batch,
                        args.threads,
                        lambda x, s=sess: s.run(None, {"context": x})[0],
                        np.ascontiguousarray(contexts[:batch]),
                    )
                )
        rows = time_candidates(candidates, TimingConfig(warmup=5, rounds=args.rounds, round_seconds=1.0))
    for row in rows:
        result["graphs"][row.model].setdefault("p50_ms", {})[str(row.batch)] = row.p50_ms
        result["graphs"][row.model].setdefault("p95_ms", {})[str(row.batch)] = row.p95_ms
    result["p50_ratio_before_over_after"] = {
        b: round(result["graphs"]["before"]["p50_ms"][b] / result["graphs"]["after"]["p50_ms"][b], 3)
        for b in ("1", "256")
    }
    result["p50_ratio_none_over_after"] = {
        b: round(result["graphs"]["none"]["p50_ms"][b] / result["graphs"]["after"]["p50_ms"][b], 3)
        for b in ("1", "256")
    }
    result["loadavg_after"] = os.getloadavg()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    plot(result, args.output.with_suffix(".png"))
    for name, graph in result["graphs"].items():
        top = ", ".join(f"{op} {v['share']:.0%}" for op, v in list(graph["profile_b256"]["ops"].items())[:6])
        print(
            f"{name}: {graph['nodes']} nodes, Transpose {graph['op_counts'].get('Transpose', 0)}, "
            f"p50 batch 1 {graph['p50_ms']['1']:.3f} ms, batch 256 {graph['p50_ms']['256']:.2f} ms, "
            f"parity {graph['parity_max_abs_err_vs_torch_b256']:.2e}; profile: {top}"
        )
    print(
        f"before/after p50: {result['p50_ratio_before_over_after']}; load {loadavg_before} -> {result['loadavg_after']}"
    )
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
