"""Chronos-Bolt (Amazon, package ``chronos-forecasting``): a T5 encoder-decoder over patches.

Two deviations from the stock model make it prunable per layer and exportable:

- **Per-layer relative-position bias.** T5 keeps one bias table (``[buckets, heads]``) in the
  first layer of each stack and hands the bias it computes to every later layer, so all layers
  must have the same heads. Here every attention layer owns the rows of that table for its own
  heads (a copy, made once at load), and a forward pre-hook makes each layer compute its own bias
  instead of reusing the one handed down. Outputs are unchanged; a layer's heads can then be
  removed together with its bias rows, and cross-attention (whose "bias" is the encoder mask,
  built with the layer's own head count) works with any head count too.
- **Eager attention, no decoder cache.** The SDPA mask path fails in the ONNX exporter, and the
  one-step decoder never needs a cache.

The per-layer head counts and FFN widths live in the config under ``prunecast_structure`` so
that :meth:`ChronosBoltAdapter.from_config` rebuilds a pruned architecture exactly.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import nn

from prunecast.models.base import (
    Attribute,
    ForecastModule,
    ModelAdapter,
    ModelError,
    PruneGroup,
    PruningSpec,
    Slice,
    checkpoint_error,
    residual_block_hidden,
)

STRUCTURE_KEY = "prunecast_structure"
# save_pretrained drops these copies of the shared (tied) embedding
_TIED = {"encoder.embed_tokens.weight", "decoder.embed_tokens.weight"}
DEFAULT_CONTEXT = 512


class ChronosBoltForecast(ForecastModule):
    """``[B, L] -> [B, H]``: the median quantile; :meth:`quantiles` gives all of them.

    Missing values (NaN) in the context are part of the model's contract: it masks them itself.
    Horizons beyond the checkpoint's prediction length are forecast autoregressively, appending
    the median of each block to the context (the pipeline instead resamples every quantile, which
    multiplies the batch by the number of quantiles; the median keeps the graph batch-linear).
    """

    family = "chronos_bolt"

    def forward(self, context: torch.Tensor) -> torch.Tensor:
        return self.quantiles(context)[:, self.median_index, :]

    def quantiles(self, context: torch.Tensor) -> torch.Tensor:
        """All quantile forecasts ``[B, Q, H]`` (levels in :attr:`quantile_levels`)."""
        block = self.model.chronos_config.prediction_length
        limit = self.model.chronos_config.context_length
        blocks = []
        for _ in range(math.ceil(self.horizon / block)):
            preds = self.model(context=context).quantile_preds
            blocks.append(preds)
            context = torch.cat([context, preds[:, self.median_index, :]], dim=-1)[:, -limit:]
        return torch.cat(blocks, dim=-1)[..., : self.horizon]

    @property
    def native_horizon(self) -> int:
        return self.model.chronos_config.prediction_length

    def training_loss(self, context: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Chronos-Bolt's own quantile loss, as the package computes it when trained: the pinball
        loss of every quantile on the instance-normalised target of the first ``prediction_length``
        steps (the model's one-shot output; longer horizons are its medians fed back, not trained).
        NaN targets are masked out."""
        block = self.model.chronos_config.prediction_length
        return self.model(context=context, target=target[:, :block]).loss

    @property
    def quantile_levels(self) -> tuple[float, ...]:
        return tuple(float(q) for q in self.model.chronos_config.quantiles)

    def config_dict(self) -> dict:
        config = self.model.config.to_dict()
        config[STRUCTURE_KEY] = structure(self.model)
        return config

    def pruning_spec(self) -> PruningSpec:
        """Attention heads of every encoder/decoder self- and cross-attention, FFN hidden channels
        of every block, and the hidden channels of the input and output patch-embedding blocks.

        A head is its ``d_kv`` rows of ``q``, ``k``, ``v``, its columns of ``o`` and, for a
        self-attention, its column of the layer's own relative-position-bias table (see
        :func:`make_layers_independent`); the layer's ``n_heads`` and ``inner_dim`` follow.
        """
        groups = []
        for stack in ("encoder", "decoder"):
            for i, block in enumerate(getattr(self.model, stack).block):
                for j, name in enumerate(_block_attentions(block)):
                    attention = getattr(block.layer[j], name)
                    groups.append(_head_group(f"model.{stack}.block.{i}.layer.{j}.{name}", attention))
                dense = _ffn(block.layer[-1])
                path = f"model.{stack}.block.{i}.layer.{len(block.layer) - 1}.DenseReluDense"
                inputs = [n for n in ("wi", "wi_0", "wi_1") if hasattr(dense, n)]
                groups.append(
                    PruneGroup(
                        name=f"{path}.hidden",
                        kind="mlp_hidden",
                        units=dense.wo.in_features,
                        slices=tuple(Slice(f"{path}.{n}", "out") for n in inputs)
                        + (Slice(f"{path}.wo", "in"),),
                        exact_by_zeroing=True,
                    )
                )
        for name in ("input_patch_embedding", "output_patch_embedding"):
            groups.append(residual_block_hidden(f"model.{name}", getattr(self.model, name)))
        return PruningSpec(groups=tuple(groups))

    def save_pretrained(self, directory: str | Path) -> None:
        """A Hugging Face-style directory (config with the per-layer structure, safetensors weights)
        that :meth:`ChronosBoltAdapter.load` reads back, pruned or not."""
        self.model.config.update({STRUCTURE_KEY: structure(self.model)})
        self.model.save_pretrained(directory)


