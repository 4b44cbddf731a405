"""Serve forecasts from an exported artifact, in-process (:class:`Forecaster`) or over HTTP.

Importing this package imports neither torch nor aiohttp: torch loads only when the torch
backend is chosen, and the HTTP server lives in :mod:`prunecast.runtime.server`.
"""

from prunecast.runtime.backends import BACKENDS, Backend, BackendError, BackendOptions
from prunecast.runtime.batcher import BatcherClosed, BatcherConfig, MicroBatcher, Overloaded, RequestTimeout
from prunecast.runtime.forecaster import Forecaster
from prunecast.runtime.validation import InputError, prepare_batch

__all__ = [
    "BACKENDS",
    "Backend",
    "BackendError",
    "BackendOptions",
    "BatcherClosed",
    "BatcherConfig",
    "Forecaster",
    "InputError",
    "MicroBatcher",
    "Overloaded",
    "RequestTimeout",
    "prepare_batch",
]
