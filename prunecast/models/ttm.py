"""TinyTimeMixer (IBM Granite TTM, package ``granite-tsfm``)."""

from __future__ import annotations

import torch
from tsfm_public.models.tinytimemixer import TinyTimeMixerConfig, TinyTimeMixerForPrediction

from prunecast.models.base import ForecastModule, ModelAdapter, ModelError


class TTMForecast(ForecastModule):
    """TTM in univariate mode: ``[B, L]`` becomes ``past_values [B, L, 1]``.

    TTM normalises each series itself (its ``std`` scaler), so the module takes raw
    context. A checkpoint's horizon may be truncated to a shorter one.
    """

    family = "ttm"

    def forward(self, context: torch.Tensor) -> torch.Tensor:
        out = self.model(past_values=context.unsqueeze(-1), return_dict=True)
        return out.prediction_outputs[:, : self.horizon, 0]

    def config_dict(self) -> dict:
        return self.model.config.to_dict()


class TTMAdapter(ModelAdapter):
    family = "ttm"
    default_model = "ibm-granite/granite-timeseries-ttm-r2"

    def load(self, source: str, horizon: int | None = None, context_length: int | None = None) -> TTMForecast:
        try:
            model = TinyTimeMixerForPrediction.from_pretrained(source)
        except OSError as exc:
            raise ModelError(
                f"cannot load TinyTimeMixer {source!r}: {exc}. Offline, set HF_HUB_CACHE to a cache "
                "holding it with HF_HUB_OFFLINE=1, or pass a local directory."
            ) from None
        return self._wrap(model, horizon, context_length, source)

    def from_config(self, config: dict, context_length: int, horizon: int) -> TTMForecast:
        model = TinyTimeMixerForPrediction(TinyTimeMixerConfig.from_dict(config))
        return self._wrap(model, horizon, context_length, "config")

    def recognises(self, config: dict) -> bool:
        return config.get("model_type") == "tinytimemixer"

    @staticmethod
    def _wrap(model, horizon: int | None, context_length: int | None, source: str) -> TTMForecast:
        cfg = model.config
        native_h = cfg.prediction_filter_length or cfg.prediction_length
        horizon = native_h if horizon is None else horizon
        if horizon < 1:
            raise ModelError(f"horizon must be positive, got {horizon}")
        if horizon > native_h:
            raise ModelError(
                f"{source}: horizon {horizon} is longer than the checkpoint's {native_h}; "
                f"use a TTM checkpoint with a longer prediction length"
            )
        if context_length is not None and context_length != cfg.context_length:
            raise ModelError(
                f"{source}: context length {context_length} differs from the checkpoint's "
                f"{cfg.context_length}; TTM checkpoints have a fixed context length"
            )
        model.eval()
        return TTMForecast(model, cfg.context_length, horizon)
