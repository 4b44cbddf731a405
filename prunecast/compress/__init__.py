"""Compress: loss-guided structured pruning, fine-tuning, and saving the result.

One verb per stage, each with a config dataclass::

    report = prune(module, data.train, data.val, PruneConfig(budget=0.5))   # in place
    finetune(module, data.train, data.val, FinetuneConfig())                 # best val weights
    save_model(module, "out/pruned")                                         # load_model() reads it

What may be pruned comes from the model's own plain-data spec
(:meth:`~prunecast.models.base.ForecastModule.pruning_spec`): a family adapter lists
:class:`~prunecast.models.base.PruneGroup` s, each a set of units (MLP hidden channels, attention
heads, a residual width) and the :class:`~prunecast.models.base.Slice` s of weights every unit
owns (``module`` path, ``out``/``in`` axis, ``interleaved``/``blocked`` layout), with the config
field that records the width. A new family (Chronos-Bolt, TimesFM) only writes that spec; the
Torch-Pruning groups, scores and removal here are generic.
"""

from prunecast.compress.cost import count_macs, count_params
from prunecast.compress.finetune import FinetuneConfig, FinetuneReport, finetune, grow_head
from prunecast.compress.prune import LayerWidth, PruneConfig, PruneReport, PruneStep, prune
from prunecast.compress.serialize import is_saved_model, load_model, load_saved, save_model

__all__ = [
    "FinetuneConfig",
    "FinetuneReport",
    "LayerWidth",
    "PruneConfig",
    "PruneReport",
    "PruneStep",
    "count_macs",
    "count_params",
    "finetune",
    "grow_head",
    "is_saved_model",
    "load_model",
    "load_saved",
    "prune",
    "save_model",
]
