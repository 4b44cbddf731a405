"""One adapter per TSFM family, and :func:`load_pretrained` to pick the right one."""

from __future__ import annotations

import json
from pathlib import Path

from prunecast.common.defaults import DEFAULT_MODEL
from prunecast.models.base import ForecastModule, ModelAdapter, ModelError
from prunecast.models.chronos_bolt import ChronosBoltAdapter
from prunecast.models.generic import GenericAdapter, WrappedForecast, wrap
from prunecast.models.patchtst import PatchTSMixerAdapter, PatchTSTAdapter
from prunecast.models.timesfm import TimesFMAdapter
from prunecast.models.ttm import TTMAdapter

ADAPTERS: dict[str, ModelAdapter] = {
    a.family: a
    for a in (
        TTMAdapter(),
        ChronosBoltAdapter(),
        TimesFMAdapter(),
        PatchTSTAdapter(),
        PatchTSMixerAdapter(),
        GenericAdapter(),
    )
}


def adapter_for(source: str, family: str | None = None, revision: str | None = None) -> ModelAdapter:
    """The adapter for ``source``: named by ``family``, else read from its ``config.json`` (of
    ``revision``, for an HF id)."""
    if family is not None:
        if family not in ADAPTERS:
            raise ModelError(f"unknown model family {family!r}; known: {sorted(ADAPTERS)}")
        return ADAPTERS[family]
    config = _read_config(source, revision)
    if config is not None:
        for adapter in ADAPTERS.values():
            if adapter.recognises(config):
                return adapter
        raise ModelError(
            f"{source}: config.json is of no known family (model_type {config.get('model_type')!r})"
        )
    raise ModelError(
        f"cannot read config.json of {source!r}: not a local directory, and not on the Hugging Face hub or in "
        "its cache (offline? set HF_HUB_CACHE and HF_HUB_OFFLINE=1, or pass a local directory)"
    )


def load_pretrained(
    source: str,
    horizon: int | None = None,
    context_length: int | None = None,
    family: str | None = None,
    revision: str | None = None,
) -> ForecastModule:
    """Load a pretrained checkpoint (HF id or local HF directory) as a forecast module.

    ``revision`` (an HF branch, tag or commit; TTM r2 keeps its other context/horizon pairs on
    branches such as ``512-192-r2``) applies to HF ids only: a local directory has one version.
    """
    if revision is not None and Path(source).is_dir():
        raise ModelError(
            f"{source}: revision {revision!r} applies to a Hugging Face id, not to a local directory"
        )
    adapter = adapter_for(source, family, revision)
    module = adapter.load(source, horizon=horizon, context_length=context_length, revision=revision)
    module.revision = revision
    return module


def _read_config(source: str, revision: str | None = None) -> dict | None:
    """``config.json`` of a local directory or a cached HF id, or None when it cannot be found offline."""
    path = Path(source)
    if path.is_dir():
        cfg = path / "config.json"
        if not cfg.exists():
            raise ModelError(f"{path}: no config.json; not a model directory")
        return json.loads(cfg.read_text())
    try:
        from huggingface_hub import hf_hub_download

        return json.loads(Path(hf_hub_download(source, "config.json", revision=revision)).read_text())
    except Exception:  # noqa: BLE001 - unknown id, or offline without a cached copy
        return None


__all__ = [
    "ADAPTERS",
    "DEFAULT_MODEL",
    "ForecastModule",
    "ModelAdapter",
    "ModelError",
    "WrappedForecast",
    "adapter_for",
    "load_pretrained",
    "wrap",
]
