"""TimesFM 2.5 adapter on a small random definition (no real weights offline)."""

import json

import numpy as np
import pytest
import torch

timesfm = pytest.importorskip("timesfm")

from prunecast.models import ModelError, adapter_for, load_pretrained  # noqa: E402
from prunecast.models.timesfm import TimesFMAdapter, keep_ffn, keep_heads  # noqa: E402


def _block(i: int, h: int, o: int, bias: bool) -> dict:
    return {"input_dims": i, "hidden_dims": h, "output_dims": o, "use_bias": bias, "activation": "swish"}


def small_timesfm_config(layers: int = 2, heads: int = 4, dims: int = 32, hidden: int = 64) -> dict:
    """The 2.5 layout (fused QKV, RoPE, RMS norms, 10 output channels) with patch 8 -> 16."""
    return {
        "model_type": "timesfm_2p5",
        "definition": {
            "input_patch_len": 8,
            "output_patch_len": 16,
            "output_quantile_len": 32,
            "quantiles": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9],
            "decode_index": 5,
            "tokenizer": _block(16, dims, dims, True),
            "stacked_transformers": {
                "num_layers": layers,
                "transformer": {
                    "model_dims": dims,
                    "hidden_dims": hidden,
                    "num_heads": heads,
                    "attention_norm": "rms",
                    "feedforward_norm": "rms",
                    "qk_norm": "rms",
                    "use_bias": False,
                    "use_rotary_position_embeddings": True,
                    "ff_activation": "swish",
                    "fuse_qkv": True,
                },
            },
            "output_projection_point": _block(dims, dims, 16 * 10, False),
            "output_projection_quantiles": _block(dims, dims, 32 * 10, False),
        },
        "layers": [{"num_heads": heads, "hidden_dims": hidden}] * layers,
    }


def make(context: int = 64, horizon: int = 40, std: float = 0.3):
    """A random model whose every weight matters (the package zero-initialises its RMSNorm scales)."""
    torch.manual_seed(0)
    module = TimesFMAdapter().from_config(small_timesfm_config(), context_length=context, horizon=horizon)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, std)
    return module


def test_same_forecast_as_the_package():
    """Padding to whole patches, running statistics, flip invariance and the autoregressive
    second and third output patches all match the package's own ``forecast``."""
    module = make(context=60, horizon=40)
    x = torch.randn(3, 60) + 5
    with torch.no_grad():
        point, quantiles = module(x), module.quantiles(x)
    assert point.shape == (3, 40) and quantiles.shape == (3, 9, 40)
    with torch.device("meta"):
        wrapper = timesfm.TimesFM_2p5_200M_torch(torch_compile=False)
    wrapper.model = module.model
    wrapper.compile(timesfm.ForecastConfig(max_context=64, max_horizon=40))
    want_point, want_full = wrapper.forecast(horizon=40, inputs=[row.numpy() for row in x])
    scale = np.abs(want_point).max()
    assert np.abs(point.numpy() - want_point).max() < 1e-5 * scale
    assert np.abs(quantiles.numpy() - want_full[..., 1:].transpose(0, 2, 1)).max() < 1e-5 * scale


def test_head_and_ffn_removal_equals_zeroing_them():
    module = make()
    layers = module.model.stacked_xf
    hd, heads = layers[0].attn.head_dim, layers[0].attn.num_heads
    x = torch.randn(4, 64)
    with torch.no_grad():
        for layer, drop in zip(layers, ([1], [0, 3]), strict=True):
            for h in drop:
                for part in range(3):
                    start = part * heads * hd + h * hd
                    layer.attn.qkv_proj.weight[start : start + hd] = 0
                layer.attn.out.weight[:, h * hd : (h + 1) * hd] = 0
            layer.ff0.weight[5:20] = 0
        before = module(x)
        for layer, drop in zip(layers, ([1], [0, 3]), strict=True):
            keep_heads(layer, [h for h in range(heads) if h not in drop])
            keep_ffn(layer, [c for c in range(64) if not 5 <= c < 20])
        after = module(x)
        for batch in (1, 9):
            assert module(torch.randn(batch, 64)).shape == (batch, 40)
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)
    assert [(a.attn.num_heads, a.attn.head_dim) for a in layers] == [(3, hd), (2, hd)]
    assert [layer["num_heads"] for layer in module.config_dict()["layers"]] == [3, 2]
    assert layers[1].config.num_heads == 2 and layers[1].config.hidden_dims == 49


def test_save_pretrained_and_load_by_path(tmp_path):
    module = make()
    keep_heads(module.model.stacked_xf[0], [0, 2])
    module.save_pretrained(tmp_path / "tfm")
    assert isinstance(adapter_for(str(tmp_path / "tfm")), TimesFMAdapter)
    loaded = load_pretrained(str(tmp_path / "tfm"), horizon=40, context_length=64)
    x = torch.randn(3, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), module(x))


