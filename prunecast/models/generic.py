"""Bring your own model: any ``nn.Module`` mapping ``context [B, L] -> forecast [B, H]``.

:func:`wrap` makes it a :class:`~prunecast.models.base.ForecastModule` that prune, finetune and
export accept like any family's. It declares ``traced_coupling``: it writes no pruning spec,
compress traces the coupling itself (``prunecast.compress.discover``) and keeps only groups that
remove exactly. This module knows nothing of how.

Saving without pickle: the directory records the user's constructor as ``"package.module:Class"``
with JSON keyword arguments (given to :func:`wrap`, or ``{}``), and compress's saved architecture
records the pruned layer widths. Loading imports that module, builds the class, and resizes the
layers; a class defined in ``__main__`` or inside a function cannot be found again, so such a model
can be pruned and fine-tuned in Python but not saved or exported: define it in an importable module.
Loading a generic model runs the named module's code, as importing it would: load directories
you trust.
"""

from __future__ import annotations

import importlib
import json

import torch
from torch import nn

from prunecast.models.base import ForecastModule, ModelAdapter, ModelError

FAMILY = "generic"


class WrappedForecast(ForecastModule):
    """A user's forecaster, called as is: ``self.model(context)`` must return ``[B, H]``."""

    family = FAMILY
    traced_coupling = True

    def __init__(
        self,
        model: nn.Module,
        context_length: int,
        horizon: int,
        name: str | None = None,
        constructor: str | None = None,
        kwargs: dict | None = None,
    ):
        super().__init__(model, context_length, horizon)
        self.name = name or type(model).__name__
        self.constructor = constructor
        self.kwargs = dict(kwargs or {})

    def forward(self, context: torch.Tensor) -> torch.Tensor:
        return self.model(context)

    def config_dict(self) -> dict:
        if self.constructor is None:
            raise ModelError(
                f"generic model {self.name!r}: its class {type(self.model).__qualname__} cannot be imported "
                "by name (defined in __main__ or a function), so it cannot be saved or exported; define it in "
                "a module and pass wrap(..., constructor='package.module:Class', kwargs={...})"
            )
        return {"name": self.name, "constructor": self.constructor, "kwargs": self.kwargs}


def wrap(
    module: nn.Module,
    context_length: int,
    horizon: int,
    name: str | None = None,
    constructor: str | None = None,
    kwargs: dict | None = None,
) -> WrappedForecast:
    """``module`` as a forecast module, checked to map ``[2, context_length]`` to ``[2, horizon]``.

    ``constructor`` (``"package.module:Class"``, default: the module's own class when importable)
    and its JSON ``kwargs`` are what :func:`~prunecast.compress.save_model` records to rebuild it.
    """
    if context_length < 1 or horizon < 1:
        raise ModelError(f"context_length and horizon must be positive, got {context_length}, {horizon}")
    if kwargs is not None:
        try:
            json.dumps(kwargs)
        except TypeError as exc:
            raise ModelError(f"wrap kwargs must be JSON data (they rebuild the model): {exc}") from None
    if constructor is None:
        cls = type(module)
        if cls.__module__ != "__main__" and "<locals>" not in cls.__qualname__:
            constructor = f"{cls.__module__}:{cls.__qualname__}"
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            out = module(torch.randn(2, context_length))
    except Exception as exc:  # noqa: BLE001 - the user's model; say what it was given
        raise ModelError(f"wrap: the model fails on a [2, {context_length}] context: {exc}") from None
    finally:
        module.train(was_training)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, horizon):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ModelError(f"wrap: the model maps [2, {context_length}] to {shape}, not [2, {horizon}]")
    wrapped = WrappedForecast(module, context_length, horizon, name, constructor, kwargs)
    wrapped.training = module.training  # as the user left it, so train()/eval() round-trip
    return wrapped


def build(constructor: str, kwargs: dict) -> nn.Module:
    """``Class(**kwargs)`` for ``constructor`` = ``"package.module:Class"``; only nn.Module classes."""
    path, _, qualname = constructor.partition(":")
    if not path or not qualname:
        raise ModelError(f"constructor {constructor!r} is not 'package.module:Class'")
    try:
        obj = importlib.import_module(path)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise ModelError(f"cannot import the model class {constructor!r}: {exc}") from None
    if not (isinstance(obj, type) and issubclass(obj, nn.Module)):
        raise ModelError(f"{constructor!r} is not an nn.Module class")
    try:
        return obj(**kwargs)
    except TypeError as exc:
        raise ModelError(f"cannot build {constructor} with kwargs {kwargs}: {exc}") from None


class GenericAdapter(ModelAdapter):
    """Rebuilds saved generic models; there is no checkpoint format to load them from."""

    family = FAMILY
    default_model = ""

    def load(
        self,
        source: str,
        horizon: int | None = None,
        context_length: int | None = None,
        revision: str | None = None,
    ) -> ForecastModule:
        raise ModelError(
            f"{source}: generic models are made in Python with prunecast.models.wrap(module, L, H); "
            "load a directory saved by prunecast.compress.save_model"
        )

    def from_config(self, config: dict, context_length: int, horizon: int) -> WrappedForecast:
        for key in ("constructor", "kwargs"):
            if key not in config:
                raise ModelError(f"generic model config has no {key!r}")
        model = build(str(config["constructor"]), dict(config["kwargs"]))
        return WrappedForecast(
            model, context_length, horizon, config.get("name"), config["constructor"], config["kwargs"]
        )

    def recognises(self, config: dict) -> bool:
        return False
