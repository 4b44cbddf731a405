"""Fill the missing values of many series at once, laid end to end in one flat array.

Each series is a segment ``values[start : start + length]`` on its regular time grid; NaN marks
a missing value (a NaN cell, or a grid timestamp the input had no row for). Every policy works
on the whole flat array with cumulative maxima/minima, so a panel of 10,000 series costs a few
array passes, not 10,000 Python calls. Every segment must hold at least one observed value.
"""

from __future__ import annotations

import numpy as np

FILLERS = ("ffill", "interpolate", "zero")


def fill_segments(values: np.ndarray, starts: np.ndarray, lengths: np.ndarray, policy: str) -> np.ndarray:
    """``values`` with every NaN filled by ``policy`` within its own segment (a new array).

    ``ffill`` carries the last observed value forward; ``interpolate`` draws a straight line in
    time between the observed neighbours; ``zero`` writes 0. A segment's leading missing values
    (no earlier observation) take its first observed value under ``ffill`` and ``interpolate``,
    and its trailing ones its last under ``interpolate``, the same edge rule as ``pad``.
    """
    if policy not in FILLERS:
        raise ValueError(f"fill policy must be one of {FILLERS}, got {policy!r}")
    missing = np.isnan(values)
    out = values.copy()
    if not missing.any():
        return out
    if policy == "zero":
        out[missing] = 0.0
        return out
    n = values.size
    index = np.arange(n)
    seg_start = np.repeat(starts, lengths)
    seg_end = seg_start + np.repeat(lengths, lengths)
    prev = np.where(missing, -1, index)
    np.maximum.accumulate(prev, out=prev)
    nxt = np.where(missing, n, index)
    nxt = np.minimum.accumulate(nxt[::-1])[::-1]
    has_prev = prev >= seg_start
    has_next = nxt < seg_end
    prev_or_next = np.where(has_prev, prev, nxt)
    if policy == "ffill":
        out[missing] = values[prev_or_next[missing]]
        return out
    both = missing & has_prev & has_next
    one = missing & ~both
    out[one] = values[prev_or_next[one]]
    p, q, i = prev[both], nxt[both], index[both]
    out[both] = values[p] + (values[q] - values[p]) * ((i - p) / (q - p))
    return out
