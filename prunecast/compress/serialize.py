"""Save a (pruned or fine-tuned) forecast module to a directory and load it back, without pickle.

A prunecast model directory holds:

- ``prunecast.json``: the marker: format version, family, context length, horizon, source model
  and the HF revision it was loaded from (null for the default branch), free metadata, and the
  *architecture*: the shape of every Linear and LayerNorm, and every identity (where depth pruning
  removed a residual block). Pruning leaves per-layer widths (MLP hidden channels) and missing
  blocks that a family config cannot express, so the module is rebuilt from its config and then
  every layer whose recorded shape or type differs is replaced.
- ``config.json``: the family's own config (with pruned global widths such as ``d_model``).
- ``model.safetensors``: the weights, loaded strictly against the rebuilt module.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from prunecast.models import ADAPTERS, ForecastModule, ModelError, load_pretrained

FORMAT = "prunecast-model"
VERSION = 1
MARKER = "prunecast.json"
CONFIG = "config.json"
WEIGHTS = "model.safetensors"


def is_saved_model(directory: str | Path) -> bool:
    """Whether ``directory`` is a prunecast model directory (has the marker file)."""
    return (Path(directory) / MARKER).is_file()


def architecture(module: nn.Module) -> dict[str, dict]:
    """The shape of every Linear and LayerNorm, and every identity (where a block was), by dotted
    path: what a config alone may not say."""
    layers: dict[str, dict] = {}
    for name, sub in module.named_modules():
        if isinstance(sub, nn.Linear):
            layers[name] = {
                "type": "Linear",
                "in_features": sub.in_features,
                "out_features": sub.out_features,
                "bias": sub.bias is not None,
            }
        elif isinstance(sub, nn.LayerNorm):
            layers[name] = {
                "type": "LayerNorm",
                "normalized_shape": list(sub.normalized_shape),
                "eps": sub.eps,
                "elementwise_affine": sub.elementwise_affine,
                "bias": sub.bias is not None,
            }
        elif isinstance(sub, nn.Identity):
            layers[name] = {"type": "Identity"}
    return layers


def save_model(module: ForecastModule, directory: str | Path, metadata: dict | None = None) -> Path:
    """Write ``module`` to ``directory`` (created if needed): marker, config and safetensors weights."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = module.config_dict()
    marker = {
        "format": FORMAT,
        "version": VERSION,
        "family": module.family,
        "context_length": module.context_length,
        "horizon": module.horizon,
        "source": config.get("_name_or_path") or None,
        "revision": module.revision,
        "metadata": metadata or {},
        "architecture": architecture(module),
    }
    state = {k: v.detach().contiguous().clone() for k, v in module.state_dict().items()}
    save_file(state, str(directory / WEIGHTS), metadata={"format": FORMAT})
    (directory / CONFIG).write_text(json.dumps(config, indent=2, default=str))
    (directory / MARKER).write_text(json.dumps(marker, indent=2))
    return directory


def read_marker(directory: str | Path) -> dict:
    """The parsed ``prunecast.json`` of a model directory, checked for format and version."""
    path = Path(directory) / MARKER
    marker = _read_json(path)
    if marker.get("format") != FORMAT:
        raise ModelError(f"{path}: not a prunecast model marker (format {marker.get('format')!r})")
    if marker.get("version") != VERSION:
        raise ModelError(f"{path}: format version {marker.get('version')!r}; this prunecast reads {VERSION}")
    for key in ("family", "context_length", "horizon", "architecture"):
        if key not in marker:
            raise ModelError(f"{path}: missing {key!r}")
    return marker


def load_saved(directory: str | Path, horizon: int | None = None) -> ForecastModule:
    """Rebuild a module saved by :func:`save_model`; ``horizon`` may shorten the saved one."""
    directory = Path(directory)
    marker = read_marker(directory)
    family = marker["family"]
    if family not in ADAPTERS:
        raise ModelError(f"{directory / MARKER}: unknown model family {family!r}; known: {sorted(ADAPTERS)}")
    config = _read_json(directory / CONFIG)
    saved_h = int(marker["horizon"])
    if horizon is not None and not 1 <= horizon <= saved_h:
        raise ModelError(f"{directory}: horizon {horizon} is not within the saved model's 1..{saved_h}")
    try:
        module = ADAPTERS[family].from_config(config, int(marker["context_length"]), saved_h)
    except (ValueError, TypeError, KeyError) as exc:
        raise ModelError(f"{directory / CONFIG}: cannot build a {family} model from it ({exc})") from None
    _apply_architecture(module, marker["architecture"], directory)
    weights = directory / WEIGHTS
    if not weights.is_file():
        raise ModelError(f"{directory}: no {WEIGHTS}")
    try:
        state = load_file(str(weights))
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types on corrupt files
        raise ModelError(f"{weights}: cannot be read as safetensors ({exc})") from None
    _load_state(module, state, weights)
    module.horizon = saved_h if horizon is None else horizon
    module.revision = marker.get("revision")
    module.eval()
    return module


