"""FP16 conversion of an exported ONNX graph that keeps the numerically fragile ends in FP32.

Only the network *between* its first and last weight ops (MatMul, Gemm, Conv) computes in
FP16: that is where the time goes and where FP16 is safe. What comes before the first weight
op (a TSFM's own input scaler: sums of squares over the whole context overflow FP16 on
unscaled data) and after the last one (de-normalising the forecast) stays FP32, as do the
graph's inputs and outputs. Cast nodes are placed at the borders of that region.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from prunecast.export.manifest import ExportError

WEIGHT_OPS = frozenset({"MatMul", "Gemm", "Conv", "ConvTranspose"})
FP32_ONLY_OPS = frozenset({"IsInf"})
"""Ops onnxruntime's CPU provider has no FP16 kernel for: they stay FP32 (behind a Cast) in the region."""
FP16_MAX = float(np.finfo(np.float16).max)


def fp16_region(graph: onnx.GraphProto) -> list[bool]:
    """Per node: whether it has a weight op among its ancestors-or-self *and* its descendants-or-self."""
    nodes = list(graph.node)
    producer = {out: i for i, node in enumerate(nodes) for out in node.output}
    consumers: dict[str, list[int]] = {}
    for i, node in enumerate(nodes):
        for name in node.input:
            consumers.setdefault(name, []).append(i)
    after = [False] * len(nodes)
    for i, node in enumerate(nodes):  # nodes are topologically sorted (the checker enforces it)
        after[i] = node.op_type in WEIGHT_OPS or any(after[producer[t]] for t in node.input if t in producer)
    before = [False] * len(nodes)
    for i in reversed(range(len(nodes))):
        node = nodes[i]
        before[i] = node.op_type in WEIGHT_OPS or any(
            before[j] for t in node.output for j in consumers.get(t, [])
        )
    return [
        a and b and node.op_type not in FP32_ONLY_OPS for node, a, b in zip(nodes, after, before, strict=True)
    ]


def convert_to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` computing in FP16 between its first and last weight op (see module doc)."""
    if model.functions or any(a.type in (a.GRAPH, a.GRAPHS) for n in model.graph.node for a in n.attribute):
        raise ExportError("FP16 conversion handles flat graphs only; this graph has functions or subgraphs")
    typed = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    elem_type = {
        v.name: v.type.tensor_type.elem_type
        for v in (*typed.graph.input, *typed.graph.value_info, *typed.graph.output)
    }
    elem_type.update({t.name: t.data_type for t in typed.graph.initializer})
    is_float = {name for name, t in elem_type.items() if t == TensorProto.FLOAT}

    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    nodes = list(graph.node)
    in_region = fp16_region(graph)
    initializers = {t.name: t for t in graph.initializer}
    region_only = _used_only_by(nodes, in_region, set(initializers))

    # graph outputs computed in the region are renamed; a final Cast restores the FP32 name
    outputs = {o.name for o in graph.output}
    renamed = {}
    for node, fp16 in zip(nodes, in_region, strict=True):
        for i, name in enumerate(node.output):
            if fp16 and name in outputs and name in is_float:
                renamed[name] = node.output[i] = f"{name}__fp16"
    for node in nodes:
        for i, name in enumerate(node.input):
            node.input[i] = renamed.get(name, name)

    half = set(renamed.values())  # tensors that hold FP16 values
    casts: dict[tuple[str, int], str] = {}
    new_nodes: list[onnx.NodeProto] = []

    def cast(name: str, to: int) -> str:
        key = (name, to)
        if key not in casts:
            casts[key] = f"{name}__to_{'fp16' if to == TensorProto.FLOAT16 else 'fp32'}"
            new_nodes.append(helper.make_node("Cast", [name], [casts[key]], to=to, name=f"cast_{casts[key]}"))
        return casts[key]

    copies: dict[str, str] = {}

    def halved_copy(name: str) -> str:
        """An FP16 copy of an initializer also used outside the region, clipped to FP16's range
        (a Cast would turn an attention mask's float32-min into -inf, and 0 * -inf into NaN)."""
        if name not in copies:
            copy = onnx.TensorProto()
            copy.CopyFrom(initializers[name])
            copy.name = copies[name] = f"{name}__fp16"
            _halve_initializer(copy)
            graph.initializer.append(copy)
            half.add(copy.name)
        return copies[name]

    for node, fp16 in zip(nodes, in_region, strict=True):
        for i, name in enumerate(node.input):
            if not name:
                continue
            if fp16 and name in is_float and name not in half:
                if name in region_only:
                    _halve_initializer(initializers[name])
                    half.add(name)
                elif name in initializers:
                    node.input[i] = halved_copy(name)
                else:
                    node.input[i] = cast(name, TensorProto.FLOAT16)
            elif not fp16 and name in half:
                node.input[i] = cast(name, TensorProto.FLOAT)
        if fp16:
            _retype_attributes(node)
            half.update(name for name in node.output if name in is_float)
        new_nodes.append(node)
    for original, fp16_name in renamed.items():
        new_nodes.append(helper.make_node("Cast", [fp16_name], [original], to=TensorProto.FLOAT))

    del graph.node[:]
    graph.node.extend(new_nodes)
    del graph.value_info[:]  # stale types; re-inferred below
    try:
        onnx.checker.check_model(out)
        onnx.shape_inference.infer_shapes(out, strict_mode=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ExportError(f"FP16 conversion produced an invalid graph: {exc}") from None
    return out


def _used_only_by(nodes: list[onnx.NodeProto], in_region: list[bool], names: set[str]) -> set[str]:
    """Those of ``names`` that only region nodes consume (safe to store as FP16)."""
    outside = {t for node, fp16 in zip(nodes, in_region, strict=True) if not fp16 for t in node.input}
    inside = {t for node, fp16 in zip(nodes, in_region, strict=True) if fp16 for t in node.input}
    return (names & inside) - outside


def _halve_initializer(tensor: onnx.TensorProto) -> None:
    values = np.clip(numpy_helper.to_array(tensor), -FP16_MAX, FP16_MAX).astype(np.float16)
    tensor.CopyFrom(numpy_helper.from_array(values, tensor.name))


def _retype_attributes(node: onnx.NodeProto) -> None:
    """Ops whose output type is an attribute: make them produce FP16 inside the region."""
    for attr in node.attribute:
        if node.op_type == "Cast" and attr.name == "to" and attr.i == TensorProto.FLOAT:
            attr.i = TensorProto.FLOAT16
        elif (
            node.op_type == "ConstantOfShape"
            and attr.name == "value"
            and attr.t.data_type == TensorProto.FLOAT
        ):
            attr.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(attr.t).astype(np.float16)))