def structure(model) -> dict:
    """Per-layer head counts and FFN widths of every T5 block: what a T5 config cannot say."""

    return {
        "encoder": [
            {"heads": b.layer[0].SelfAttention.n_heads, "d_ff": _ffn(b.layer[-1]).wo.in_features}
            for b in model.encoder.block
        ],
        "decoder": [
            {
                "heads": b.layer[0].SelfAttention.n_heads,
                "cross_heads": b.layer[1].EncDecAttention.n_heads,
                "d_ff": _ffn(b.layer[-1]).wo.in_features,
            }
            for b in model.decoder.block
        ],
        "input_hidden": model.input_patch_embedding.hidden_layer.out_features,
        "output_hidden": model.output_patch_embedding.hidden_layer.out_features,
    }


def _block_attentions(block) -> list[str]:
    """Names of a T5 block's attentions, in layer order (self, then cross in a decoder)."""
    return ["SelfAttention", "EncDecAttention"][: len(block.layer) - 1]


def _head_group(path: str, attention) -> PruneGroup:
    """The heads of ``attention`` (at ``path``): q/k/v rows, o columns and its bias-table column."""
    slices = [Slice(f"{path}.{n}", "out", "blocked") for n in "qkv"] + [Slice(f"{path}.o", "in", "blocked")]
    if attention.has_relative_attention_bias:
        slices.append(Slice(f"{path}.relative_attention_bias", "out", "blocked"))
    return PruneGroup(
        name=f"{path}.heads",
        kind="heads",
        units=attention.n_heads,
        slices=tuple(slices),
        # a zero head adds nothing through o: nothing normalises across heads
        exact_by_zeroing=True,
        attributes=(
            Attribute(f"{path}.n_heads"),
            Attribute(f"{path}.inner_dim", attention.key_value_proj_dim),
        ),
    )


def _ffn(layer_ff) -> nn.Module:
    return layer_ff.DenseReluDense


def keep_heads(attention, keep: list[int]) -> None:
    """Keep only heads ``keep`` (indices into its current heads) of a T5 attention, with its bias rows."""
    d = attention.key_value_proj_dim
    index = torch.tensor([h * d + i for h in keep for i in range(d)], dtype=torch.long)
    for name in ("q", "k", "v"):
        setattr(attention, name, _select_linear(getattr(attention, name), index, dim=0))
    attention.o = _select_linear(attention.o, index, dim=1)
    if attention.has_relative_attention_bias:
        table = attention.relative_attention_bias
        rows = nn.Embedding(table.num_embeddings, len(keep))
        rows.weight.data = table.weight.data[:, keep].clone()
        attention.relative_attention_bias = rows
    attention.n_heads = len(keep)
    attention.inner_dim = len(keep) * d