def _apply_architecture(module: nn.Module, layers: dict[str, dict], directory: Path) -> None:
    """Replace every layer whose shape differs from the recorded one (or that the config omits)."""
    for name, spec in layers.items():
        parent_name, _, attr = name.rpartition(".")
        try:
            parent = module.get_submodule(parent_name)
        except AttributeError:
            raise ModelError(
                f"{directory / MARKER}: layer {name!r} is not in a {module.family} model"
            ) from None
        current = getattr(parent, attr, None)
        wanted = _build_layer(spec, name, directory)
        if current is None or _layer_shape(current) != _layer_shape(wanted):
            setattr(parent, attr, wanted)


def _build_layer(spec: dict, name: str, directory: Path) -> nn.Module:
    try:
        if spec["type"] == "Linear":
            return nn.Linear(int(spec["in_features"]), int(spec["out_features"]), bias=bool(spec["bias"]))
        if spec["type"] == "Identity":
            return nn.Identity()
        if spec["type"] == "LayerNorm":
            return nn.LayerNorm(
                tuple(spec["normalized_shape"]),
                eps=float(spec["eps"]),
                elementwise_affine=bool(spec["elementwise_affine"]),
                bias=bool(spec["bias"]),
            )
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise ModelError(f"{directory / MARKER}: layer {name!r} has a bad shape record ({exc})") from None
    raise ModelError(f"{directory / MARKER}: layer {name!r} has unknown type {spec.get('type')!r}")


def _layer_shape(layer: nn.Module) -> tuple:
    if isinstance(layer, nn.Linear):
        return ("Linear", layer.in_features, layer.out_features, layer.bias is not None)
    if isinstance(layer, nn.LayerNorm):
        return ("LayerNorm", tuple(layer.normalized_shape), layer.elementwise_affine, layer.bias is not None)
    return (type(layer).__name__,)


def _load_state(module: nn.Module, state: dict[str, torch.Tensor], weights: Path) -> None:
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [
        f"{k} {tuple(state[k].shape)} (model {tuple(v.shape)})"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    problems = []
    if missing:
        problems.append(f"missing {missing[:3]}{' ...' if len(missing) > 3 else ''}")
    if unexpected:
        problems.append(f"unexpected {unexpected[:3]}{' ...' if len(unexpected) > 3 else ''}")
    if wrong:
        problems.append(f"shape mismatch {wrong[:3]}{' ...' if len(wrong) > 3 else ''}")
    if problems:
        raise ModelError(f"{weights}: weights do not match the saved architecture: {'; '.join(problems)}")
    module.load_state_dict(state, strict=True)


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise ModelError(f"{path.parent}: no {path.name}; not a prunecast model directory")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ModelError(f"{path}: expected a JSON object")
    return data


def load_model(
    source: str | Path,
    horizon: int | None = None,
    context_length: int | None = None,
    family: str | None = None,
    revision: str | None = None,
) -> ForecastModule:
    """Load any model prunecast handles: a prunecast model directory (from :func:`save_model`), a
    Hugging Face id (of ``revision``: branch, tag or commit), or a local Hugging Face model directory."""
    if is_saved_model(source):
        if revision is not None:
            raise ModelError(
                f"{source}: revision {revision!r} applies to a Hugging Face id, not a saved model"
            )
        module = load_saved(source, horizon=horizon)
        if context_length is not None and context_length != module.context_length:
            raise ModelError(
                f"{source}: context length {context_length} differs from the saved model's {module.context_length}"
            )
        if family is not None and family != module.family:
            raise ModelError(f"{source}: a saved {module.family} model, not {family}")
        return module
    return load_pretrained(
        str(source), horizon=horizon, context_length=context_length, family=family, revision=revision
    )
