"""TimesFM 2.5 (Google, package ``timesfm``): a decoder-only transformer over patches, with RoPE.

The package forecasts through a Python-list interface (``compile`` + ``forecast``) around a
stateful KV-cache decoder. Here the same computation is a plain tensor function of the context,
``[B, L] -> [B, H]``, which exports with a dynamic batch: the context is left-padded to whole
patches (padding masked, as the package does), normalised per patch with the package's running
statistics, run through the package's own layers in one causal pass, and, for horizons beyond
one output patch, extended by re-running the whole sequence with the median appended (the
package's KV cache gives the same numbers; a full pass keeps the graph free of cache state).
Flip invariance and the non-negativity guard follow the package's ``ForecastConfig`` defaults.

The architecture lives in a frozen "definition" the package hard-codes for 200M; here it is read
from the config (or from the checkpoint's tensor shapes), so small random models and pruned ones
(per-layer head counts and FFN widths, under ``layers``) build too.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import torch

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

MODEL_TYPE = "timesfm_2p5"
WEIGHTS = "model.safetensors"


def _package():
    try:
        from timesfm import configs
        from timesfm.timesfm_2p5 import timesfm_2p5_base, timesfm_2p5_torch
        from timesfm.torch import util
    except ImportError:
        raise ModelError("TimesFM needs the `timesfm` package: pip install 'prunecast[timesfm]'") from None
    return configs, timesfm_2p5_base, timesfm_2p5_torch, util


def definition_from_dict(data: dict):
    """The package's frozen architecture definition, from its ``dataclasses.asdict`` form."""
    configs, base, _, _ = _package()
    block = configs.ResidualBlockConfig
    stacked = data["stacked_transformers"]
    return base.TimesFM_2p5_200M_Definition(
        input_patch_len=int(data["input_patch_len"]),
        output_patch_len=int(data["output_patch_len"]),
        output_quantile_len=int(data["output_quantile_len"]),
        quantiles=list(data["quantiles"]),
        decode_index=int(data["decode_index"]),
        tokenizer=block(**data["tokenizer"]),
        stacked_transformers=configs.StackedTransformersConfig(
            num_layers=int(stacked["num_layers"]),
            transformer=configs.TransformerConfig(**stacked["transformer"]),
        ),
        output_projection_point=block(**data["output_projection_point"]),
        output_projection_quantiles=block(**data["output_projection_quantiles"]),
    )


def build_module(definition):
    """The package's torch module for any definition (the package's class reads a class attribute)."""
    _, _, tfm, _ = _package()

    class TimesFM25Module(tfm.TimesFM_2p5_200M_torch_module):
        config = definition

    module = TimesFM25Module()
    module.device = torch.device("cpu")
    return module


def keep_heads(layer, keep: list[int]) -> None:
    """Keep only heads ``keep`` of a TimesFM transformer layer; head dims stay whole (RoPE)."""
    attn = layer.attn
    hd, heads = attn.head_dim, attn.num_heads
    channels = [h * hd + i for h in keep for i in range(hd)]
    if attn.fuse_qkv:
        rows = [part * heads * hd + c for part in range(3) for c in channels]
        attn.qkv_proj = _select(attn.qkv_proj, rows, dim=0)
    else:
        for name in ("query", "key", "value"):
            setattr(attn, name, _select(getattr(attn, name), channels, dim=0))
    attn.out = _select(attn.out, channels, dim=1)
    attn.num_heads = len(keep)
    attn.in_features = len(keep) * hd  # the package reshapes heads back to this width
    layer.config = dataclasses.replace(layer.config, num_heads=len(keep))


def keep_ffn(layer, keep: list[int]) -> None:
    """Keep only FFN hidden channels ``keep`` of a TimesFM transformer layer."""
    layer.ff0 = _select(layer.ff0, keep, dim=0)
    layer.ff1 = _select(layer.ff1, keep, dim=1)
    layer.config = dataclasses.replace(layer.config, hidden_dims=len(keep))


def _select(linear: torch.nn.Linear, index: list[int], dim: int) -> torch.nn.Linear:
    idx = torch.tensor(index, dtype=torch.long)
    weight = linear.weight.data.index_select(dim, idx)
    new = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=linear.bias is not None)
    new.weight.data = weight.clone()
    if linear.bias is not None:
        new.bias.data = (linear.bias.data if dim == 1 else linear.bias.data.index_select(0, idx)).clone()
    return new


