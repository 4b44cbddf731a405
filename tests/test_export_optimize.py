"""The ONNX graph rewrites: same outputs, the intended ops, and no rewrite where it would be wrong."""

from __future__ import annotations

import collections

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from prunecast.export.optimize import REWRITES, optimize_graph

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
    assert {k: v for k, v in counts.items() if v} == {"matmul_bias_to_gemm": 1, "square_to_mul": 1}
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
        assert not any(counts.values()), counts
        assert _ops(optimized) == ops_before


# --- the layout and fusion rewrites on a small random-weight TTM (the model they were made for)


@pytest.fixture(scope="module")
def ttm_graph(tmp_path_factory):
    """The small random TTM, and its graph straight from the dynamo exporter (no rewrites)."""
    import torch

    from prunecast.export.onnx_export import export_graph
    from prunecast.models.ttm import TTMAdapter
    from tests.conftest import small_ttm_config

    torch.manual_seed(0)
    module = TTMAdapter().from_config(small_ttm_config(), context_length=64, horizon=16).eval()
    path = tmp_path_factory.mktemp("graph") / "raw.onnx"
    export_graph(module, path, 18)
    return module, onnx.load(path)


def _context_run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"context": x})[0]


def _contexts() -> list[np.ndarray]:
    rng = np.random.default_rng(2)
    return [rng.standard_normal((b, 64)).astype(np.float32) * 3 + 1 for b in (1, 7)]


def _rewritten(raw: onnx.ModelProto, rewrites) -> tuple[onnx.ModelProto, dict[str, int]]:
    model = onnx.ModelProto()
    model.CopyFrom(raw)
    model, counts = optimize_graph(model, rewrites)
    onnx.checker.check_model(model, full_check=True)
    return model, counts


def _assert_same_outputs(raw: onnx.ModelProto, rewritten: onnx.ModelProto) -> None:
    for x in _contexts():
        np.testing.assert_allclose(_context_run(rewritten, x), _context_run(raw, x), rtol=1e-5, atol=1e-5)


def test_patch_mixer_transposes_fold_into_left_matmuls(ttm_graph):
    _, raw = ttm_graph
    model, counts = _rewritten(raw, ["fold_patch_transposes"])
    before, after = _ops(raw), _ops(model)
    assert counts["fold_patch_transposes"] >= 2  # a patch mixer per encoder layer at least
    assert after["Transpose"] == before["Transpose"] - 2 * counts["fold_patch_transposes"]
    assert after["MatMul"] == before["MatMul"]
    left = [n for n in model.graph.node if n.op_type == "MatMul" and n.input[0].endswith("/T")]
    assert len(left) >= 3 * counts["fold_patch_transposes"]  # two MLP linears and the gate's
    softmax_axes = [
        helper.get_attribute_value(n.attribute[0]) for n in model.graph.node if n.op_type == "Softmax"
    ]
    assert softmax_axes.count(-2) == counts["fold_patch_transposes"]
    _assert_same_outputs(raw, model)


@pytest.mark.parametrize(
    ("rewrite", "op", "removed_per_rewrite"),
    [
        ("gather_arange_to_reshape", "Gather", 1),
        ("transpose_unit_axes_to_reshape", "Transpose", 1),
        ("drop_ones_mul", "Mul", 1),
    ],
)
def test_copies_that_move_no_data_become_views(ttm_graph, rewrite, op, removed_per_rewrite):
    _, raw = ttm_graph
    model, counts = _rewritten(raw, [rewrite])
    assert counts[rewrite] >= 1
    assert _ops(model)[op] == _ops(raw)[op] - removed_per_rewrite * counts[rewrite]
    _assert_same_outputs(raw, model)


def _ort_optimized_ops(model: onnx.ModelProto, tmp_path) -> collections.Counter:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(tmp_path / "ort.onnx")
    ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return _ops(onnx.load(tmp_path / "ort.onnx"))


def test_gelu_is_reordered_into_the_form_onnxruntime_fuses(ttm_graph, tmp_path):
    _, raw = ttm_graph
    model, counts = _rewritten(raw, ["gelu_for_fusion"])
    erfs = _ops(raw)["Erf"]
    assert erfs and counts["gelu_for_fusion"] == erfs
    assert _ops(model) == _ops(raw)  # the same standard ops, in another order
    fused = [_ort_optimized_ops(m, tmp_path) for m in (raw, model)]
    # Gelu, or BiasGelu where onnxruntime also takes in the bias Add of the Linear before it
    assert [ops["Gelu"] + ops["BiasGelu"] for ops in fused] == [0, erfs]
    assert fused[0]["Erf"] == erfs and not fused[1]["Erf"]
    _assert_same_outputs(raw, model)


