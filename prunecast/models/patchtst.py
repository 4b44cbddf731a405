"""transformers' patch forecasters: PatchTST and PatchTSMixer (``PatchTSTForPrediction``,
``PatchTSMixerForPrediction``), univariate through their channel-independent path.

Both embed each channel's patches with weights shared across channels (PatchTST
``share_embedding`` / ``share_projection``, PatchTSMixer ``mode="common_channel"``), so a
checkpoint trained on several channels loads with ``num_input_channels=1`` and forecasts one
series ``[B, L] -> [B, H]``; both scale each series themselves (``scaling``), so the module takes
raw context. Their coupling is traced by compress (``traced_coupling``): PatchTST's FFN channels
and PatchTSMixer's MLP channels pass the exactness check as traced. The tracer sees PatchTST's
attention as one coupled 16-wide axis over q, k, v and out, which cannot be removed channel by
channel (the head split needs whole heads), so PatchTST hand-writes its attention heads.
"""

from __future__ import annotations

import torch
from transformers import (
    PatchTSMixerConfig,
    PatchTSMixerForPrediction,
    PatchTSTConfig,
    PatchTSTForPrediction,
)

from prunecast.models.base import (
    ForecastModule,
    ModelAdapter,
    ModelError,
    PruneGroup,
    PruningSpec,
    Slice,
    checkpoint_error,
)


class PatchForecast(ForecastModule):
    """``past_values [B, L, 1] -> prediction_outputs [B, H0, 1]``, truncated to the horizon."""

    traced_coupling = True

    def forward(self, context: torch.Tensor) -> torch.Tensor:
        out = self.model(past_values=context.unsqueeze(-1), return_dict=True)
        return out.prediction_outputs[:, : self.horizon, 0]

    def config_dict(self) -> dict:
        return self.model.config.to_dict()

    def save_pretrained(self, directory) -> None:
        """A Hugging Face directory (``config.json`` + safetensors) this family's adapter loads."""
        self.model.save_pretrained(directory)


class PatchTSTForecast(PatchForecast):
    family = "patchtst"

    def pruning_spec(self) -> PruningSpec:
        """The attention heads of every encoder layer: a head is its ``head_dim`` rows of ``q``,
        ``k`` and ``v`` and its columns of ``out_proj`` (blocked). The layer reshapes with ``-1``
        heads and a fixed ``head_dim``, so nothing cached needs rewriting. The FFN channels and
        the rest come from the tracer."""
        groups = []
        for i, layer in enumerate(self.model.model.encoder.layers):
            path = f"model.model.encoder.layers.{i}.self_attn"
            attn = layer.self_attn
            heads = attn.q_proj.out_features // attn.head_dim
            groups.append(
                PruneGroup(
                    name=f"{path}.heads",
                    kind="heads",
                    units=heads,
                    slices=tuple(
                        Slice(f"{path}.{p}", "out", "blocked") for p in ("q_proj", "k_proj", "v_proj")
                    )
                    + (Slice(f"{path}.out_proj", "in", "blocked"),),
                    exact_by_zeroing=True,
                )
            )
        return PruningSpec(groups=tuple(groups))


class PatchTSMixerForecast(PatchForecast):
    family = "patchtsmixer"


class _PatchAdapter(ModelAdapter):
    model_class: type
    config_class: type
    forecast_class: type[PatchForecast]
    model_type: str

    def load(
        self,
        source: str,
        horizon: int | None = None,
        context_length: int | None = None,
        revision: str | None = None,
    ) -> PatchForecast:
        try:
            config = self.config_class.from_pretrained(source, revision=revision)
        except OSError as exc:
            raise checkpoint_error(self.model_class.__name__, source, exc) from None
        self._check_channel_independent(config, source)
        config.num_input_channels = 1
        try:
            model = self.model_class.from_pretrained(source, config=config, revision=revision)
        except (OSError, RuntimeError) as exc:
            raise checkpoint_error(self.model_class.__name__, source, exc) from None
        return self._wrap(model, horizon, context_length, source)

    def from_config(self, config: dict, context_length: int, horizon: int) -> PatchForecast:
        cfg = self.config_class.from_dict({**config, "num_input_channels": 1})
        return self._wrap(self.model_class(cfg), horizon, context_length, "config")

    def recognises(self, config: dict) -> bool:
        return config.get("model_type") == self.model_type

    def _check_channel_independent(self, config, source: str) -> None:
        """Only weights shared across channels forecast one series the way they were trained."""

    def _wrap(self, model, horizon: int | None, context_length: int | None, source: str) -> PatchForecast:
        cfg = model.config
        if getattr(cfg, "loss", "mse") != "mse":
            raise ModelError(
                f"{source}: a {cfg.loss!r} (distribution) head; prunecast forecasts with the point (mse) head"
            )
        horizon = cfg.prediction_length if horizon is None else horizon
        if not 1 <= horizon <= cfg.prediction_length:
            raise ModelError(
                f"{source}: horizon {horizon} is not within the checkpoint's 1..{cfg.prediction_length}"
            )
        if context_length is not None and context_length != cfg.context_length:
            raise ModelError(
                f"{source}: context length {context_length} differs from the checkpoint's "
                f"{cfg.context_length}; {self.family} checkpoints have a fixed context length"
            )
        return self.forecast_class(model, cfg.context_length, horizon).eval()


class PatchTSTAdapter(_PatchAdapter):
    family = "patchtst"
    default_model = "ibm-granite/granite-timeseries-patchtst"
    model_class = PatchTSTForPrediction
    config_class = PatchTSTConfig
    forecast_class = PatchTSTForecast
    model_type = "patchtst"

    def _check_channel_independent(self, config, source: str) -> None:
        shared = config.share_embedding and config.share_projection and not config.channel_attention
        if config.num_input_channels > 1 and not shared:
            raise ModelError(
                f"{source}: PatchTST with per-channel embeddings or heads, or channel attention, "
                "is not channel-independent; prunecast forecasts one series at a time"
            )


class PatchTSMixerAdapter(_PatchAdapter):
    family = "patchtsmixer"
    default_model = "ibm-granite/granite-timeseries-patchtsmixer"
    model_class = PatchTSMixerForPrediction
    config_class = PatchTSMixerConfig
    forecast_class = PatchTSMixerForecast
    model_type = "patchtsmixer"

    def _check_channel_independent(self, config, source: str) -> None:
        if config.num_input_channels > 1 and config.mode != "common_channel":
            raise ModelError(
                f"{source}: PatchTSMixer in {config.mode!r} mode mixes channels; prunecast forecasts "
                "one series at a time (common_channel checkpoints only)"
            )