def keep_ffn(dense, keep: list[int]) -> None:
    """Keep only hidden channels ``keep`` of a T5 FFN (plain or gated)."""
    index = torch.tensor(keep, dtype=torch.long)
    for name in ("wi", "wi_0", "wi_1"):
        if hasattr(dense, name):
            setattr(dense, name, _select_linear(getattr(dense, name), index, dim=0))
    dense.wo = _select_linear(dense.wo, index, dim=1)


def keep_hidden(block, keep: list[int]) -> None:
    """Keep only hidden channels ``keep`` of a Chronos-Bolt residual block (patch embeddings)."""
    index = torch.tensor(keep, dtype=torch.long)
    block.hidden_layer = _select_linear(block.hidden_layer, index, dim=0)
    block.output_layer = _select_linear(block.output_layer, index, dim=1)


def _select_linear(linear: nn.Linear, index: torch.Tensor, dim: int) -> nn.Linear:
    weight = linear.weight.data.index_select(dim, index)
    out_f, in_f = weight.shape
    new = nn.Linear(in_f, out_f, bias=linear.bias is not None, device=weight.device, dtype=weight.dtype)
    new.weight.data = weight.clone()
    if linear.bias is not None:
        bias = linear.bias.data if dim == 1 else linear.bias.data.index_select(0, index)
        new.bias.data = bias.clone()
    return new


def _own_bias(module, args, kwargs):
    """Forward pre-hook: compute this layer's own position bias rather than reuse the one handed down."""
    kwargs["position_bias"] = None
    return args, kwargs


def make_layers_independent(model) -> None:
    """Give every self-attention layer its own copy of its stack's bias table, and make every
    attention layer compute its own bias (see the module docstring). Idempotent."""
    for stack in (model.encoder, model.decoder):
        first = stack.block[0].layer[0].SelfAttention
        for block in stack.block:
            attentions = [block.layer[0].SelfAttention]
            if stack.is_decoder:
                attentions.append(block.layer[1].EncDecAttention)
            for a in attentions:
                if a is attentions[0] and not a.has_relative_attention_bias:
                    table = nn.Embedding(first.relative_attention_num_buckets, a.n_heads)
                    table.weight.data = first.relative_attention_bias.weight.data.clone()
                    a.relative_attention_bias = table
                    a.has_relative_attention_bias = True
                if not getattr(a, "_prunecast_own_bias", False):
                    a.register_forward_pre_hook(_own_bias, with_kwargs=True)
                    a._prunecast_own_bias = True


def _apply_structure(model, record: dict) -> None:
    """Shrink a freshly built model to the recorded per-layer heads and FFN widths."""
    for stack_name in ("encoder", "decoder"):
        stack = getattr(model, stack_name)
        layers = record.get(stack_name, [])
        if len(layers) != len(stack.block):
            raise ModelError(
                f"{STRUCTURE_KEY}.{stack_name} has {len(layers)} layers; the config has {len(stack.block)}"
            )
        for block, spec in zip(stack.block, layers, strict=True):
            keep_heads(block.layer[0].SelfAttention, list(range(int(spec["heads"]))))
            if stack.is_decoder:
                keep_heads(block.layer[1].EncDecAttention, list(range(int(spec["cross_heads"]))))
            keep_ffn(_ffn(block.layer[-1]), list(range(int(spec["d_ff"]))))
    for name, key in (("input_patch_embedding", "input_hidden"), ("output_patch_embedding", "output_hidden")):
        if key in record:
            keep_hidden(getattr(model, name), list(range(int(record[key]))))


