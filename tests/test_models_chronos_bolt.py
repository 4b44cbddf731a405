"""Chronos-Bolt adapter on a small random config (no real weights offline)."""

import json

import numpy as np
import pytest
import torch

pytest.importorskip("chronos")

from prunecast.models import ModelError, adapter_for, load_pretrained  # noqa: E402
from prunecast.models.chronos_bolt import ChronosBoltAdapter, keep_ffn, keep_heads  # noqa: E402
from tests.conftest import write_csv  # noqa: E402

QUANTILES = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]


def small_bolt_config(layers: int = 2, heads: int = 4, d_kv: int = 8) -> dict:
    """The chronos-bolt layout (T5, ReLU FFN, REG token, 9 quantiles) at toy size."""
    return {
        "model_type": "t5",
        "architectures": ["ChronosBoltModelForForecasting"],
        "d_model": 32,
        "d_ff": 64,
        "d_kv": d_kv,
        "num_heads": heads,
        "num_layers": layers,
        "num_decoder_layers": layers,
        "relative_attention_num_buckets": 32,
        "relative_attention_max_distance": 128,
        "dropout_rate": 0.0,
        "feed_forward_proj": "relu",
        "dense_act_fn": "relu",
        "is_gated_act": False,
        "decoder_start_token_id": 0,
        "pad_token_id": 0,
        "chronos_config": {
            "context_length": 256,
            "prediction_length": 16,
            "input_patch_size": 8,
            "input_patch_stride": 8,
            "quantiles": QUANTILES,
            "use_reg_token": True,
        },
    }


@pytest.fixture
def bolt():
    torch.manual_seed(0)
    return ChronosBoltAdapter().from_config(small_bolt_config(), context_length=64, horizon=24)


def _attentions(model):
    for stack in (model.encoder, model.decoder):
        for block in stack.block:
            yield block.layer[0].SelfAttention
            if stack.is_decoder:
                yield block.layer[1].EncDecAttention


def test_forward_is_the_median_of_the_quantiles_and_takes_nan(bolt):
    x = torch.randn(3, 64)
    x[0, 5] = float("nan")
    x[1, :20] = float("nan")
    with torch.no_grad():
        point, quantiles = bolt(x), bolt.quantiles(x)
    assert point.shape == (3, 24) and quantiles.shape == (3, 9, 24)
    assert torch.isfinite(point).all()
    torch.testing.assert_close(point, quantiles[:, QUANTILES.index(0.5)])


def test_long_horizon_appends_the_median_block(bolt):
    x = torch.randn(2, 64)
    with torch.no_grad():
        full = bolt.quantiles(x)
        first = bolt.model(context=x).quantile_preds
        second = bolt.model(context=torch.cat([x, first[:, 4]], dim=-1)).quantile_preds
    torch.testing.assert_close(full[..., :16], first)
    torch.testing.assert_close(full[..., 16:], second[..., :8])


def test_head_and_ffn_removal_equals_zeroing_them(bolt):
    """Removing heads (with their bias rows; layer 0 too, cross-attention too) and FFN channels
    gives the output the model had with those units' weights zeroed."""
    drop = [[1], [0, 2], [3], [1], [0], [2, 3]]
    d = bolt.model.config.d_kv
    x = torch.randn(5, 64)
    x[0, 7] = float("nan")
    with torch.no_grad():
        for attention, heads in zip(_attentions(bolt.model), drop, strict=True):
            for h in heads:
                for name in "qkv":
                    getattr(attention, name).weight[h * d : (h + 1) * d] = 0
                attention.o.weight[:, h * d : (h + 1) * d] = 0
        for stack in (bolt.model.encoder, bolt.model.decoder):
            for block in stack.block:
                block.layer[-1].DenseReluDense.wi.weight[:10] = 0
        before = bolt.quantiles(x)
        for attention, heads in zip(_attentions(bolt.model), drop, strict=True):
            keep_heads(attention, [h for h in range(4) if h not in heads])
        for stack in (bolt.model.encoder, bolt.model.decoder):
            for block in stack.block:
                keep_ffn(block.layer[-1].DenseReluDense, list(range(10, 64)))
        after = bolt.quantiles(x)
        for batch in (1, 7):
            assert bolt(torch.randn(batch, 64)).shape == (batch, 24)
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)
    record = bolt.config_dict()["prunecast_structure"]
    assert [layer["heads"] for layer in record["encoder"]] == [3, 2]
    assert [(layer["heads"], layer["cross_heads"]) for layer in record["decoder"]] == [(3, 3), (3, 2)]
    assert all(layer["d_ff"] == 54 for layer in record["encoder"] + record["decoder"])
    first = bolt.model.encoder.block[0].layer[0].SelfAttention
    assert first.n_heads == 3 and first.inner_dim == 3 * d
    assert first.relative_attention_bias.weight.shape == (32, 3)


