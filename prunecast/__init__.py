"""prunecast: prune-then-finetune time-series foundation models into small, fast forecasters.

Subpackages: ``models`` (one adapter per family), ``data`` (benchmarks, splits, windows),
``compress`` (pruning and fine-tuning), ``export`` (ONNX, TensorRT, Triton), ``runtime``
(serving). This module imports none of them, so ``import prunecast.runtime`` stays torch-free.
"""

__version__ = "0.1.0"
