"""Deployable artifacts: ONNX with parity, FP16, INT8, TensorRT engines and Triton model repositories.

Importing this package pulls in neither torch nor onnx, so a runtime can read artifacts
(:func:`load_manifest`) without them; the exporters are imported on first use.
"""

from __future__ import annotations

import importlib

from prunecast.export.manifest import (
    ArtifactError,
    EngineEntry,
    ExportError,
    Int8Record,
    Manifest,
    Parity,
    TensorSpec,
    load_manifest,
)

# public name -> module that defines it, imported when first asked for
_LAZY = {
    "ExportConfig": "prunecast.export.onnx_export",
    "export_onnx": "prunecast.export.onnx_export",
    "quantize_artifact": "prunecast.export.onnx_export",
    "convert_to_fp16": "prunecast.export.fp16",
    "Int8Config": "prunecast.export.int8",
    "quantize_with_guard": "prunecast.export.int8",
    "EngineConfig": "prunecast.export.tensorrt",
    "TensorRTUnavailable": "prunecast.export.tensorrt",
    "build_engine": "prunecast.export.tensorrt",
    "check_engine": "prunecast.export.tensorrt",
    "load_engine": "prunecast.export.tensorrt",
    "TritonConfig": "prunecast.export.triton",
    "export_triton": "prunecast.export.triton",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ArtifactError",
    "EngineEntry",
    "ExportError",
    "Int8Record",
    "Manifest",
    "Parity",
    "TensorSpec",
    "load_manifest",
    *_LAZY,
]