class ChronosBoltAdapter(ModelAdapter):
    family = "chronos_bolt"
    default_model = "amazon/chronos-bolt-small"

    def load(
        self,
        source: str,
        horizon: int | None = None,
        context_length: int | None = None,
        revision: str | None = None,
    ) -> ChronosBoltForecast:
        from chronos.chronos_bolt import ChronosBoltModelForForecasting

        config = _read_local_config(source)
        if config is not None and STRUCTURE_KEY in config:
            # A pruned checkpoint: the stock loader would build full-size layers and refuse the weights.
            return self._load_pruned(source, config, horizon, context_length)
        try:
            model = ChronosBoltModelForForecasting.from_pretrained(
                source, revision=revision, attn_implementation="eager"
            )
        except OSError as exc:
            raise checkpoint_error("Chronos-Bolt", source, exc) from None
        return self._wrap(model, horizon, context_length, source)

    def from_config(self, config: dict, context_length: int, horizon: int) -> ChronosBoltForecast:
        from chronos.chronos_bolt import ChronosBoltModelForForecasting
        from transformers import T5Config

        config = dict(config)
        record = config.pop(STRUCTURE_KEY, None)
        t5 = T5Config.from_dict(config)
        t5._attn_implementation = "eager"
        model = ChronosBoltModelForForecasting(t5)
        make_layers_independent(model)
        if record is not None:
            _apply_structure(model, record)
        return self._wrap(model, horizon, context_length, "config")

    def recognises(self, config: dict) -> bool:
        return "input_patch_size" in (config.get("chronos_config") or {})

    def _load_pruned(self, source, config, horizon, context_length) -> ChronosBoltForecast:
        from safetensors.torch import load_file

        weights = Path(source) / "model.safetensors"
        if not weights.is_file():
            raise ModelError(f"{source}: no model.safetensors beside its config.json")
        cfg_ctx = config["chronos_config"]["context_length"]
        cfg_h = config["chronos_config"]["prediction_length"]
        module = self.from_config(config, context_length or min(DEFAULT_CONTEXT, cfg_ctx), horizon or cfg_h)
        try:
            state = load_file(str(weights))
        except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types on corrupt files
            raise ModelError(f"{weights}: cannot be read as safetensors ({exc})") from None
        expected = module.model.state_dict()
        wrong = [k for k, v in state.items() if k in expected and expected[k].shape != v.shape]
        missing = set(expected) - set(state) - _TIED
        unexpected = set(state) - set(expected)
        if wrong or missing or unexpected:
            raise ModelError(
                f"{weights}: weights do not match the pruned structure in its config.json "
                f"(shape mismatch {wrong[:3]}, missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})"
            )
        module.model.load_state_dict(state, strict=False)
        return self._wrap(module.model, horizon, context_length, source)

    @staticmethod
    def _wrap(model, horizon: int | None, context_length: int | None, source: str) -> ChronosBoltForecast:
        cc = model.chronos_config
        horizon = cc.prediction_length if horizon is None else horizon
        if horizon < 1:
            raise ModelError(f"horizon must be positive, got {horizon}")
        context_length = min(DEFAULT_CONTEXT, cc.context_length) if context_length is None else context_length
        if not 1 <= context_length <= cc.context_length:
            raise ModelError(
                f"{source}: context length {context_length} is outside 1..{cc.context_length}, "
                "the range this Chronos-Bolt checkpoint reads"
            )
        if 0.5 not in cc.quantiles:
            raise ModelError(f"{source}: quantiles {cc.quantiles} have no median (0.5) for a point forecast")
        model.config._attn_implementation = "eager"
        for stack in (model.encoder, model.decoder):
            stack.config._attn_implementation = "eager"
            stack.config.use_cache = False
        make_layers_independent(model)
        model.eval()
        return ChronosBoltForecast(model, context_length, horizon)


def _read_local_config(source: str) -> dict | None:
    path = Path(source) / "config.json"
    return json.loads(path.read_text()) if path.is_file() else None
