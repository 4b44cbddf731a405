"""Runtime backends, each imported only when chosen (so choosing onnxruntime never imports torch)."""

from __future__ import annotations

from pathlib import Path

from prunecast.export.manifest import Manifest
from prunecast.runtime.backends.base import Backend, BackendError, BackendOptions

BACKENDS = ("auto", "onnxruntime", "tensorrt", "torch")


def open_backend(name: str, art_dir: str | Path, manifest: Manifest, options: BackendOptions) -> Backend:
    """Create backend ``name`` for an artifact.

    ``auto`` takes TensorRT when the artifact has an engine, the device is not the CPU and
    TensorRT loads here; otherwise onnxruntime. PyTorch is never chosen automatically: it
    is the reference, not the fast path.
    """
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    if name == "auto":
        if manifest.engines and options.device != "cpu":
            try:
                return _create("tensorrt", art_dir, manifest, options)
            except BackendError:
                pass  # no TensorRT, no GPU, or no engine for this one: onnxruntime serves instead
        name = "onnxruntime"
    return _create(name, art_dir, manifest, options)


def _create(name: str, art_dir, manifest: Manifest, options: BackendOptions) -> Backend:
    if name == "onnxruntime":
        from prunecast.runtime.backends.ort import OnnxRuntimeBackend

        return OnnxRuntimeBackend(art_dir, manifest, options)
    if name == "tensorrt":
        from prunecast.runtime.backends.trt import TensorRTBackend

        return TensorRTBackend(art_dir, manifest, options)
    from prunecast.runtime.backends.pytorch import TorchBackend

    return TorchBackend(art_dir, manifest, options)


__all__ = ["BACKENDS", "Backend", "BackendError", "BackendOptions", "open_backend"]
