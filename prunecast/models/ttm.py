"""TinyTimeMixer (IBM Granite TTM, package ``granite-tsfm``)."""

from __future__ import annotations

import torch
from tsfm_public.models.tinytimemixer import TinyTimeMixerConfig, TinyTimeMixerForPrediction

from prunecast.common.defaults import DEFAULT_MODEL
from prunecast.models.base import (
    ForecastModule,
    ModelAdapter,
    ModelError,
    PruneGroup,
    PruningSpec,
    Slice,
    checkpoint_error,
)


class TTMForecast(ForecastModule):
    """TTM in univariate mode: ``[B, L]`` becomes ``past_values [B, L, 1]``.

    TTM normalises each series itself (its ``std`` scaler), so the module takes raw
    context. A checkpoint's horizon may be truncated to a shorter one. A longer one is either
    rolled out (zero-shot: the head's forecast appended to the context and the last ``L`` points
    fed back, until the horizon is covered) or given a head of its own length by
    :meth:`grow_head`, which fine-tuning then trains.
    """

    family = "ttm"

    def forward(self, context: torch.Tensor) -> torch.Tensor:
        return self._roll_out(context, self.model(past_values=context.unsqueeze(-1), return_dict=True))

    def _roll_out(self, context: torch.Tensor, first) -> torch.Tensor:
        """The forecast of ``horizon`` steps from ``first``, the model's output for ``context``: each
        further pass reads the last ``L`` points of the context with the forecast so far appended."""
        native = self.native_horizon
        blocks = [first.prediction_outputs[:, :native, 0]]
        for _ in range(1, -(-self.horizon // native)):
            context = torch.cat([context, blocks[-1]], dim=-1)[:, -self.context_length :]
            out = self.model(past_values=context.unsqueeze(-1), return_dict=True)
            blocks.append(out.prediction_outputs[:, :native, 0])
        forecast = blocks[0] if len(blocks) == 1 else torch.cat(blocks, dim=-1)
        return forecast[:, : self.horizon]

    @property
    def native_horizon(self) -> int:
        cfg = self.model.config
        return cfg.prediction_filter_length or cfg.prediction_length

    def grow_head(self, contexts: torch.Tensor | None = None) -> bool:
        """Replace the forecast head by one of ``horizon`` outputs when the checkpoint's is shorter.

        The head is one Linear from the flattened decoder features to the forecast steps. The new
        head's first rows are the pretrained head's (the steps it already forecasts, unchanged). Given
        ``contexts`` (a sample of training windows), the further rows are the least-squares fit that
        makes one pass forecast what the zero-shot roll-out forecasts for them: fine-tuning then starts
        from the roll-out's accuracy (on ETTh1 at 336, validation MSE 1.084 against the roll-out's
        1.083), where a flat continuation of the last pretrained step starts at 1.615 and full
        fine-tuning never caught up. Without ``contexts`` the further rows are copies of the last
        pretrained row, that flat continuation. The config's ``prediction_length`` becomes
        ``horizon`` (and the filter length is cleared), so a saved model rebuilds the longer head.
        """
        native = self.native_horizon
        if self.horizon <= native:
            return False
        old = self.model.head.base_forecast_block
        if not isinstance(old, torch.nn.Linear):
            raise ModelError(f"cannot grow a TTM head of type {type(old).__name__} (distribution heads)")
        fitted = None if contexts is None else self._fit_later_rows(contexts)
        new = torch.nn.Linear(old.in_features, self.horizon, bias=old.bias is not None)
        new = new.to(device=old.weight.device, dtype=old.weight.dtype)
        rows = torch.arange(self.horizon).clamp(max=native - 1)
        with torch.no_grad():
            new.weight.copy_(old.weight[rows])
            if old.bias is not None:
                new.bias.copy_(old.bias[rows])
            if fitted is not None:
                weight, bias = fitted
                new.weight[native:] = weight
                if old.bias is not None:
                    new.bias[native:] = bias
        self.model.head.base_forecast_block = new
        self.model.head.prediction_filter_length = None
        self.model.prediction_filter_length = None
        cfg = self.model.config
        cfg.prediction_length = self.horizon
        cfg.prediction_filter_length = None
        return True

    @torch.no_grad()
    def _fit_later_rows(
        self, contexts: torch.Tensor, batch_size: int = 512, ridge: float = 1e-2
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Head rows (weight ``[H - native, F]``, bias) that map the first pass's head features to the
        roll-out's later steps, in the head's own normalised units (TTM scales each series by its
        context's mean and std, and the head forecasts before that is undone). Ridge regression in
        float64 with ``ridge`` times the mean feature energy on the diagonal, which keeps the solve
        well posed when there are fewer windows than features."""
        native = self.native_horizon
        head = self.model.head.base_forecast_block
        was_training = self.training
        self.eval()
        captured: list[torch.Tensor] = []
        hook = head.register_forward_hook(lambda _m, args, _out: captured.append(args[0][:, 0, :]))
        features, targets = [], []
        try:
            for start in range(0, len(contexts), batch_size):
                x = contexts[start : start + batch_size]
                captured.clear()
                first = self.model(past_values=x.unsqueeze(-1), return_dict=True)
                features.append(captured[0].double())  # the first pass's; later passes append too
                later = self._roll_out(x, first)[:, native:].double()
                targets.append((later - first.loc[:, :, 0].double()) / first.scale[:, :, 0].double())
        finally:
            hook.remove()
            self.train(was_training)
        x = torch.cat(features)
        x = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)
        gram = x.T @ x
        gram.diagonal().add_(ridge * float(gram.diagonal().mean()))
        solution = torch.linalg.solve(gram, x.T @ torch.cat(targets))
        dtype = head.weight.dtype
        return solution[:-1].T.to(dtype), solution[-1].to(dtype)

    def config_dict(self) -> dict:
        return self.model.config.to_dict()

    def pruning_spec(self) -> PruningSpec:
        """MLP hidden channels of every mixer, plus the encoder and decoder widths; and every
        patch and feature mixer as a block (each is ``x + f(x)`` as a whole, so it may go whole).

        Adaptive patching reshapes ``[.., P, D]`` into ``[.., P*f, D/f]``, so an encoder width unit
        ``u`` is the same sub-feature in each of the ``F = max f`` chunks of ``D/F`` features:
        channel ``u + k*D/F`` at every level (interleaved). A decoder width unit ``d`` is column
        ``p*Dd + d`` of the head for every patch ``p``. The patch axis is never pruned. Width
        groups are offered only for the plain r2 layout (no self-attention, positional encoding,
        prefix tuning, channel mixing or raw residual): those would need more slices.
        """
        cfg = self.model.config
        groups: list[PruneGroup] = []
        encoder = "model.backbone.encoder.mlp_mixer_encoder"
        enc_layers = _mixer_layers(self.model.backbone.encoder.mlp_mixer_encoder, encoder)
        dec_layers: list[tuple[str, object, int]] = []
        if cfg.use_decoder:
            dec_layers = _mixer_layers(self.model.decoder.decoder_block, "model.decoder.decoder_block")
        blocks: list[str] = []
        for path, layer, _ in enc_layers + dec_layers:
            for mixer in _present_mixers(layer):
                blocks.append(f"{path}.{mixer}")
                mlp = f"{path}.{mixer}.mlp"
                groups.append(
                    PruneGroup(
                        name=f"{mlp}.hidden",
                        kind="mlp_hidden",
                        units=getattr(layer, mixer).mlp.fc1.out_features,
                        slices=(Slice(f"{mlp}.fc1", "out"), Slice(f"{mlp}.fc2", "in")),
                        exact_by_zeroing=True,
                    )
                )
        plain = (
            cfg.use_decoder
            and self.model.decoder.adapter is not None
            and not cfg.self_attn
            and not cfg.use_positional_encoding
            and not cfg.resolution_prefix_tuning
            and not cfg.decoder_raw_residual
            and cfg.mode == cfg.decoder_mode == "common_channel"
            and cfg.categorical_vocab_size_list is None
            and "batch" not in cfg.norm_mlp.lower()
            and self.model.head.base_forecast_block.__class__.__name__ == "Linear"
        )
        if plain:
            enc_factor = max(f for _, _, f in enc_layers)
            groups.append(
                PruneGroup(
                    name="encoder.d_model",
                    kind="width",
                    units=cfg.d_model // enc_factor,
                    slices=(Slice("model.backbone.encoder.patcher", "out"),)
                    + _width_slices(enc_layers)
                    + (Slice("model.decoder.adapter", "in"),),
                    exact_by_zeroing=False,
                    # adaptive patching switches a level off once d_model // factor <= 4
                    min_units=5 if enc_factor > 1 else 1,
                    config_key="d_model",
                    config_scale=enc_factor,
                    attributes=("model.backbone.d_model", "model.backbone.encoder.d_model"),
                )
            )
            dec_factor = max(f for _, _, f in dec_layers)
            groups.append(
                PruneGroup(
                    name="decoder.d_model",
                    kind="width",
                    units=cfg.decoder_d_model // dec_factor,
                    slices=(Slice("model.decoder.adapter", "out"),)
                    + _width_slices(dec_layers)
                    + (Slice("model.head.base_forecast_block", "in"),),
                    exact_by_zeroing=False,
                    min_units=5 if dec_factor > 1 else 1,
                    config_key="decoder_d_model",
                    config_scale=dec_factor,
                )
            )
        return PruningSpec(groups=tuple(groups), blocks=tuple(blocks))


def _mixer_layers(block, path: str) -> list[tuple[str, object, int]]:
    """``(path, TinyTimeMixerLayer, adaptive patch factor)`` for every layer of a mixer block."""
    layers = []
    for i, mixer in enumerate(block.mixers):
        if hasattr(mixer, "mixer_layers"):
            for j, layer in enumerate(mixer.mixer_layers):
                layers.append((f"{path}.mixers.{i}.mixer_layers.{j}", layer, mixer.adaptive_patch_factor))
        else:
            layers.append((f"{path}.mixers.{i}", mixer, 1))
    return layers


def _present_mixers(layer) -> tuple[str, ...]:
    """The residual mixers of a TTM layer still present: each (patch mixing, feature mixing) is
    ``x + f(x)`` as a whole, so depth pruning replaces a whole one by an identity."""
    return tuple(
        name
        for name in ("patch_mixer", "feature_mixer")
        if hasattr(layer, name) and not isinstance(getattr(layer, name), torch.nn.Identity)
    )


def _width_slices(layers: list[tuple[str, object, int]]) -> tuple[Slice, ...]:
    """Every slice of a mixer block that lies on the feature (width) axis."""
    slices: list[Slice] = []
    for path, layer, _ in layers:
        present = _present_mixers(layer)
        if "patch_mixer" in present:
            slices.append(Slice(f"{path}.patch_mixer.norm.norm", "out"))
        if "feature_mixer" not in present:
            continue
        fm = f"{path}.feature_mixer"
        slices += [
            Slice(f"{fm}.norm.norm", "out"),
            Slice(f"{fm}.mlp.fc1", "in"),
            Slice(f"{fm}.mlp.fc2", "out"),
        ]
        if layer.feature_mixer.gated_attn:
            slices += [
                Slice(f"{fm}.gating_block.attn_layer", "in"),
                Slice(f"{fm}.gating_block.attn_layer", "out"),
            ]
    return tuple(slices)


class TTMAdapter(ModelAdapter):
    family = "ttm"
    default_model = DEFAULT_MODEL

    def load(
        self,
        source: str,
        horizon: int | None = None,
        context_length: int | None = None,
        revision: str | None = None,
    ) -> TTMForecast:
        try:
            model = TinyTimeMixerForPrediction.from_pretrained(source, revision=revision)
        except OSError as exc:
            raise checkpoint_error("TinyTimeMixer", source, exc) from None
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
        if context_length is not None and context_length != cfg.context_length:
            raise ModelError(
                f"{source}: context length {context_length} differs from the checkpoint's "
                f"{cfg.context_length}; TTM checkpoints have a fixed context length"
            )
        model.eval()
        return TTMForecast(model, cfg.context_length, horizon)
