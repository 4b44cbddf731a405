"""PyTorch eager on the artifact's ``torch/`` model: the reference the exported graphs are compared with."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from prunecast.export.manifest import FORECAST, QUANTILES, TORCH_DIR, ArtifactError, Manifest
from prunecast.runtime.backends.base import DEFAULT_MAX_BATCH, Backend, BackendError, BackendOptions


class TorchBackend(Backend):
    """The module loaded with :func:`prunecast.compress.load_model`, in inference mode.

    torch's CPU thread count is process-wide, so it is set only when ``threads`` is given.
    The forward pass holds no state, so concurrent calls are safe; on CUDA a lock keeps
    them on one stream in order.
    """

    name = "torch"

    def __init__(self, art_dir: str | Path, manifest: Manifest, options: BackendOptions):
        import torch

        from prunecast.compress import load_model

        source = Path(art_dir) / TORCH_DIR
        if not source.is_dir():
            raise ArtifactError(
                f"{art_dir}: no {TORCH_DIR}/ directory; the torch backend needs the saved model"
            )
        module = load_model(str(source))
        if (module.context_length, module.horizon) != (manifest.context_length, manifest.horizon):
            raise ArtifactError(
                f"{source}: model is {module.context_length} -> {module.horizon}, the manifest says "
                f"{manifest.context_length} -> {manifest.horizon}"
            )
        if tuple(module.quantile_levels) != manifest.quantile_levels:
            raise ArtifactError(
                f"{source}: model has quantile levels {list(module.quantile_levels)}, the manifest says "
                f"{list(manifest.quantile_levels)}"
            )
        if options.threads is not None:
            torch.set_num_threads(options.threads)
        wants_cuda = options.device.startswith("cuda") or (
            options.device == "auto" and torch.cuda.is_available()
        )
        if wants_cuda and not torch.cuda.is_available():
            raise BackendError(f"device {options.device} requested, but torch sees no CUDA GPU")
        self._device = torch.device(f"cuda:{options.cuda_index}" if wants_cuda else "cpu")
        self._module = module.to(self._device).eval()
        self._torch = torch
        self._lock = threading.Lock() if wants_cuda else None
        self.device = str(self._device)
        self.max_batch = options.max_batch or DEFAULT_MAX_BATCH

    def describe(self) -> dict:
        # the saved module computes in FP32 whatever precision (FP16, INT8) model.onnx has
        return {**super().describe(), "precision": "fp32"}

    def run_outputs(self, batch: np.ndarray, outputs: tuple[str, ...]) -> dict[str, np.ndarray]:
        torch = self._torch
        with torch.inference_mode():
            if self._lock is None:
                results = self._forward(torch.from_numpy(batch), outputs)
            else:
                with self._lock:
                    results = self._forward(
                        torch.from_numpy(batch).to(self._device, non_blocking=True), outputs
                    )
            return {name: np.ascontiguousarray(out.float().cpu().numpy()) for name, out in results.items()}

    def _forward(self, context, outputs: tuple[str, ...]) -> dict:
        """One pass of the module for ``outputs``: ``forward`` alone, or forecast and quantiles together."""
        if QUANTILES not in outputs:
            return {FORECAST: self._module(context)}
        forecast, quantiles = self._module.forecast_and_quantiles(context)
        return {name: {FORECAST: forecast, QUANTILES: quantiles}[name] for name in outputs}
