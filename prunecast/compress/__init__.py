"""Compress: loss-guided structured pruning, fine-tuning, and saving the result."""

from prunecast.compress.serialize import is_saved_model, load_saved, save_model

__all__ = ["is_saved_model", "load_saved", "save_model"]
