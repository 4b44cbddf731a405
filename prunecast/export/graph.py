"""Checks on an ONNX graph against the artifact contract (onnx only, no torch)."""

from __future__ import annotations

from pathlib import Path

import onnx

from prunecast.export.manifest import FORECAST, ONNX_NAME, QUANTILES, ExportError, Manifest


def check_graph(
    path: Path, context_length: int, horizon: int, against: str = "the model", quantiles: int = 0
) -> None:
    """onnx.checker, then the contract: ``context [batch, L]`` in, ``forecast [batch, H]`` out, FP32,
    and ``quantiles [batch, Q, H]`` as a second output when the model has ``quantiles = Q`` levels.

    ``against`` names where ``L``, ``H`` and ``Q`` come from, for the error message."""
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"{path.name}: onnx.checker rejects the exported graph: {exc}") from None
    graph = onnx.load(str(path), load_external_data=False).graph
    outputs = [(FORECAST, [horizon])] + ([(QUANTILES, [quantiles, horizon])] if quantiles else [])
    for kind, values, expected in (
        ("input", graph.input, [("context", [context_length])]),
        ("output", graph.output, outputs),
    ):
        if [v.name for v in values] != [name for name, _ in expected]:
            raise ExportError(
                f"{path.name}: graph has {kind}s {[v.name for v in values]}, expected {[n for n, _ in expected]}"
            )
        for value, (name, sizes) in zip(values, expected, strict=True):
            tensor = value.type.tensor_type
            dims = tensor.shape.dim
            if tensor.elem_type != onnx.TensorProto.FLOAT or len(dims) != 1 + len(sizes):
                raise ExportError(f"{path.name}: {kind} {name!r} is not a {1 + len(sizes)}-D float32 tensor")
            if not dims[0].dim_param or dims[0].HasField("dim_value"):
                raise ExportError(
                    f"{path.name}: {kind} {name!r} has a fixed batch axis; expected a symbolic one"
                )
            got = [d.dim_value for d in dims[1:]]
            if got != sizes:
                raise ExportError(
                    f"{path.name}: {kind} {name!r} has width {_dims(got)}, {against} says {_dims(sizes)}"
                )


def _dims(sizes: list[int]) -> str:
    return " x ".join(map(str, sizes))


def check_artifact_graph(art_dir: str | Path, manifest: Manifest) -> None:
    """The artifact's ``model.onnx`` must be the model its manifest describes (a hand-edited manifest is not)."""
    check_graph(
        Path(art_dir) / ONNX_NAME,
        manifest.context_length,
        manifest.horizon,
        "manifest.json",
        quantiles=len(manifest.quantile_levels),
    )
