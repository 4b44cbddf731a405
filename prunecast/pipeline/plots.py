"""The pictures in a run's report (PNG, matplotlib without a display).

Each function takes plain data (arrays, dicts of figures) so the report can be redrawn from
``report.json`` alone.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

COLORS = {
    "truth": "black",
    "zero_shot": "tab:green",
    "full_finetune": "tab:blue",
    "pruned_finetune": "tab:red",
}
CONTAINERS = {"model", "backbone", "mlp_mixer_encoder", "mixers", "mixer_layers", "decoder_block"}
"""Path components that only nest modules; dropped from layer labels so the plot stays readable."""


def plot_forecasts(
    contexts: np.ndarray,
    truths: np.ndarray,
    forecasts: dict[str, np.ndarray],
    path: Path,
    context_shown: int = 192,
) -> Path:
    """One panel per series: the end of its context, the truth, and each variant's forecast."""
    n = len(contexts)
    fig, axes = plt.subplots(n, 1, figsize=(10, 2.6 * n), squeeze=False)
    for i, ax in enumerate(axes[:, 0]):
        ctx = contexts[i, -context_shown:]
        t_ctx = np.arange(-len(ctx), 0)
        t_fut = np.arange(truths.shape[1])
        ax.plot(t_ctx, ctx, color="gray", lw=1, alpha=0.7, label="context")
        ax.plot(t_fut, truths[i], color=COLORS["truth"], lw=1.4, label="truth")
        for name, pred in forecasts.items():
            ax.plot(t_fut, pred[i], lw=1.2, color=COLORS.get(name), label=name.replace("_", " "))
        ax.axvline(0, color="gray", lw=0.6, ls=":")
        ax.set_ylabel("scaled value")
        if i == 0:
            ax.legend(loc="upper left", ncol=5, fontsize=8)
    axes[-1, 0].set_xlabel("step (0 = first forecast step)")
    fig.suptitle("Test forecasts")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_accuracy_vs_cost(
    variants: dict[str, dict], path: Path, latency_label: str = "p50 latency (ms)"
) -> Path:
    """Test MSE against MACs, and against p50 latency, one marker per variant.

    ``variants`` maps a name to ``{"mse", "macs", "latency_ms"}`` (latency may be None).
    """
    fig, (ax_macs, ax_lat) = plt.subplots(1, 2, figsize=(11, 4))
    for name, v in variants.items():
        color = COLORS.get(name)
        label = name.replace("_", " ")
        ax_macs.scatter(v["macs"] / 1e6, v["mse"], s=60, color=color, label=label)
        if v.get("latency_ms") is not None:
            ax_lat.scatter(v["latency_ms"], v["mse"], s=60, color=color, label=label)
    ax_macs.set_xlabel("MMACs per series")
    ax_lat.set_xlabel(latency_label)
    for ax in (ax_macs, ax_lat):
        ax.set_ylabel("test MSE")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    ax_macs.set_title("Accuracy vs compute")
    ax_lat.set_title("Accuracy vs latency")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_kept_widths(widths: list[tuple[str, int, int]], path: Path) -> Path:
    """Kept fraction per prunable layer: ``(layer name, original width, kept width)`` rows."""
    names = [short_layer_name(w[0]) for w in widths]
    frac = [w[2] / w[1] if w[1] else 1.0 for w in widths]
    fig, ax = plt.subplots(figsize=(10, max(3, 0.22 * len(widths) + 1)))
    y = np.arange(len(widths))
    ax.barh(y, frac, color="tab:red", alpha=0.8)
    ax.set_yticks(y, names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("kept fraction")
    for yi, (_, orig, kept) in zip(y, widths, strict=True):
        ax.text(1.0, yi, f" {kept}/{orig}", va="center", fontsize=7)
    ax.set_title("Where the remaining width is")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def short_layer_name(path: str) -> str:
    """``model.backbone.encoder.mlp_mixer_encoder.mixers.0.mixer_layers.1.patch_mixer.mlp.hidden``
    becomes ``0.1.patch_mixer.mlp.hidden``: the indices and the names that say what the layer is."""
    parts = [p for p in path.split(".") if p not in CONTAINERS]
    return ".".join(parts) or path