def test_save_pretrained_and_load_by_path(tmp_path, bolt):
    bolt.save_pretrained(tmp_path / "bolt")
    assert isinstance(adapter_for(str(tmp_path / "bolt")), ChronosBoltAdapter)
    loaded = load_pretrained(str(tmp_path / "bolt"), horizon=24, context_length=64)
    x = torch.randn(3, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), bolt.eval()(x))


def test_stock_directory_loads_with_the_stock_numbers(tmp_path):
    """A directory as chronos writes it loads through the stock loader, and the per-layer bias
    tables and hooks change nothing: the same quantiles as chronos' own model, NaN included."""
    from chronos.chronos_bolt import ChronosBoltModelForForecasting
    from transformers import T5Config

    torch.manual_seed(1)
    stock = ChronosBoltModelForForecasting(T5Config.from_dict(small_bolt_config())).eval()
    stock.save_pretrained(tmp_path / "stock")
    loaded = load_pretrained(str(tmp_path / "stock"), context_length=64)
    assert loaded.horizon == 16 and loaded.family == "chronos_bolt"
    x = torch.randn(4, 64)
    x[2, 10:14] = float("nan")
    with torch.no_grad():
        torch.testing.assert_close(loaded.quantiles(x), stock(context=x).quantile_preds)


def test_pruned_rebuild_from_config_has_the_pruned_shapes(bolt):
    keep_heads(bolt.model.decoder.block[1].layer[1].EncDecAttention, [0])
    keep_ffn(bolt.model.encoder.block[0].layer[-1].DenseReluDense, [1, 2, 3])
    rebuilt = ChronosBoltAdapter().from_config(json.loads(json.dumps(bolt.config_dict())), 64, 24)
    shapes = {k: v.shape for k, v in bolt.state_dict().items()}
    assert shapes == {k: v.shape for k, v in rebuilt.state_dict().items()}


def test_mismatched_weights_are_named(tmp_path, bolt):
    bolt.save_pretrained(tmp_path / "bolt")
    config = json.loads((tmp_path / "bolt" / "config.json").read_text())
    config["prunecast_structure"]["encoder"][0]["heads"] = 1
    (tmp_path / "bolt" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match="do not match the pruned structure"):
        load_pretrained(str(tmp_path / "bolt"), context_length=64)


def test_context_longer_than_the_checkpoint_reads_is_an_error():
    with pytest.raises(ModelError, match="context length 512 is outside 1..256"):
        ChronosBoltAdapter().from_config(small_bolt_config(), context_length=512, horizon=16)


def _zero_units(module, group, units):
    """Zero the weights of ``units`` of ``group`` in every slice (Embedding: its columns)."""
    from prunecast.compress.groups import tp_group

    for dep, idxs in tp_group(module, group, units):
        layer = dep.target.module
        if isinstance(layer, torch.nn.Embedding):
            layer.weight[:, idxs] = 0
        elif dep.handler.__name__.endswith("out_channels"):
            layer.weight[idxs] = 0
            if layer.bias is not None:
                layer.bias[idxs] = 0
        else:
            layer.weight[:, idxs] = 0


def test_spec_groups_are_exact_by_zeroing_and_removable(bolt):
    """Every group of the spec (heads with their bias columns, FFN, patch embeddings): zeroing
    units equals removing them, and each layer's cached sizes and the config follow the tensors."""
    from prunecast.compress.groups import remove_units

    spec = bolt.pruning_spec()
    kinds = [g.kind for g in spec.groups]
    assert kinds.count("heads") == 6 and kinds.count("mlp_hidden") == 6 and len(kinds) == 12
    heads = {g.name: g for g in spec.groups if g.kind == "heads"}
    bias = heads["model.encoder.block.1.layer.0.SelfAttention.heads"]
    assert bias.slices[-1].module.endswith("relative_attention_bias")  # every layer's own table
    cross = heads["model.decoder.block.0.layer.1.EncDecAttention.heads"]
    assert not any(s.module.endswith("relative_attention_bias") for s in cross.slices)
    drop = {g.name: ([1, 2] if g.kind == "heads" else range(5)) for g in spec.groups}
    x = torch.randn(4, 64)
    x[1, 3] = float("nan")
    with torch.no_grad():
        full = bolt(x)
        for group in spec.groups:
            _zero_units(bolt, group, drop[group.name])
        before = bolt(x)
        assert (before - full).abs().max() > 1e-3  # the zeroed units mattered
        for group in spec.groups:
            remove_units(bolt, group, drop[group.name])
        torch.testing.assert_close(bolt(x), before, atol=1e-5, rtol=1e-5)
        for batch in (1, 9):
            assert bolt(torch.randn(batch, 64)).shape == (batch, 24)
    d = bolt.model.config.d_kv
    for attention in _attentions(bolt.model):
        assert attention.n_heads == 2 and attention.inner_dim == 2 * d
        assert attention.q.out_features == attention.o.in_features == 2 * d
        if attention.has_relative_attention_bias:
            assert attention.relative_attention_bias.weight.shape == (32, 2)
    record = bolt.config_dict()["prunecast_structure"]
    assert record["input_hidden"] == 59
    assert [layer["heads"] for layer in record["encoder"]] == [2, 2]
    assert [(layer["heads"], layer["cross_heads"]) for layer in record["decoder"]] == [(2, 2), (2, 2)]
    assert {g.units for g in bolt.pruning_spec().groups if g.kind == "heads"} == {2}


