"""Evaluate: test-set MSE / MAE of a forecast module on scaled, channel-independent windows."""

from prunecast.evaluate.metrics import Metrics, evaluate

__all__ = ["Metrics", "evaluate"]
