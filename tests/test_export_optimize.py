"""The ONNX graph rewrites: same outputs, the intended ops, and no rewrite where it would be wrong."""

from __future__ import annotations

import collections

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from prunecast.export.optimize import optimize_graph

K, N = 6, 5


def _graph(x_shape: list, bias_shape: tuple[int, ...] = (N,), exponent: float = 2.0) -> onnx.ModelProto:
    """``Pow(MatMul(x, W) + b, exponent)`` with constant ``W``, ``b`` and ``exponent``."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((K, N)).astype(np.float32), "W"),
        numpy_helper.from_array(rng.standard_normal(bias_shape).astype(np.float32), "b"),
        numpy_helper.from_array(np.array(exponent, dtype=np.float32), "p"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["xw"], name="linear"),
        helper.make_node("Add", ["xw", "b"], ["y"], name="bias"),
        helper.make_node("Pow", ["y", "p"], ["out"], name="square"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [*x_shape[:-1], N])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def _ops(model: onnx.ModelProto) -> collections.Counter:
    return collections.Counter(node.op_type for node in model.graph.node)


@pytest.mark.parametrize("x_shape", [["batch", K], ["batch", 3, K], ["batch", 1, 4, K]])
def test_bias_goes_into_gemm_and_square_into_mul_with_the_same_outputs(x_shape):
    model = _graph(x_shape)
    rng = np.random.default_rng(1)
    inputs = [rng.standard_normal([b, *x_shape[1:]]).astype(np.float32) for b in (1, 7)]
    before = [_run(model, x) for x in inputs]
    optimized, counts = optimize_graph(model)
    onnx.checker.check_model(optimized, full_check=True)
    assert counts == {"matmul_bias_to_gemm": 1, "square_to_mul": 1}
    ops = _ops(optimized)
    assert ops["Gemm"] == 1 and ops["Mul"] == 1
    assert not ops["MatMul"] and not ops["Add"] and not ops["Pow"]
    assert ops["Reshape"] == (0 if len(x_shape) == 2 else 2)
    assert "p" not in {init.name for init in optimized.graph.initializer}  # the unused exponent is gone
    for x, want in zip(inputs, before, strict=True):
        np.testing.assert_allclose(_run(optimized, x), want, rtol=1e-5, atol=1e-5)


def test_nothing_is_rewritten_where_it_would_change_the_meaning():
    # a bias that broadcasts over more than the last axis, a second symbolic axis, another exponent
    for model in (
        _graph(["batch", 3, K], bias_shape=(3, N), exponent=3.0),
        _graph(["batch", "patches", K], exponent=0.5),
    ):
        ops_before = _ops(model)
        optimized, counts = optimize_graph(model)
        assert counts == {"matmul_bias_to_gemm": 0, "square_to_mul": 0}
        assert _ops(optimized) == ops_before