def test_package_checkpoint_directory_loads_by_family(tmp_path):
    """A directory as the package writes it (weights only; the architecture is implicit) loads with
    ``family='timesfm'``: the architecture is read from the tensor shapes."""
    module = make()
    with torch.device("meta"):
        wrapper = timesfm.TimesFM_2p5_200M_torch(torch_compile=False)
    wrapper.model = module.model
    wrapper.save_pretrained(tmp_path / "pkg")
    loaded = load_pretrained(str(tmp_path / "pkg"), horizon=40, context_length=64, family="timesfm")
    x = torch.randn(2, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), module(x))


def test_config_roundtrip_rebuilds_pruned_shapes():
    module = make()
    keep_ffn(module.model.stacked_xf[1], [0, 1, 2])
    rebuilt = TimesFMAdapter().from_config(json.loads(json.dumps(module.config_dict())), 64, 40)
    assert {k: v.shape for k, v in module.state_dict().items()} == {
        k: v.shape for k, v in rebuilt.state_dict().items()
    }


def test_bad_inputs_are_named(tmp_path):
    with pytest.raises(ModelError, match="exceeds TimesFM's context limit"):
        TimesFMAdapter().from_config(small_timesfm_config(), context_length=20000, horizon=16)
    (tmp_path / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ModelError, match="cannot be read as safetensors"):
        load_pretrained(str(tmp_path), family="timesfm")


def test_spec_groups_are_exact_by_zeroing_and_removable():
    """Every group of the spec (heads as three blocks of the fused QKV, FFN, residual blocks):
    zeroing units equals removing them, and the layers' cached sizes and config follow."""
    from prunecast.compress.groups import remove_units, tp_group

    module = make()
    spec = module.pruning_spec()
    kinds = [g.kind for g in spec.groups]
    assert kinds.count("heads") == 2 and kinds.count("mlp_hidden") == 5
    drop = {g.name: ([0, 2] if g.kind == "heads" else range(4)) for g in spec.groups}
    x = torch.randn(4, 64)
    with torch.no_grad():
        full = module(x)
        for group in spec.groups:
            for dep, idxs in tp_group(module, group, drop[group.name]):
                layer = dep.target.module
                if dep.handler.__name__.endswith("out_channels"):
                    layer.weight[idxs] = 0
                    if layer.bias is not None:
                        layer.bias[idxs] = 0
                else:
                    layer.weight[:, idxs] = 0
        before = module(x)
        assert (before - full).abs().max() > 1e-3  # the zeroed units mattered
        for group in spec.groups:
            remove_units(module, group, drop[group.name])
        torch.testing.assert_close(module(x), before, atol=1e-5, rtol=1e-5)
        for batch in (1, 9):
            assert module(torch.randn(batch, 64)).shape == (batch, 40)
    for layer in module.model.stacked_xf:
        attn = layer.attn
        assert attn.num_heads == layer.config.num_heads == 2 and attn.in_features == 2 * attn.head_dim
        assert attn.qkv_proj.out_features == 3 * 2 * attn.head_dim == 3 * attn.out.in_features
        assert layer.config.hidden_dims == layer.ff0.out_features == 60
    config = module.config_dict()
    assert config["definition"]["tokenizer"]["hidden_dims"] == 28
    assert config["layers"] == [{"num_heads": 2, "hidden_dims": 60}] * 2


def test_head_removal_keeps_the_right_query_key_value_blocks():
    """Removing head 1 through the spec equals the adapter's own per-head selection (keep_heads),
    which picks the head's block in each of the query, key and value chunks."""
    from prunecast.compress.groups import remove_units

    by_spec, by_hand = make(), make()
    group = next(g for g in by_spec.pruning_spec().groups if g.name == "model.stacked_xf.0.heads")
    remove_units(by_spec, group, [1])
    keep_heads(by_hand.model.stacked_xf[0], [0, 2, 3])
    for name, tensor in by_hand.state_dict().items():
        torch.testing.assert_close(by_spec.state_dict()[name], tensor, rtol=0, atol=0)


def test_pruned_model_saves_loads_and_exports_with_parity(tmp_path):
    """prune -> forward at several batch sizes -> save/load -> ONNX export (dynamic batch) -> parity."""
    from prunecast.compress import load_model, save_model
    from prunecast.compress.groups import remove_units
    from prunecast.export.onnx_export import ExportConfig, export_onnx

    module = make(context=64, horizon=16, std=0.1)  # tamer activations: float32 rounding stays ~1e-6
    for group in module.pruning_spec().groups:  # heads from the spec: 4 -> 2, FFN and blocks halved
        remove_units(module, group, range(0, group.units, 2))
    with torch.no_grad():
        for batch in (1, 5, 17):
            assert module(torch.randn(batch, 64)).shape == (batch, 16)
    save_model(module, tmp_path / "pruned")
    loaded = load_model(str(tmp_path / "pruned"))
    x = torch.randn(3, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), module(x))
    manifest = export_onnx(loaded, tmp_path / "art", ExportConfig(batch_sizes=(1, 7, 33)))
    assert manifest.parity.max_abs_err < 1e-4 * max(1.0, float(loaded(x).abs().max()))
