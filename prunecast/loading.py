"""One entry point to load any model prunecast handles, pretrained or produced by prunecast."""

from __future__ import annotations

from prunecast.models import ForecastModule, ModelError, load_pretrained


def load_model(
    source: str, horizon: int | None = None, context_length: int | None = None, family: str | None = None
) -> ForecastModule:
    """Load ``source``: a prunecast model directory (from ``save_model``), a Hugging Face id, or a
    local Hugging Face model directory."""
    from prunecast.compress.serialize import is_saved_model, load_saved

    if is_saved_model(source):
        module = load_saved(source, horizon=horizon)
        if context_length is not None and context_length != module.context_length:
            raise ModelError(
                f"{source}: context length {context_length} differs from the saved model's {module.context_length}"
            )
        if family is not None and family != module.family:
            raise ModelError(f"{source}: a saved {module.family} model, not {family}")
        return module
    return load_pretrained(source, horizon=horizon, context_length=context_length, family=family)