def test_scaler_sums_run_on_the_last_axis_of_a_view(ttm_graph):
    _, raw = ttm_graph
    model, counts = _rewritten(raw, ["reduce_on_last_axis"])
    assert counts["reduce_on_last_axis"] == _ops(raw)["ReduceSum"] >= 2  # the std scaler's sums over time
    assert _ops(model)["ReduceSum"] == _ops(raw)["ReduceSum"]
    assert _ops(model)["Reshape"] == _ops(raw)["Reshape"] + 2 * counts["reduce_on_last_axis"]
    inits = {i.name: numpy_helper.to_array(i).tolist() for i in model.graph.initializer}
    assert all(inits[n.input[1]] == [-1] for n in model.graph.node if n.op_type == "ReduceSum")
    _assert_same_outputs(raw, model)


def test_reshape_chains_left_by_the_gemm_rewrite_merge(ttm_graph):
    _, raw = ttm_graph
    gemm, _ = _rewritten(raw, ["matmul_bias_to_gemm"])
    model, counts = _rewritten(raw, ["matmul_bias_to_gemm", "merge_reshapes"])
    assert counts["merge_reshapes"] >= 1
    assert _ops(model)["Reshape"] < _ops(gemm)["Reshape"]
    _assert_same_outputs(raw, model)


def test_all_rewrites_together_keep_parity_with_pytorch(ttm_graph):
    import torch

    module, raw = ttm_graph
    model, counts = _rewritten(raw, REWRITES)
    assert _ops(raw)["Transpose"] and not _ops(model)["Transpose"]
    assert not _ops(model)["Gather"]
    _assert_same_outputs(raw, model)
    with torch.inference_mode():
        for x in _contexts():
            np.testing.assert_allclose(_context_run(model, x), module(torch.from_numpy(x)).numpy(), atol=1e-5)


def test_unknown_rewrite_is_named():
    with pytest.raises(ValueError, match="fold_everything"):
        optimize_graph(_graph(["batch", K]), ["fold_everything"])


def _transposed_graph(nodes: list, out_shape: list, inits=()) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 4])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, out_shape)],
        list(inits),
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_no_fold_when_a_transposed_tensor_is_read_outside_the_region():
    # t = x^T also feeds a Softmax over its middle axis, which is not a last-axis op: computing
    # t's readers on x would need t after all
    rng = np.random.default_rng(3)
    weight = numpy_helper.from_array(rng.standard_normal((3, 3)).astype(np.float32), "W")
    model = _transposed_graph(
        [
            helper.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 1]),
            helper.make_node("MatMul", ["t", "W"], ["m"]),
            helper.make_node("Transpose", ["m"], ["back"], perm=[0, 2, 1]),
            helper.make_node("Softmax", ["t"], ["s"], axis=1),
            helper.make_node("Transpose", ["s"], ["s_back"], perm=[0, 2, 1]),
            helper.make_node("Add", ["back", "s_back"], ["out"]),
        ],
        ["batch", 3, 4],
        [weight],
    )
    rewritten, counts = _rewritten(model, ["fold_patch_transposes"])
    assert counts["fold_patch_transposes"] == 0 and _ops(rewritten) == _ops(model)


def test_transpose_pairs_cancel_and_chains_merge():
    x = np.random.default_rng(4).standard_normal((2, 3, 4)).astype(np.float32)
    cancel = _transposed_graph(
        [
            helper.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 1]),
            helper.make_node("Transpose", ["t"], ["tt"], perm=[0, 2, 1]),
            helper.make_node("Relu", ["tt"], ["out"]),
        ],
        ["batch", 3, 4],
    )
    chain = _transposed_graph(
        [
            helper.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 1]),
            helper.make_node("Transpose", ["t"], ["out"], perm=[2, 0, 1]),
        ],
        [3, "batch", 4],
    )
    for model, transposes in ((cancel, 0), (chain, 1)):
        want = _run_x(model, x)
        rewritten, counts = _rewritten(model, ["merge_transposes"])
        assert counts["merge_transposes"] == 1 and _ops(rewritten)["Transpose"] == transposes
        np.testing.assert_array_equal(_run_x(rewritten, x), want)


def _run_x(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": x}
    )[0]
