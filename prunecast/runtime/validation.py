"""Turn what a caller hands over (an array, a list of series, parsed JSON) into one model batch.

Every problem is a :class:`ValueError` that names the offending series by index, so a
caller with hundreds of series knows which one to fix; the slow per-series checks run only
once the fast whole-batch check has found something wrong.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


class InputError(ValueError):
    """A batch of series cannot be forecast as given; the message names the series and the problem."""


def prepare_batch(series, context_length: int, pad: bool = False) -> np.ndarray:
    """The last ``context_length`` points of every series, as a C-contiguous ``[N, L]`` float32 batch.

    ``series`` is a 2-D array ``[N, T]`` or a sequence of 1-D series (lists or arrays), each
    of length ``T >= context_length``. A shorter series is an error unless ``pad``, which
    left-pads it with its first value (an edge pad: the model sees a flat start rather than
    a level shift). Missing values (NaN, or ``None`` from a JSON ``null``) and infinities in
    the points used are refused: the exported models take no observation mask. A float32
    ``[N, L]`` C-contiguous array is used as is, without a copy.
    """
    if isinstance(series, np.ndarray):
        return _from_array(series, context_length, pad)
    if isinstance(series, (str, bytes)) or not isinstance(series, Sequence):
        raise InputError(f"series must be a 2-D array or a list of 1-D series, got {type(series).__name__}")
    if len(series) == 0:
        raise InputError("no series given: expected at least one")
    batch = np.empty((len(series), context_length), dtype=np.float32)
    lengths = np.empty(len(series), dtype=np.int64)
    with np.errstate(over="ignore"):  # beyond float32 range becomes inf, refused below by name
        for i, one in enumerate(series):
            values = _as_1d(one, i)
            lengths[i] = values.size
            batch[i] = _fit(values, i, context_length, pad)
    _check_finite(batch, lengths)
    return batch


def _from_array(array: np.ndarray, context_length: int, pad: bool) -> np.ndarray:
    if array.dtype == object:
        # a ragged or mixed array: check it series by series
        return prepare_batch(list(array), context_length, pad)
    if array.ndim != 2:
        raise InputError(f"series must be 2-D [N, T], got an array of shape {tuple(array.shape)}")
    if array.shape[0] == 0:
        raise InputError("no series given: the array has 0 rows")
    if array.dtype.kind not in "iuf":  # signed, unsigned, floating (a dtype test cheap per request)
        raise InputError(f"series must hold real numbers, got an array of dtype {array.dtype}")
    length = array.shape[1]
    if length < context_length:
        if not pad:
            raise _too_short(0, length, context_length)
        return prepare_batch(list(array), context_length, pad)
    tail = array if length == context_length else array[:, length - context_length :]
    if tail.dtype != np.float32 or not tail.flags.c_contiguous:
        with np.errstate(over="ignore"):
            tail = np.ascontiguousarray(tail, dtype=np.float32)
    _check_finite(tail, length)
    return tail


def _as_1d(one, index: int) -> np.ndarray:
    """One series as a float64 vector (None becomes NaN), or an error naming it."""
    if isinstance(one, (str, bytes, dict)):
        raise InputError(f"series {index}: expected a list of numbers, got {type(one).__name__}")
    try:
        values = np.asarray(one, dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        raise InputError(f"series {index}: contains a value that is not a number") from None
    if values.ndim != 1:
        raise InputError(f"series {index}: expected a 1-D series, got shape {tuple(values.shape)}")
    if values.size == 0:
        raise InputError(f"series {index}: is empty")
    return values


def _fit(values: np.ndarray, index: int, context_length: int, pad: bool) -> np.ndarray:
    """The last ``context_length`` points, left-padded with the first value when asked."""
    if values.size >= context_length:
        return values[values.size - context_length :]
    if not pad:
        raise _too_short(index, values.size, context_length)
    return np.concatenate([np.full(context_length - values.size, values[0]), values])


def _too_short(index: int, length: int, context_length: int) -> InputError:
    return InputError(
        f"series {index}: has {length} points, fewer than the model's context length {context_length} "
        "(set pad to true to left-pad it with its first value)"
    )


def _check_finite(batch: np.ndarray, lengths: np.ndarray | int) -> None:
    """Refuse NaN/inf in the batch, naming the series and its position in the series as given
    (``lengths``: each series' length as given, or one length for all)."""
    # NaN and inf propagate into the sum, which float64 keeps from overflowing: one pass, no
    # temporary; math.isfinite on the Python float, as a server calls this once per request
    if math.isfinite(batch.sum(dtype=np.float64)):
        return
    context_length = batch.shape[1]
    bad_row = int(np.argmax(~np.isfinite(batch).all(axis=1)))
    row = batch[bad_row]
    col = int(np.argmax(~np.isfinite(row)))
    length = lengths if isinstance(lengths, int) else int(lengths[bad_row])
    position = max(0, length - context_length + col)
    if np.isnan(row[col]):
        raise InputError(
            f"series {bad_row}: missing value (NaN or null) at position {position}; this model takes no "
            "missing values: fill them before forecasting"
        )
    raise InputError(f"series {bad_row}: value at position {position} is infinite or beyond float32 range")
