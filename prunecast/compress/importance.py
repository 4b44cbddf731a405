"""Loss-guided importance of pruning units (Zhao et al., NeurIPS 2025), as a Torch-Pruning importance.

Give every unit a multiplicative mask ``m`` (at 1) over all its coupled weights and biases. The
first-order change of the training loss when ``m`` goes to 0 is ``s = -dL/dm * m``, and since
``dL/dm = sum(w * dL/dw)`` over those weights this needs only ordinary gradients: ``s = -sum(w *
g)``. The second-order variant uses per-sample mask gradients ``g_i`` and an empirical-Fisher
curvature: ``s = -(mean(g_i) - mean(g_i**2) / 2)`` (means over every rank's samples under
torchrun). Units are ranked by ``|s|``, a change of loss, which is comparable across groups and
layers: that is what makes one global ranking fair.

Both read the coupled slices from a Torch-Pruning group built by
:func:`prunecast.compress.groups.tp_group`, and return per-unit scores ``[units]``.
"""

from __future__ import annotations

import torch
import torch_pruning as tp
from torch import nn

from prunecast.compress import distributed


def _coupled_params(dep) -> list[tuple[nn.Parameter, str, int]]:
    """``(parameter, axis, dim)`` of a dependency's layer that a unit's channels index into."""
    layer = dep.target.module
    if isinstance(layer, nn.LayerNorm):
        params = [layer.weight, layer.bias] if layer.elementwise_affine else []
        return [(p, "out", 0) for p in params if p is not None]
    if isinstance(layer, nn.Embedding):  # [rows, embedding_dim]: units index the columns
        return [(layer.weight, "out", 1)]
    if dep.handler is tp.prune_linear_out_channels:
        return [(p, "out", 0) for p in (layer.weight, layer.bias) if p is not None]
    return [(layer.weight, "in", 1)]


def mask_gradients(group: tp.Group, units: int, grads: dict[nn.Parameter, torch.Tensor]) -> torch.Tensor:
    """``dL/dm`` for every unit: ``sum(w * g)`` over its coupled weights, for gradients ``grads``.

    ``grads`` maps each parameter to a gradient of the same shape, or with a leading sample axis
    (per-sample gradients), in which case the result is ``[samples, units]``.
    """
    out = None
    for item in group:
        dep, idxs = item.dep, item.idxs
        root = torch.as_tensor(item.root_idxs)
        for param, _, dim in _coupled_params(dep):
            grad = grads.get(param)
            if grad is None:
                continue
            per_sample = grad.dim() == param.dim() + 1
            wg = param.detach() * grad  # broadcasts over a leading sample axis
            channel_dim = dim + (1 if per_sample else 0)
            # sum over every axis but the channel (and sample) axes, then pick the unit's channels
            keep = {channel_dim, 0} if per_sample else {channel_dim}
            reduce = [d for d in range(wg.dim()) if d not in keep]
            per_channel = wg.sum(dim=reduce) if reduce else wg
            picked = per_channel.index_select(-1, torch.as_tensor(idxs))
            if out is None:
                shape = (picked.shape[0], units) if per_sample else (units,)
                out = torch.zeros(shape, dtype=torch.float64)
            out.index_add_(out.dim() - 1, root, picked.to(torch.float64))
    if out is None:  # the loss does not reach these weights (an output the forecast never reads)
        return torch.zeros(units, dtype=torch.float64)
    return out


class LossGuidedImportance(tp.importance.Importance):
    """``|s|`` per unit from the gradients left in ``.grad`` (first order) or per-sample gradients.

    Call :meth:`signed` for ``s`` itself. For the second order, pass per-sample gradients (a leading
    sample axis) as ``per_sample_grads``; the first order reads ``param.grad``.
    """

    def __init__(self, second_order: bool = False):
        self.second_order = second_order
        self.per_sample_grads: dict[nn.Parameter, torch.Tensor] | None = None

    def signed(self, group: tp.Group, units: int) -> torch.Tensor:
        if self.second_order:
            if self.per_sample_grads is None:
                raise ValueError("second-order importance needs per-sample gradients")
            g = mask_gradients(group, units, self.per_sample_grads)
            # under torchrun each rank holds its share of the samples: sum, then average the whole
            sums = distributed.all_reduce_tensor(torch.stack([g.sum(0), g.square().sum(0)]))
            (n,) = distributed.all_reduce_sum(g.shape[0])
            return -(sums[0] / n - sums[1] / n / 2)
        grads = {}
        for item in group:
            for param, _, _ in _coupled_params(item.dep):
                if param.grad is not None:
                    grads[param] = param.grad
        return -mask_gradients(group, units, grads)

    @torch.no_grad()
    def __call__(self, group: tp.Group) -> torch.Tensor:
        units = max(max(item.root_idxs) for item in group) + 1
        return self.signed(group, units).abs()
