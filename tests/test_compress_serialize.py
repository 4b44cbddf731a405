"""Saving and loading prunecast model directories: exact round trips, clear errors, no pickle."""

from __future__ import annotations

import json

import pytest
import torch

from prunecast.compress import load_model, save_model
from prunecast.compress.groups import remove_units
from prunecast.models import ModelError


def _prune_some(module):
    """Remove every other unit (within limits) of every group, widths included."""
    for group in module.pruning_spec().groups:
        remove_units(module, group, list(range(0, group.units - group.min_units, 2)))


def test_unpruned_round_trip_is_exact(small_ttm, tmp_path):
    x = torch.randn(7, 64)
    expected = small_ttm(x)
    save_model(small_ttm, tmp_path / "m", metadata={"note": "unpruned"})
    marker = json.loads((tmp_path / "m" / "prunecast.json").read_text())
    assert marker["family"] == "ttm" and marker["context_length"] == 64 and marker["horizon"] == 16
    assert marker["metadata"] == {"note": "unpruned"}
    loaded = load_model(str(tmp_path / "m"))
    torch.testing.assert_close(loaded(x), expected, rtol=0, atol=0)


def test_pruned_round_trip_is_exact_and_config_agrees(small_ttm, tmp_path):
    _prune_some(small_ttm)
    small_ttm.eval()
    assert small_ttm.model.config.d_model == 16 and small_ttm.model.config.decoder_d_model == 8
    x = torch.randn(3, 64)
    expected = small_ttm(x)
    save_model(small_ttm, tmp_path / "p")
    loaded = load_model(str(tmp_path / "p"))
    assert loaded.model.config.d_model == 16
    assert sum(p.numel() for p in loaded.parameters()) == sum(p.numel() for p in small_ttm.parameters())
    torch.testing.assert_close(loaded(x), expected, rtol=0, atol=0)
    assert loaded(torch.randn(1, 64)).shape == (1, 16)
    # a shorter horizon truncates the saved one
    torch.testing.assert_close(load_model(str(tmp_path / "p"), horizon=4)(x), expected[:, :4], rtol=0, atol=0)


def test_weights_are_safetensors_not_pickle(small_ttm, tmp_path):
    save_model(small_ttm, tmp_path / "m")
    raw = (tmp_path / "m" / "model.safetensors").read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + header_len])
    assert "model.backbone.encoder.patcher.weight" in header
    assert not any(p.suffix in (".bin", ".pt", ".pkl") for p in (tmp_path / "m").iterdir())


def test_corrupt_weights_give_a_clear_error(small_ttm, tmp_path):
    save_model(small_ttm, tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").write_bytes(b"garbage" * 10)
    with pytest.raises(ModelError, match="cannot be read as safetensors"):
        load_model(str(tmp_path / "m"))


def test_weights_of_another_architecture_give_a_clear_error(small_ttm, tmp_path):
    save_model(small_ttm, tmp_path / "full")
    _prune_some(small_ttm)
    save_model(small_ttm, tmp_path / "pruned")
    (tmp_path / "full" / "model.safetensors").write_bytes(
        (tmp_path / "pruned" / "model.safetensors").read_bytes()
    )
    with pytest.raises(ModelError, match="do not match the saved architecture: .*shape mismatch"):
        load_model(str(tmp_path / "full"))


def test_bad_marker_gives_a_clear_error(small_ttm, tmp_path):
    save_model(small_ttm, tmp_path / "m")
    marker = tmp_path / "m" / "prunecast.json"
    marker.write_text("{not json")
    with pytest.raises(ModelError, match="prunecast.json: not valid JSON"):
        load_model(str(tmp_path / "m"))
    marker.write_text(json.dumps({"format": "prunecast-model", "version": 99}))
    with pytest.raises(ModelError, match="format version 99"):
        load_model(str(tmp_path / "m"))


def test_missing_weights_and_wrong_horizon(small_ttm, tmp_path):
    save_model(small_ttm, tmp_path / "m")
    with pytest.raises(ModelError, match="horizon 17"):
        load_model(str(tmp_path / "m"), horizon=17)
    with pytest.raises(ModelError, match="context length 32"):
        load_model(str(tmp_path / "m"), context_length=32)
    (tmp_path / "m" / "model.safetensors").unlink()
    with pytest.raises(ModelError, match="no model.safetensors"):
        load_model(str(tmp_path / "m"))


def test_pretrained_ttm_round_trip(pretrained_ttm, tmp_path):
    x = torch.randn(4, 512)
    expected = pretrained_ttm(x)
    save_model(pretrained_ttm, tmp_path / "r2")
    loaded = load_model(str(tmp_path / "r2"))
    assert loaded.horizon == 96 and loaded.context_length == 512
    torch.testing.assert_close(loaded(x), expected, rtol=0, atol=0)
