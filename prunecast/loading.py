"""One entry point to load any model prunecast handles, pretrained or produced by prunecast."""

from __future__ import annotations

from prunecast.models import ForecastModule, load_pretrained


def load_model(
    source: str, horizon: int | None = None, context_length: int | None = None, family: str | None = None
) -> ForecastModule:
    """Load ``source``: a Hugging Face id or a local Hugging Face model directory."""
    return load_pretrained(source, horizon=horizon, context_length=context_length, family=family)
