"""Checks on an ONNX graph against the artifact contract (onnx only, no torch)."""

from __future__ import annotations

from pathlib import Path

import onnx

from prunecast.export.manifest import ONNX_NAME, ExportError, Manifest


def check_graph(path: Path, context_length: int, horizon: int, against: str = "the model") -> None:
    """onnx.checker, then the contract: ``context [batch, L]`` in, ``forecast [batch, H]`` out, FP32.

    ``against`` names where ``L`` and ``H`` come from, for the error message."""
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"{path.name}: onnx.checker rejects the exported graph: {exc}") from None
    graph = onnx.load(str(path), load_external_data=False).graph
    for kind, values, name, size in (
        ("input", graph.input, "context", context_length),
        ("output", graph.output, "forecast", horizon),
    ):
        if len(values) != 1 or values[0].name != name:
            raise ExportError(
                f"{path.name}: graph has {kind}s {[v.name for v in values]}, expected [{name!r}]"
            )
        tensor = values[0].type.tensor_type
        dims = tensor.shape.dim
        if tensor.elem_type != onnx.TensorProto.FLOAT or len(dims) != 2:
            raise ExportError(f"{path.name}: {kind} {name!r} is not a 2-D float32 tensor")
        if not dims[0].dim_param or dims[0].HasField("dim_value"):
            raise ExportError(f"{path.name}: {kind} {name!r} has a fixed batch axis; expected a symbolic one")
        if dims[1].dim_value != size:
            raise ExportError(
                f"{path.name}: {kind} {name!r} has width {dims[1].dim_value}, {against} says {size}"
            )


def check_artifact_graph(art_dir: str | Path, manifest: Manifest) -> None:
    """The artifact's ``model.onnx`` must be the model its manifest describes (a hand-edited manifest is not)."""
    check_graph(Path(art_dir) / ONNX_NAME, manifest.context_length, manifest.horizon, "manifest.json")