class TimesFMForecast(ForecastModule):
    """``[B, L] -> [B, H]``: the median (the package's point forecast); :meth:`quantiles` gives
    the nine quantile levels ``[B, 9, H]``. The context must be finite (no NaN)."""

    family = "timesfm"

    def __init__(
        self, model, context_length: int, horizon: int, flip_invariance: bool, infer_is_positive: bool
    ):
        super().__init__(model, context_length, horizon)
        self.flip_invariance = flip_invariance
        self.infer_is_positive = infer_is_positive

    def forward(self, context: torch.Tensor) -> torch.Tensor:
        return self._forecast(context)[..., self.model.aridx]

    @property
    def native_horizon(self) -> int:
        return self.model.o

    def quantiles(self, context: torch.Tensor) -> torch.Tensor:
        """Quantile forecasts ``[B, 9, H]`` (levels 0.1 .. 0.9; index 0 of the package, its mean, is left out)."""
        return self._forecast(context)[..., 1:].transpose(1, 2)

    @property
    def quantile_levels(self) -> tuple[float, ...]:
        return tuple(float(q) for q in self.model.config.quantiles)

    def _forecast(self, context: torch.Tensor) -> torch.Tensor:
        """``[B, H, q]`` as the package's ``forecast`` returns it (mean, then the quantiles)."""
        batch = context.shape[0]
        if self.flip_invariance:
            both = self._decode(torch.cat([context, -context], dim=0))
            plain, flipped = both[:batch], both[batch:]
            flipped = torch.cat([flipped[..., :1], torch.flip(flipped[..., 1:], dims=(-1,))], dim=-1)
            out = (plain - flipped) / 2
        else:
            out = self._decode(context)
        if self.infer_is_positive:
            positive = torch.all(context >= 0, dim=-1)[:, None, None]
            out = torch.where(positive, torch.clamp(out, min=0.0), out)
        return out

    def _decode(self, context: torch.Tensor) -> torch.Tensor:
        m = self.model
        batch, length = context.shape
        pad = (-length) % m.p
        inputs = torch.cat([context.new_zeros(batch, pad), context], dim=-1)
        masks = torch.cat(
            [
                torch.ones(batch, pad, dtype=torch.bool, device=context.device),
                torch.zeros_like(context, dtype=torch.bool),
            ],
            dim=-1,
        )
        blocks = []
        for _ in range(math.ceil(self.horizon / m.o)):
            block = self._last_patch(inputs, masks)  # [B, o, q]
            blocks.append(block)
            inputs = torch.cat([inputs, block[..., m.aridx]], dim=-1)
            masks = torch.cat(
                [masks, torch.zeros(batch, m.o, dtype=torch.bool, device=context.device)], dim=-1
            )
        return torch.cat(blocks, dim=1)[:, : self.horizon]

    def _last_patch(self, inputs: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """The package's prefill: per-patch running mean/std, normalise, one causal pass, renormalise."""
        _, _, _, util = _package()
        m = self.model
        batch = inputs.shape[0]
        patches = inputs.reshape(batch, -1, m.p)
        patch_masks = masks.reshape(batch, -1, m.p)
        mu, sigma = running_stats(patches, patch_masks)
        normed = torch.where(patch_masks, 0.0, util.revin(patches, mu, sigma, reverse=False))
        (_, _, outputs, _), _ = m(normed, patch_masks)
        outputs = util.revin(outputs, mu, sigma, reverse=True).reshape(batch, -1, m.o, m.q)
        return outputs[:, -1]

    def config_dict(self) -> dict:
        # read from the tensors, so that pruned widths anywhere are always recorded
        config = config_from_state(self.model.state_dict())
        config["flip_invariance"] = self.flip_invariance
        config["infer_is_positive"] = self.infer_is_positive
        return config

    def pruning_spec(self) -> PruningSpec:
        """Attention heads and FFN hidden channels of every transformer layer, and the hidden
        channels of the tokenizer and both output residual blocks.

        A head keeps its head dims whole (RoPE rotates pairs inside a head, and the per-dim scale
        and q/k norms are per head dim): its ``head_dim`` rows in each of the query, key and value
        chunks of the fused projection, and its columns of ``out``. The layer's ``num_heads``,
        ``in_features`` (the width heads are reshaped back to) and its own config follow.
        """
        groups = []
        for i, layer in enumerate(self.model.stacked_xf):
            path = f"model.stacked_xf.{i}"
            attn = layer.attn
            if attn.fuse_qkv:
                projections = (Slice(f"{path}.attn.qkv_proj", "out", "blocked", chunks=3),)
            else:
                projections = tuple(
                    Slice(f"{path}.attn.{n}", "out", "blocked") for n in ("query", "key", "value")
                )
            groups.append(
                PruneGroup(
                    name=f"{path}.heads",
                    kind="heads",
                    units=attn.num_heads,
                    slices=projections + (Slice(f"{path}.attn.out", "in", "blocked"),),
                    exact_by_zeroing=True,
                    attributes=(
                        Attribute(f"{path}.attn.num_heads"),
                        Attribute(f"{path}.attn.in_features", attn.head_dim),
                        Attribute(f"{path}.config.num_heads"),
                    ),
                )
            )
            groups.append(
                PruneGroup(
                    name=f"{path}.ffn",
                    kind="mlp_hidden",
                    units=layer.ff0.out_features,
                    slices=(Slice(f"{path}.ff0", "out"), Slice(f"{path}.ff1", "in")),
                    exact_by_zeroing=True,
                    attributes=(Attribute(f"{path}.config.hidden_dims"),),
                )
            )
        for name in ("tokenizer", "output_projection_point", "output_projection_quantiles"):
            groups.append(residual_block_hidden(f"model.{name}", getattr(self.model, name)))
        return PruningSpec(groups=tuple(groups))

    def save_pretrained(self, directory: str | Path) -> None:
        """``config.json`` and ``model.safetensors`` that :meth:`TimesFMAdapter.load` reads back."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.model.state_dict().items()}, str(directory / WEIGHTS))
        (directory / "config.json").write_text(json.dumps(self.config_dict(), indent=2))


def running_stats(patches: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std of all unmasked points up to and including each patch, ``[B, N]`` each (0
    before the first point): the package's running statistics, as cumulative sums rather than a
    per-patch loop so the exported graph stays small. Deviations are taken from the context's
    mean, which cancels exactly and keeps the variance free of cancellation on offset series."""
    legit = (~masks).to(patches.dtype)
    count = legit.sum(dim=(1, 2), keepdim=True)
    centre = (patches * legit).sum(dim=(1, 2), keepdim=True) / torch.clamp(count, min=1.0)
    dev = (patches - centre) * legit
    n = torch.cumsum(legit.sum(-1), dim=1)
    n_safe = torch.clamp(n, min=1.0)
    mean_dev = torch.cumsum(dev.sum(-1), dim=1) / n_safe
    var = torch.clamp(torch.cumsum((dev * dev).sum(-1), dim=1) / n_safe - mean_dev**2, min=0.0)
    empty = n == 0
    mu = torch.where(empty, 0.0, mean_dev + centre[..., 0])
    sigma = torch.where(empty, 0.0, torch.sqrt(var))
    return mu, sigma


class TimesFMAdapter(ModelAdapter):
    family = "timesfm"
    default_model = "google/timesfm-2.5-200m-pytorch"

    def load(
        self,
        source: str,
        horizon: int | None = None,
        context_length: int | None = None,
        revision: str | None = None,
    ) -> TimesFMForecast:
        from safetensors.torch import load_file

        directory = Path(source)
        if directory.is_dir():
            weights = directory / WEIGHTS
            cfg_path = directory / "config.json"
            config = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
        else:
            from huggingface_hub import hf_hub_download

            try:
                weights = Path(hf_hub_download(source, WEIGHTS, revision=revision))
            except Exception as exc:  # noqa: BLE001 - unknown id, or offline without a cached copy
                raise checkpoint_error("TimesFM", source, exc) from None
            config = {}
        if not weights.is_file():
            raise ModelError(f"{source}: no {WEIGHTS}")
        try:
            state = load_file(str(weights))
        except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types on corrupt files
            raise ModelError(f"{weights}: cannot be read as safetensors ({exc})") from None
        if config.get("model_type") != MODEL_TYPE:
            # The package's own checkpoints carry no architecture: read it from the tensor shapes.
            config = config_from_state(state)
        module = _build(config)
        try:
            module.model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise ModelError(
                f"{weights}: weights do not match the architecture in its config ({exc})"
            ) from None
        return _finish(module, horizon, context_length, source)

    def from_config(self, config: dict, context_length: int, horizon: int) -> TimesFMForecast:
        return _finish(_build(config), horizon, context_length, "config")

    def recognises(self, config: dict) -> bool:
        return config.get("model_type") == MODEL_TYPE


def _build(config: dict) -> TimesFMForecast:
    model = build_module(definition_from_dict(config["definition"]))
    layers = config.get("layers") or []
    if len(layers) != len(model.stacked_xf):
        raise ModelError(f"config has {len(layers)} layer records for {len(model.stacked_xf)} layers")
    for layer, spec in zip(model.stacked_xf, layers, strict=True):
        if int(spec["num_heads"]) != layer.attn.num_heads:
            keep_heads(layer, list(range(int(spec["num_heads"]))))
        if int(spec["hidden_dims"]) != layer.ff0.out_features:
            keep_ffn(layer, list(range(int(spec["hidden_dims"]))))
    return TimesFMForecast(
        model,
        0,
        0,
        flip_invariance=bool(config.get("flip_invariance", True)),
        infer_is_positive=bool(config.get("infer_is_positive", True)),
    )


DEFAULT_CONTEXT = 512
DEFAULT_HORIZON = 128


def _finish(module: TimesFMForecast, horizon, context_length, source: str) -> TimesFMForecast:
    m = module.model
    module.horizon = horizon or DEFAULT_HORIZON
    module.context_length = context_length or DEFAULT_CONTEXT
    if module.horizon < 1 or module.context_length < 1:
        raise ModelError(f"{source}: horizon and context length must be positive")
    padded = module.context_length + (-module.context_length) % m.p
    steps = math.ceil(module.horizon / m.o)
    if padded + (steps - 1) * m.o > m.config.context_limit:
        raise ModelError(
            f"{source}: context {module.context_length} plus horizon {module.horizon} exceeds TimesFM's "
            f"context limit {m.config.context_limit}"
        )
    levels = module.quantile_levels
    if 0.5 not in levels or m.aridx != levels.index(0.5) + 1:  # output 0 is the mean, then the levels
        raise ModelError(
            f"{source}: decode index {m.aridx} is not the median of quantiles {list(levels)}; "
            "the point forecast must be the median"
        )
    module.eval()
    return module


def config_from_state(state: dict[str, torch.Tensor]) -> dict:
    """The architecture of a TimesFM 2.5 checkpoint, read from its tensor shapes."""
    try:
        quantiles = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
        q = len(quantiles) + 1
        tok = state["tokenizer.hidden_layer.weight"]
        point = state["output_projection_point.output_layer.weight"]
        quant = state["output_projection_quantiles.output_layer.weight"]
        n_layers = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("stacked_xf."))
        first = "stacked_xf.0."
        model_dims = state[first + "ff0.weight"].shape[1]
        head_dim = state[first + "attn.query_ln.scale"].shape[0]
        fused = first + "attn.qkv_proj.weight" in state
        layers = []
        for i in range(n_layers):
            p = f"stacked_xf.{i}."
            inner = state[p + "attn.out.weight"].shape[1]
            layers.append({"num_heads": inner // head_dim, "hidden_dims": state[p + "ff0.weight"].shape[0]})
    except (KeyError, ValueError, IndexError) as exc:
        raise ModelError(f"not a TimesFM 2.5 checkpoint (missing or odd tensor: {exc})") from None

    def block(prefix: str) -> dict:
        h, i = state[prefix + ".hidden_layer.weight"].shape
        return {
            "input_dims": i,
            "hidden_dims": h,
            "output_dims": state[prefix + ".output_layer.weight"].shape[0],
            "use_bias": prefix + ".hidden_layer.bias" in state,
            "activation": "swish",
        }

    definition = {
        "input_patch_len": tok.shape[1] // 2,
        "output_patch_len": point.shape[0] // q,
        "output_quantile_len": quant.shape[0] // q,
        "quantiles": quantiles,
        "decode_index": 5,
        "tokenizer": block("tokenizer"),
        "stacked_transformers": {
            "num_layers": n_layers,
            "transformer": {
                "model_dims": model_dims,
                "hidden_dims": layers[0]["hidden_dims"],
                "num_heads": model_dims // head_dim,
                "attention_norm": "rms",
                "feedforward_norm": "rms",
                "qk_norm": "rms",
                "use_bias": first + "ff0.bias" in state,
                "use_rotary_position_embeddings": True,
                "ff_activation": "swish",
                "fuse_qkv": fused,
            },
        },
        "output_projection_point": block("output_projection_point"),
        "output_projection_quantiles": block("output_projection_quantiles"),
    }
    return {"model_type": MODEL_TYPE, "definition": definition, "layers": layers}