def test_pruned_model_saves_loads_and_exports_with_parity(tmp_path, bolt):
    """prune -> forward at several batch sizes -> save/load -> ONNX export -> onnxruntime parity."""
    from prunecast.compress import load_model, save_model
    from prunecast.compress.groups import remove_units
    from prunecast.export.onnx_export import ExportConfig, export_onnx

    bolt.horizon = 16
    for group in bolt.pruning_spec().groups:  # heads from the spec: 4 -> 2, FFN and embeddings halved
        remove_units(bolt, group, range(0, group.units, 2))
    with torch.no_grad():
        for batch in (1, 5, 17):
            assert bolt(torch.randn(batch, 64)).shape == (batch, 16)
    save_model(bolt, tmp_path / "pruned")
    loaded = load_model(str(tmp_path / "pruned"))
    x = torch.randn(3, 64)
    x[0, :9] = float("nan")
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), bolt(x))
    manifest = export_onnx(loaded, tmp_path / "art", ExportConfig(batch_sizes=(1, 7, 33)))
    assert manifest.parity.max_abs_err < 1e-4

    import onnxruntime as ort

    session = ort.InferenceSession(str(tmp_path / "art" / "model.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(["forecast"], {"context": x.numpy()})[0]
    assert np.isfinite(got).all(), "NaN in the context must keep working in the exported graph"
    np.testing.assert_allclose(got, loaded(x).detach().numpy(), atol=1e-4)


def _pinball(bolt, x, y):
    """Chronos-Bolt's quantile loss written out: instance-normalise with the context's mean and
    std, 2 |(y - q)(1[y <= q] - tau)|, mean over quantile levels, summed over the horizon, mean
    over the batch (as the package trains it)."""
    loc = torch.nan_to_num(torch.nanmean(x, dim=-1, keepdim=True))
    scale = torch.nan_to_num((x - loc).square().nanmean(dim=-1, keepdim=True).sqrt(), nan=1.0)
    q = bolt.quantiles(x)[..., : y.shape[-1]]
    qs, ys = (q - loc[:, None]) / scale[:, None], ((y - loc) / scale)[:, None]
    tau = torch.tensor(QUANTILES)[None, :, None]
    return (2 * ((ys - qs) * ((ys <= qs).float() - tau)).abs()).mean(1).sum(-1).mean()


def test_training_loss_is_the_quantile_loss_of_the_first_block(bolt):
    torch.manual_seed(3)
    x, y = torch.randn(6, 64), torch.randn(6, 24)
    x[2, :10] = float("nan")
    with torch.no_grad():
        loss = bolt.training_loss(x, y)
        torch.testing.assert_close(loss, _pinball(bolt, x, y[:, :16]))
        assert abs(float(loss) - float(torch.square(bolt(x) - y).mean())) > 1e-3  # not the MSE default


def test_finetune_lowers_the_quantile_loss(tmp_path, bolt):
    from prunecast.compress import FinetuneConfig, finetune
    from prunecast.compress.training import tensors
    from prunecast.data import prepare_windows

    data = prepare_windows(write_csv(tmp_path / "s.csv", rows=600, columns=1), context_length=64, horizon=24)
    x, y = tensors(data.train, np.arange(0, len(data.train), 4))
    with torch.no_grad():
        before = float(bolt.training_loss(x, y))
    cfg = FinetuneConfig(lr=3e-3, epochs=2, windows_per_epoch=256, batch_size=32, val_windows=64, seed=1)
    report = finetune(bolt, data.train, data.val, cfg)
    with torch.no_grad():
        after = float(bolt.training_loss(x, y))
    assert report.best_epoch >= 0 and report.best_val_loss < report.val_loss_before  # median MSE judged
    assert after < 0.9 * before
