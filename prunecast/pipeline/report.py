"""A run's report: ``report.json`` (every figure), ``report.md`` (for people) and the PNG plots."""

from __future__ import annotations

import json
from pathlib import Path

from prunecast.compress import LayerWidth
from prunecast.pipeline.deploy import deploy_line
from prunecast.pipeline.plots import plot_accuracy_vs_cost, plot_forecasts, plot_kept_widths

PLOTS = {
    "forecasts": "forecasts.png",
    "accuracy_vs_cost": "accuracy_vs_cost.png",
    "kept_width": "kept_width.png",
}
VARIANT_LABELS = {
    "zero_shot": "zero-shot",
    "full_finetune": "full fine-tune",
    "pruned_finetune": "pruned + fine-tune",
}
LATENCY_BATCH = 256


def write_report(report: dict, out: Path, examples: dict, layers: list[LayerWidth]) -> None:
    """Write the plots, then ``report.json`` and ``report.md`` naming them."""
    variants = [v for v in VARIANT_LABELS if v in report]
    plot_forecasts(examples["contexts"], examples["truths"], examples["forecasts"], out / PLOTS["forecasts"])
    latency_backend, batch = _latency_point(report)
    costs = {}
    for v in variants:
        model = "pruned" if v == "pruned_finetune" else "original"
        costs[v] = {
            "mse": report[v]["mse"],
            "macs": report[v]["macs"],
            "latency_ms": _p50(report, model, latency_backend, batch),
        }
    plot_accuracy_vs_cost(
        costs, out / PLOTS["accuracy_vs_cost"], f"p50 latency (ms), {latency_backend}, batch {batch}"
    )
    plot_kept_widths([(w.name, w.original, w.kept) for w in layers], out / PLOTS["kept_width"])
    report["plots"] = dict(PLOTS)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(render_markdown(report))


def render_markdown(report: dict) -> str:
    variants = [v for v in VARIANT_LABELS if v in report]
    zs = report["zero_shot"]
    revision = f" (revision `{report['revision']}`)" if report.get("revision") else ""
    lines = [
        f"# prunecast run: {report['model']}{revision} on {Path(report['data']).name}, horizon {report['horizon']}",
        "",
        f"Context {report['context_length']}, {report['test_windows']} test windows (scaled data), "
        f"{report['seconds']} s in all.",
        "",
        *([deploy_line(report["deploy"]), ""] if "deploy" in report else []),
        "## Accuracy and size",
        "",
        "| variant | test MSE | test MAE | params | MMACs / series | MACs reduction | forecast head |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for v in variants:
        r = report[v]
        lines.append(
            f"| {VARIANT_LABELS[v]} | {r['mse']:.4f} | {r['mae']:.4f} | {r['params']:,} | "
            f"{r['macs'] / 1e6:.2f} | {zs['macs'] / r['macs']:.2f}x | {head_label(r)} |"
        )
    lines += ["", "## Export parity (ONNX vs PyTorch, max abs error on scaled data)", ""]
    for name, e in report["export"].items():
        if "int8" in e:  # the INT8 candidate: the guard's verdict (FP32 parity is the pruned row's)
            lines.append(f"- {name}: {e['int8']['decision']}")
            continue
        p = e["parity"]
        lines.append(f"- {name}: {p['max_abs_err']:.2e} at batches {p['batch_sizes']} (`{e['artifact']}`)")
    m = report["machine"]
    lines += [
        "",
        "## Latency",
        "",
        f"{m.get('processor')}, {m.get('cpu_count')} CPUs, torch {m.get('torch')}, onnxruntime "
        f"{m.get('onnxruntime')}; threads {report['bench_config']['threads']}. Speedups are p50 ratios "
        f"against `{report['speedups']['baseline']}`, measured side by side in this run.",
        "",
        "| model | backend | batch | p50 ms | p95 ms | p99 ms | series/s | speedup | parity |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    ratios = report["speedups"]["p50_ratio"]
    for row in report["latency"]:
        key = f"{row['model']}/{row['backend']}"
        ratio = ratios.get(key, {}).get(str(row["batch"]))
        parity = "" if row["parity_max_abs_err"] is None else f"{row['parity_max_abs_err']:.1e}"
        lines.append(
            f"| {row['model']} | {row['backend']} | {row['batch']} | {row['p50_ms']:.2f} | {row['p95_ms']:.2f} | "
            f"{row['p99_ms']:.2f} | {row['series_per_s']:,.0f} | {f'{ratio:.2f}x' if ratio else 'baseline'} | {parity} |"
        )
    pr = report["pruned_finetune"]
    lines += [
        "",
        f"MACs reduction {zs['macs'] / pr['macs']:.2f}x; parameters {zs['params'] / pr['params']:.2f}x fewer. "
        f"The pruned model was fine-tuned toward {_targets(pr['finetune']['config']['distill'])}.",
        "",
        *_blocks_line(pr["prune"].get("blocks_removed", [])),
        "## Plots",
        "",
        f"![forecasts]({PLOTS['forecasts']})",
        "",
        f"![accuracy vs cost]({PLOTS['accuracy_vs_cost']})",
        "",
        f"![kept width per layer]({PLOTS['kept_width']})",
        "",
    ]
    return "\n".join(lines)


def _blocks_line(blocks: list[str]) -> list[str]:
    """Which residual blocks depth pruning removed whole (their width groups plot as kept 0)."""
    if not blocks:
        return []
    names = ", ".join(f"`{b}`" for b in blocks)
    return [f"Depth pruning removed {len(blocks)} whole blocks: {names}.", ""]


def head_label(row: dict) -> str:
    """How a variant's forecast was made: one pass of a head, a grown head, or a roll-out."""
    head = row.get("head")
    if not head:
        return ""
    grown = row.get("finetune", {}).get("grown_head", False)
    if head["passes"] > 1:
        return f"{head['native_horizon']}-step head rolled out x{head['passes']}"
    return f"{head['native_horizon']}-step head" + (" (grown to the horizon, trained)" if grown else "")


def _targets(distill: float) -> str:
    if distill == 0:
        return "the truth alone (no distillation)"
    return f"{1 - distill:g} x truth + {distill:g} x the original model's forecast (distillation)"


def _latency_point(report: dict) -> tuple[str, int]:
    """The backend and batch the accuracy-vs-latency plot uses: onnxruntime at batch 256 when timed."""
    backends = {r["backend"] for r in report["latency"]}
    batches = sorted({r["batch"] for r in report["latency"]})
    backend = "onnxruntime" if "onnxruntime" in backends else sorted(backends)[0]
    batch = LATENCY_BATCH if LATENCY_BATCH in batches else batches[-1]
    return backend, batch


def _p50(report: dict, model: str, backend: str, batch: int) -> float | None:
    for row in report["latency"]:
        if (row["model"], row["backend"], row["batch"]) == (model, backend, batch):
            return row["p50_ms"]
    return None
