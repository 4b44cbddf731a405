"""prunecast: prune-then-finetune time-series foundation models into small, fast forecasters.

Subpackages, one per stage: ``models`` (one adapter per family), ``data`` (benchmarks, splits,
windows), ``compress`` (pruning, fine-tuning, save/load), ``evaluate`` (test metrics), ``export``
(ONNX, TensorRT, Triton), ``runtime`` (serving), ``bench`` (latency), ``pipeline`` (``prunecast
run`` and its report), ``cli``; ``common`` holds the torch-free defaults and progress bars. This
module imports none of them, so ``import prunecast.runtime`` stays torch-free.
"""

__version__ = "0.1.0"
