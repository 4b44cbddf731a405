"""Layout and fusion rewrites of an exported graph: fewer copies, and forms onnxruntime fuses.

A profile of pruned TTM r2 at batch 256 on onnxruntime's CPU kernels showed most of the time in
layout work, not in matmuls (``benchmarks/graph_profile.py``). Each function here rewrites one
pattern in place, returns how often it applied, and keeps the outputs (to float rounding), every
graph input and output name, and standard ONNX ops only (TensorRT parses the result too):

- :func:`fold_patch_transposes`: TTM's patch mixers transpose ``[..., P, D] -> [..., D, P]``, run
  Linear / GELU / gated softmax over ``P`` and transpose back. With the weight on the left a
  MatMul contracts ``P`` in place (``(x^T W + b)^T = W^T x + b[:, None]``), so both transposes go.
- :func:`transpose_unit_axes_to_reshape` and :func:`gather_arange_to_reshape`: a Transpose that
  only moves size-1 axes and TTM's patching ``Gather`` with indices ``arange(n)`` move no data,
  but onnxruntime copies for them; as a Reshape they are views.
- :func:`merge_transposes` and :func:`merge_reshapes`: a chain of two becomes one (or none).
- :func:`gelu_for_fusion`: the exporter writes GELU as ``(0.5 * (1 + erf(x / sqrt 2))) * x``, an
  order onnxruntime's Gelu fusion does not match; ``(x * (1 + erf(x / sqrt 2))) * 0.5`` it does.
- :func:`drop_ones_mul`: TTM's scaler multiplies by an all-ones observed mask (``ones_like``).
- :func:`reduce_on_last_axis`: the scaler's sums over time run on ``[batch, L, 1]``, reducing a
  middle axis, which onnxruntime does about 10x slower than the same sum over the last axis of
  the ``[batch, L]`` view.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper, shape_inference

ELEMENTWISE_BINARY = {"Add", "Sub", "Mul", "Div"}
ELEMENTWISE_UNARY = {"Erf", "Relu", "Sigmoid", "Tanh", "Exp", "Neg", "Abs", "Sqrt", "Identity"}


class _Index:
    """Lookups over a graph that a rewrite needs: initializers, producers, consumers, shapes."""

    def __init__(self, model: onnx.ModelProto, shapes: bool = False):
        graph = model.graph
        self.graph = graph
        self.inits = {init.name: init for init in graph.initializer}
        self.outputs = {out.name for out in graph.output}
        self.producer = {name: node for node in graph.node for name in node.output}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.shapes = static_shapes(model) if shapes else {}

    def const(self, name: str) -> np.ndarray | None:
        init = self.inits.get(name)
        return None if init is None else numpy_helper.to_array(init)

    def add_init(self, array: np.ndarray, name: str) -> str:
        if name not in self.inits:
            init = numpy_helper.from_array(array, name)
            self.graph.initializer.append(init)
            self.inits[name] = init
        return name


def static_shapes(model: onnx.ModelProto) -> dict[str, list[int | str | None]]:
    """Each tensor's shape from ONNX shape inference: an int per static dim, the symbol's name
    for a symbolic one, None for an unknown one."""
    inferred = shape_inference.infer_shapes(model).graph
    shapes = {}
    for value in [*inferred.value_info, *inferred.input, *inferred.output]:
        tensor = value.type.tensor_type
        if tensor.HasField("shape"):
            shapes[value.name] = [
                d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor.shape.dim
            ]
    for init in model.graph.initializer:
        shapes[init.name] = list(init.dims)
    return shapes


def _perm(node: onnx.NodeProto) -> list[int] | None:
    for attr in node.attribute:
        if attr.name == "perm":
            return list(attr.ints)
    return None


def _attr(node: onnx.NodeProto, name: str, default):
    for attr in node.attribute:
        if attr.name == name:
            return helper.get_attribute_value(attr)
    return default


def _is_last_swap(node: onnx.NodeProto) -> bool:
    """A Transpose that swaps the last two axes and nothing else."""
    perm = _perm(node) if node.op_type == "Transpose" else None
    return bool(perm) and len(perm) >= 2 and perm == [*range(len(perm) - 2), len(perm) - 1, len(perm) - 2]


def fold_patch_transposes(model: onnx.ModelProto) -> int:
    """Remove each pair of last-two-axes transposes around a region that works on the last axis.

    The region (everything computed from the first transpose's output) may hold ``MatMul`` by a
    constant 2-D weight, elementwise ops with constants, and ``Softmax`` over the last axis; every
    tensor in it must be read only inside it or by a closing transpose, which is what makes
    computing the whole region in the un-transposed layout exact. In that layout a MatMul ``t @ W``
    becomes ``W^T @ x``, a constant is transposed on its last two axes, and a Softmax over the
    last axis becomes one over the second-to-last (as fast on onnxruntime, whole model, batch 256,
    as the Softmax decomposed into ReduceMax / Exp / ReduceSum / Div). Run before the bias-into-Gemm rewrite, which
    would hide the MatMul + Add pattern."""
    index = _Index(model)
    folded = 0
    replaced: dict[int, list[onnx.NodeProto]] = {}
    rename: dict[str, str] = {}
    swapped: set[str] = set()
    for node in model.graph.node:
        if id(node) in replaced or not _is_last_swap(node):
            continue
        region = _transposed_region(node, index)
        if region is None:
            continue
        inner, exits = region
        replaced[id(node)] = []
        for member in inner:
            replaced[id(member)] = _untransposed(member, index)
            swapped.update(member.output)
        for closing in exits:
            if closing.output[0] in index.outputs:
                replaced[id(closing)] = [
                    helper.make_node("Identity", [closing.input[0]], [closing.output[0]], name=closing.name)
                ]
            else:
                replaced[id(closing)] = []
                rename[closing.output[0]] = closing.input[0]
        rename[node.output[0]] = node.input[0]
        folded += 1
    for value in model.graph.value_info:  # the exporter's shapes stay right, with two axes swapped
        dims = value.type.tensor_type.shape.dim
        if value.name in swapped and len(dims) >= 2:
            last, second = onnx.TensorShapeProto.Dimension(), onnx.TensorShapeProto.Dimension()
            last.CopyFrom(dims[-1])
            second.CopyFrom(dims[-2])
            dims[-2].CopyFrom(last)
            dims[-1].CopyFrom(second)
    _apply(model, replaced, rename)
    return folded


def _transposed_region(opening: onnx.NodeProto, index: _Index):
    """``(nodes inside, closing transposes)`` of the region ``opening`` starts, or None when some
    tensor of it escapes, some node in it is not a last-axis op, or nothing closes it."""
    rank = len(_perm(opening))
    tensors = {opening.output[0]}
    inside: dict[int, onnx.NodeProto] = {}
    exits: dict[int, onnx.NodeProto] = {}
    frontier = [opening.output[0]]
    while frontier:
        name = frontier.pop()
        if name in index.outputs:
            return None
        for user in index.consumers.get(name, []):
            if id(user) in inside or id(user) in exits:
                continue
            if _is_last_swap(user) and len(_perm(user)) == rank:
                exits[id(user)] = user
                continue
            if not _last_axis_op(user, rank):
                return None
            inside[id(user)] = user
            for out in user.output:
                tensors.add(out)
                frontier.append(out)
    if not exits:
        return None
    for node in inside.values():
        for i, name in enumerate(node.input):
            if name in tensors:
                continue
            value = index.const(name)
            if value is None or (node.op_type == "MatMul" and (i != 1 or value.ndim != 2)):
                return None
            if node.op_type in ELEMENTWISE_BINARY and value.ndim > rank:
                return None
        if node.op_type == "MatMul" and node.input[0] not in tensors:
            return None
    order = [node for node in index.graph.node if id(node) in inside]
    return order, list(exits.values())


def _last_axis_op(node: onnx.NodeProto, rank: int) -> bool:
    if node.op_type in ELEMENTWISE_BINARY or node.op_type in ELEMENTWISE_UNARY or node.op_type == "MatMul":
        return len(node.output) == 1
    if node.op_type == "Softmax":
        return _attr(node, "axis", -1) in (-1, rank - 1)
    return False


def _untransposed(node: onnx.NodeProto, index: _Index) -> list[onnx.NodeProto]:
    """``node`` as it is computed on the un-transposed tensors of its region."""
    if node.op_type == "MatMul":
        weight = index.const(node.input[1])
        w_t = index.add_init(np.ascontiguousarray(weight.T), f"{node.input[1]}/T")
        return [helper.make_node("MatMul", [w_t, node.input[0]], list(node.output), name=node.name)]
    if node.op_type == "Softmax":
        return [helper.make_node("Softmax", list(node.input), list(node.output), name=node.name, axis=-2)]
    inputs = []
    for name in node.input:
        value = index.const(name)
        if value is not None and value.size > 1:
            swapped = np.ascontiguousarray(np.swapaxes(np.atleast_2d(value), -1, -2))
            name = index.add_init(swapped, f"{name}/swapped")
        inputs.append(name)
    rewritten = onnx.NodeProto()
    rewritten.CopyFrom(node)
    del rewritten.input[:]
    rewritten.input.extend(inputs)
    return [rewritten]


def transpose_unit_axes_to_reshape(model: onnx.ModelProto) -> int:
    """A Transpose that keeps the order of every axis longer than 1 moves no data: a Reshape.

    Needs every output dim static but the first, which must stay first (copied with ``0``)."""
    index = _Index(model, shapes=True)
    replaced = {}
    for node in model.graph.node:
        perm = _perm(node) if node.op_type == "Transpose" else None
        shape = index.shapes.get(node.input[0]) if perm else None
        if not shape or len(shape) != len(perm) or perm[0] != 0:
            continue
        if any(not isinstance(d, int) or d == 0 for d in shape[1:]):  # a literal 0 would mean "copy"
            continue
        moved = [axis for axis in perm if not (isinstance(shape[axis], int) and shape[axis] == 1)]
        if moved != sorted(moved):
            continue
        target = [0, *(shape[axis] for axis in perm[1:])]
        replaced[id(node)] = [_reshape(index, node.input[0], target, node.output[0], node.name)]
    _apply(model, replaced, {})
    return len(replaced)


def gather_arange_to_reshape(model: onnx.ModelProto) -> int:
    """``Gather(x, indices, axis)`` with ``indices == arange(x.shape[axis])`` in any shape (TTM's
    non-overlapping patching, or picking index 0 of a size-1 axis) is a Reshape of ``x``.

    Needs every dim of ``x`` after ``axis`` static; dims before it are copied with ``0``."""
    index = _Index(model, shapes=True)
    replaced = {}
    for node in model.graph.node:
        if node.op_type != "Gather":
            continue
        indices, shape = index.const(node.input[1]), index.shapes.get(node.input[0])
        if indices is None or not shape:
            continue
        axis = _attr(node, "axis", 0) % len(shape)
        size = shape[axis]
        if (
            not isinstance(size, int)
            or indices.size != size
            or any(not isinstance(d, int) for d in shape[axis:])
        ):
            continue
        if not np.array_equal(indices.reshape(-1), np.arange(size)):
            continue
        target = [0] * axis + list(indices.shape) + list(shape[axis + 1 :])
        if target.count(0) != axis:  # a literal 0 dim would be read as "copy"
            continue
        replaced[id(node)] = [_reshape(index, node.input[0], target, node.output[0], node.name)]
    _apply(model, replaced, {})
    return len(replaced)


def merge_transposes(model: onnx.ModelProto) -> int:
    """``Transpose(Transpose(x, p), q)`` is ``Transpose(x, p[q])``, or ``x`` when that is the identity."""
    index = _Index(model)
    replaced, rename = {}, {}
    for node in model.graph.node:
        inner = index.producer.get(node.input[0]) if node.op_type == "Transpose" else None
        if inner is None or inner.op_type != "Transpose" or id(inner) in replaced:
            continue
        p, q = _perm(inner), _perm(node)
        if not p or not q or len(p) != len(q):
            continue
        perm = [p[axis] for axis in q]
        if perm == sorted(perm) and node.output[0] not in index.outputs:
            replaced[id(node)] = []
            rename[node.output[0]] = inner.input[0]
        else:
            replaced[id(node)] = [
                helper.make_node("Transpose", [inner.input[0]], list(node.output), name=node.name, perm=perm)
            ]
    _apply(model, replaced, rename)
    return len(replaced)


def merge_reshapes(model: onnx.ModelProto) -> int:
    """``Reshape(Reshape(x, a), b)`` is ``Reshape(x, b)`` when ``b`` is a constant without ``0``
    (which would copy a dim of the middle tensor); and a Reshape to the static shape its input
    already has (only the first dim symbolic, kept with ``-1`` or ``0``) is dropped."""
    index = _Index(model, shapes=True)
    replaced, rename = {}, {}
    for node in model.graph.node:
        if node.op_type != "Reshape" or _attr(node, "allowzero", 0):
            continue
        target = index.const(node.input[1])
        if target is None:
            continue
        source = node.input[0]
        inner = index.producer.get(source)
        if inner is not None and inner.op_type == "Reshape" and id(inner) not in replaced and 0 not in target:
            source = inner.input[0]
        shape = index.shapes.get(source)
        same = (
            shape is not None
            and len(shape) == len(target)
            and len(shape) > 0
            and target[0] in (-1, 0)
            and all(isinstance(d, int) for d in shape[1:])
            and list(target[1:]) == shape[1:]
        )
        if same and node.output[0] not in index.outputs:
            replaced[id(node)] = []
            rename[node.output[0]] = source
        elif source != node.input[0]:
            replaced[id(node)] = [
                helper.make_node("Reshape", [source, node.input[1]], list(node.output), name=node.name)
            ]
    _apply(model, replaced, rename)
    return len(replaced)


def gelu_for_fusion(model: onnx.ModelProto) -> int:
    """Reorder ``Mul(x, Mul(0.5, Add(Erf(Div(x, sqrt 2)), 1)))`` to
    ``Mul(Mul(x, Add(...)), 0.5)``, the form onnxruntime's GeluFusion turns into one Gelu kernel
    (the ONNX ``Gelu`` op needs opset 20, so the file keeps the standard ops)."""
    index = _Index(model)
    replaced = {}
    for node in model.graph.node:
        half = _gelu_half(node, index)
        if half is None:
            continue
        x = next(name for name in node.input if name != half.output[0])
        add = next(name for name in half.input if index.const(name) is None)
        scale = next(name for name in half.input if name != add)
        product = f"{node.name}/x_times"
        replaced[id(half)] = []
        replaced[id(node)] = [
            helper.make_node("Mul", [x, add], [product], name=f"{node.name}/x"),
            helper.make_node("Mul", [product, scale], list(node.output), name=node.name),
        ]
    _apply(model, replaced, {})
    return len(replaced) // 2


def _gelu_half(node: onnx.NodeProto, index: _Index) -> onnx.NodeProto | None:
    """The ``Mul(0.5, 1 + erf(x / sqrt 2))`` that ``node = Mul(x, that)`` reads, if it is one."""
    if node.op_type != "Mul":
        return None
    for i, name in enumerate(node.input):
        half = index.producer.get(name)
        x = node.input[1 - i]
        if half is None or half.op_type != "Mul" or len(index.consumers.get(name, [])) != 1:
            continue
        consts = [index.const(n) for n in half.input]
        if sum(c is not None for c in consts) != 1 or not scalar_equals(
            next(c for c in consts if c is not None), 0.5
        ):
            continue
        add = index.producer.get(next(n for n, c in zip(half.input, consts, strict=True) if c is None))
        if add is None or add.op_type != "Add" or len(index.consumers.get(add.output[0], [])) != 1:
            continue
        erf = next((index.producer.get(n) for n in add.input if index.const(n) is None), None)
        one = next((index.const(n) for n in add.input if index.const(n) is not None), None)
        if erf is None or erf.op_type != "Erf" or one is None or not scalar_equals(one, 1.0):
            continue
        div = index.producer.get(erf.input[0])
        if div is None or div.op_type != "Div" or div.input[0] != x:
            continue
        root2 = index.const(div.input[1])
        if root2 is not None and scalar_equals(root2, np.sqrt(2.0), rtol=1e-6):
            return half
    return None


def scalar_equals(value: np.ndarray, expected: float, rtol: float = 0.0) -> bool:
    return value.size == 1 and abs(float(value.reshape(())) - expected) <= rtol * abs(expected)


def drop_ones_mul(model: onnx.ModelProto) -> int:
    """``Mul(a, ones)`` with ``ones = Expand(1.0, Shape(t))`` and ``a`` of the same static-or-named
    shape as ``ones`` is ``a`` (TTM's scaler applies an all-ones observed mask this way)."""
    index = _Index(model, shapes=True)
    replaced, rename = {}, {}
    for node in model.graph.node:
        if node.op_type != "Mul" or node.output[0] in index.outputs:
            continue
        for i, name in enumerate(node.input):
            expand = index.producer.get(name)
            if expand is None or expand.op_type != "Expand":
                continue
            value = index.const(expand.input[0])
            other = node.input[1 - i]
            shape, ones_shape = index.shapes.get(other), index.shapes.get(name)
            if value is None or not scalar_equals(value, 1.0) or not shape or shape != ones_shape:
                continue
            if any(d is None for d in shape):
                continue
            replaced[id(node)] = []
            rename[node.output[0]] = other
            break
    _apply(model, replaced, rename)
    return len(replaced)


REDUCE_OPS = {"ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin"}


def reduce_on_last_axis(model: onnx.ModelProto) -> int:
    """``Reduce(x, [a], keepdims=1)`` with only static 1s after axis ``a`` becomes
    ``Reshape -> Reduce(last axis) -> Reshape``: the same sums, a contiguous reduction, two views.

    Only the opset-18 form with constant ``axes`` as an input; dims before ``a`` are copied with 0."""
    index = _Index(model, shapes=True)
    replaced = {}
    for node in model.graph.node:
        if node.op_type not in REDUCE_OPS or len(node.input) != 2 or not _attr(node, "keepdims", 1):
            continue
        axes, shape = index.const(node.input[1]), index.shapes.get(node.input[0])
        if axes is None or axes.size != 1 or not shape or _attr(node, "noop_with_empty_axes", 0):
            continue
        axis = int(axes.reshape(())) % len(shape)
        trailing = shape[axis + 1 :]
        if not trailing or any(d != 1 for d in trailing):
            continue
        name = node.name or node.output[0]
        last = index.add_init(np.array([-1], dtype=np.int64), "reduce/last_axis")
        flat, reduced = f"{name}/flat", f"{name}/reduced"
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        replaced[id(node)] = [
            _reshape(index, node.input[0], [0] * axis + [-1], flat, f"{name}/flatten"),
            helper.make_node(node.op_type, [flat, last], [reduced], name=name, **attrs),
            _reshape(
                index, reduced, [0] * axis + [1] * (1 + len(trailing)), node.output[0], f"{name}/unflatten"
            ),
        ]
    _apply(model, replaced, {})
    return len(replaced)


def _reshape(index: _Index, source: str, target: list[int], output: str, name: str) -> onnx.NodeProto:
    shape = index.add_init(np.array(target, dtype=np.int64), f"{name}/shape")
    return helper.make_node("Reshape", [source, shape], [output], name=name)


def _apply(model: onnx.ModelProto, replaced: dict[int, list[onnx.NodeProto]], rename: dict[str, str]) -> None:
    """Swap nodes for their replacements, point readers of a renamed tensor at its new name (the
    graph's outputs are never renamed: a rewrite keeps a node for them), drop dead nodes."""
    if not replaced and not rename:
        return
    graph = model.graph

    def resolve(name: str) -> str:
        while name in rename:
            name = rename[name]
        return name

    nodes = []
    for node in graph.node:
        for new in replaced.get(id(node), [node]):
            for i, name in enumerate(new.input):
                new.input[i] = resolve(name)
            nodes.append(new)
    del graph.node[:]
    graph.node.extend(_live(nodes, {out.name for out in graph.output}))
    _forget_shapes(model, set(rename))
    drop_unused_initializers(graph)


def drop_unused_initializers(graph: onnx.GraphProto) -> None:
    """Remove the initializers no node and no graph output reads any more."""
    used = {name for node in graph.node for name in node.input} | {out.name for out in graph.output}
    kept = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)


def _live(nodes: list[onnx.NodeProto], outputs: set[str]) -> list[onnx.NodeProto]:
    """``nodes`` less those whose outputs nothing reads."""
    needed = set(outputs)
    live = []
    for node in reversed(nodes):
        if any(out in needed for out in node.output):
            live.append(node)
            needed.update(node.input)
    return live[::-1]


def _forget_shapes(model: onnx.ModelProto, names: set[str]) -> None:
    """Drop the exporter's ``value_info`` for tensors whose shape a rewrite changed or removed."""
    kept = [v for v in model.graph.value_info if v.name not in names]
    del model.graph.value_info[:]
    model.graph.value_info.extend(kept)
