"""Test-set accuracy of a forecast module on scaled, channel-independent windows."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch

from prunecast.common.progress import progress
from prunecast.data.windows import Windows
from prunecast.models.base import ForecastModule


@dataclass(frozen=True)
class Metrics:
    """Errors averaged over every window, step and channel."""

    mse: float
    mae: float
    windows: int

    def to_dict(self) -> dict:
        return asdict(self)


@torch.inference_mode()
def evaluate(
    module: ForecastModule,
    windows: Windows,
    batch_size: int = 512,
    limit: int | None = None,
    show_progress: bool | None = None,
) -> Metrics:
    """MSE and MAE of ``module`` over ``windows`` (first ``limit`` windows if given)."""
    module.eval()
    return evaluate_predict(
        lambda context: module(torch.from_numpy(context)).numpy(), windows, batch_size, limit, show_progress
    )


def evaluate_predict(
    predict: Callable[[np.ndarray], np.ndarray],
    windows: Windows,
    batch_size: int = 512,
    limit: int | None = None,
    show_progress: bool | None = None,
) -> Metrics:
    """MSE and MAE of any ``[B, L] -> [B, H]`` forecast function (a runtime ``Forecaster``'s
    ``predict_batch``, say) over ``windows``, computed as :func:`evaluate` computes them."""
    count = len(windows) if limit is None else min(limit, len(windows))
    sq_err = abs_err = 0.0
    n_values = 0
    batches = windows.batches(batch_size, limit=count)
    for context, target in progress(batches, -(-count // batch_size), "evaluate", show_progress):
        diff = predict(context).astype(np.float64) - target
        sq_err += float(np.square(diff).sum())
        abs_err += float(np.abs(diff).sum())
        n_values += diff.size
    return Metrics(mse=sq_err / n_values, mae=abs_err / n_values, windows=count)
