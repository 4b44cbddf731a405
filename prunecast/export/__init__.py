"""Deployable artifacts: ONNX with parity, FP16, TensorRT engines and Triton model repositories.

Importing this package pulls in neither torch nor onnx, so a runtime can read artifacts
(:func:`load_manifest`) without them; the exporters are imported on first use.
"""

from __future__ import annotations

import importlib

from prunecast.export.manifest import (
    ArtifactError,
    EngineEntry,
    Manifest,
    Parity,
    TensorSpec,
    load_manifest,
)

# public name -> module that defines it, imported when first asked for
_LAZY = {}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["ArtifactError", "EngineEntry", "Manifest", "Parity", "TensorSpec", "load_manifest", *_LAZY]
