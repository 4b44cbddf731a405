"""Graph rewrites that make an exported forecaster faster on onnxruntime's CPU kernels.

A small (pruned) TSFM at large batches is bound by elementwise work, not by its matmuls, and
two patterns of the dynamo exporter cost more there than they should:

- every ``nn.Linear`` on a 3-D or 4-D activation becomes ``MatMul`` then a separate bias
  ``Add`` (onnxruntime fuses the bias only into a 2-D ``Gemm``), a full extra pass over each
  activation. Rewritten as ``Reshape -> Gemm(bias) -> Reshape``: the bias is added inside the
  matmul kernel and the reshapes are views.
- ``x ** 2`` in a model's own input scaler becomes ``Pow(x, 2)``, which onnxruntime computes
  with a general power function; rewritten as ``Mul(x, x)``.

On TTM r2 pruned to a latency budget of 0.12, batch 256, 2 threads, this took onnxruntime from
24 ms to 16 ms. The layout and fusion rewrites of :mod:`prunecast.export.rewrites` (patch-mixer
transposes folded, views for no-op copies, GELU in the form onnxruntime fuses) run with them,
in the order of :data:`REWRITES`. The rewrites use standard ONNX ops only (TensorRT parses them as well), keep
every tensor name the rest of the graph reads, and the export's parity check runs on the
rewritten graph.
"""

from __future__ import annotations

from collections.abc import Collection

import numpy as np
import onnx
from onnx import helper, numpy_helper

from prunecast.export import rewrites as rewrites_module
from prunecast.export.rewrites import drop_unused_initializers, scalar_equals, static_shapes

REWRITES = (
    "gather_arange_to_reshape",
    "transpose_unit_axes_to_reshape",
    "drop_ones_mul",
    "reduce_on_last_axis",
    "fold_patch_transposes",
    "merge_transposes",
    "gelu_for_fusion",
    "matmul_bias_to_gemm",
    "square_to_mul",
    "merge_reshapes",
)
"""Every rewrite, in the order applied: those that need the exporter's static shapes first (ONNX
shape inference alone loses some, e.g. after a ReduceSum with its axes as an input); the
transpose fold before the Gemm rewrite hides its MatMul + Add; the Reshape merge last."""


def optimize_graph(
    model: onnx.ModelProto, rewrites: Collection[str] = REWRITES
) -> tuple[onnx.ModelProto, dict[str, int]]:
    """``model`` with ``rewrites`` (names from :data:`REWRITES`) applied in place, in the order of
    :data:`REWRITES`, and how often each applied (0 for one not asked for)."""
    unknown = set(rewrites) - set(REWRITES)
    if unknown:
        raise ValueError(f"unknown graph rewrites {sorted(unknown)}; known: {list(REWRITES)}")
    counts = dict.fromkeys(REWRITES, 0)
    one_pass, done = {"matmul_bias_to_gemm", "square_to_mul"}, False
    for name in REWRITES:
        if name not in rewrites:
            continue
        if name not in one_pass:
            counts[name] = getattr(rewrites_module, name)(model)
        elif not done:  # both in one pass over the nodes, at the first of them asked for
            counts.update(_bias_and_square(model, rewrites))
            done = True
    return model, counts


def _bias_and_square(model: onnx.ModelProto, rewrites: Collection[str]) -> dict[str, int]:
    """The bias-into-Gemm and square-as-Mul rewrites, in one pass over the nodes."""
    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    shapes = static_shapes(model)
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    graph_outputs = {out.name for out in graph.output}

    nodes: list[onnx.NodeProto] = []
    dropped: set[int] = set()
    counts = {"matmul_bias_to_gemm": 0, "square_to_mul": 0}
    for node in graph.node:
        if id(node) in dropped:
            continue
        if (
            "square_to_mul" in rewrites
            and node.op_type == "Pow"
            and _is_scalar(initializers.get(node.input[1]), 2.0)
        ):
            nodes.append(
                helper.make_node("Mul", [node.input[0], node.input[0]], list(node.output), name=node.name)
            )
            counts["square_to_mul"] += 1
            continue
        bias_add = (
            _bias_add(node, initializers, consumers, graph_outputs)
            if "matmul_bias_to_gemm" in rewrites
            else None
        )
        gemm = _as_gemm(node, bias_add, initializers, shapes.get(node.input[0]), graph) if bias_add else None
        if gemm is not None:
            nodes.extend(gemm)
            dropped.add(id(bias_add))
            counts["matmul_bias_to_gemm"] += 1
            continue
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    drop_unused_initializers(graph)
    return counts


def _is_scalar(init: onnx.TensorProto | None, value: float) -> bool:
    return init is not None and scalar_equals(numpy_helper.to_array(init), value)


def _bias_add(node, initializers, consumers, graph_outputs) -> onnx.NodeProto | None:
    """The bias ``Add`` a ``MatMul(x, W)`` with constant 2-D ``W`` feeds alone, if there is one."""
    if node.op_type != "MatMul" or node.input[1] not in initializers or node.output[0] in graph_outputs:
        return None
    weight = initializers[node.input[1]]
    users = consumers.get(node.output[0], [])
    if len(weight.dims) != 2 or len(users) != 1 or users[0].op_type != "Add":
        return None
    add = users[0]
    others = [name for name in add.input if name != node.output[0]]
    if len(others) != 1 or others[0] not in initializers:
        return None
    if list(initializers[others[0]].dims) != [weight.dims[1]]:
        return None
    return add


def _as_gemm(matmul, add, initializers, x_shape, graph) -> list[onnx.NodeProto] | None:
    """``Reshape -> Gemm -> Reshape`` for ``add(matmul(x, W), b)``, or None unless every dim of ``x``
    but the first (the batch) is static."""
    k, n = initializers[matmul.input[1]].dims
    bias = next(name for name in add.input if name != matmul.output[0])
    if (
        not x_shape
        or len(x_shape) < 2
        or x_shape[-1] != k
        or any(not isinstance(d, int) for d in x_shape[1:-1])
    ):
        return None
    inner = x_shape[1:-1]
    if len(x_shape) == 2:
        return [
            helper.make_node(
                "Gemm", [matmul.input[0], matmul.input[1], bias], list(add.output), name=matmul.name
            )
        ]
    flat, unflat = f"{matmul.name}/rows_shape", f"{matmul.name}/out_shape"
    graph.initializer.extend(
        [
            numpy_helper.from_array(_int64([-1, k]), flat),
            numpy_helper.from_array(_int64([-1, *inner, n]), unflat),
        ]
    )
    rows, out = f"{matmul.name}/rows", f"{matmul.name}/gemm"
    return [
        helper.make_node("Reshape", [matmul.input[0], flat], [rows], name=f"{matmul.name}/flatten"),
        helper.make_node("Gemm", [rows, matmul.input[1], bias], [out], name=matmul.name),
        helper.make_node("Reshape", [out, unflat], list(add.output), name=f"{matmul.name}/unflatten"),
    ]


def _int64(values: list[int]) -> np.ndarray:
    return np.array(values, dtype=np.int64)
