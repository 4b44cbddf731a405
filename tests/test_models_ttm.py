import json

import pytest
import torch

from prunecast.models import ModelError, adapter_for, load_pretrained
from prunecast.models.ttm import TTMAdapter

from .conftest import TTM_ID, small_ttm_config


def test_pretrained_ttm_shape_and_dtype(pretrained_ttm):
    assert pretrained_ttm.context_length == 512 and pretrained_ttm.horizon == 96
    with torch.inference_mode():
        out = pretrained_ttm(torch.randn(3, 512))
    assert out.shape == (3, 96) and out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_shorter_horizon_truncates_the_checkpoint_output(pretrained_ttm):
    short = load_pretrained(TTM_ID, horizon=24)
    x = torch.randn(2, 512)
    with torch.inference_mode():
        torch.testing.assert_close(short(x), pretrained_ttm(x)[:, :24])


def test_longer_horizon_rolls_the_checkpoint_out(pretrained_ttm):
    long = load_pretrained(TTM_ID, horizon=192)
    x = torch.randn(2, 512)
    with torch.inference_mode():
        first = pretrained_ttm(x)
        out = long(x)
        torch.testing.assert_close(out[:, 96:], pretrained_ttm(torch.cat([x, first], dim=-1)[:, -512:]))
    torch.testing.assert_close(out[:, :96], first)
    assert long.head_info() == {"native_horizon": 96, "passes": 2, "horizon": 192}


def test_wrong_context_is_a_clear_error(pretrained_ttm):
    with pytest.raises(ModelError, match="context length 256 differs"):
        load_pretrained(TTM_ID, context_length=256)


def test_small_random_ttm_loads_from_a_local_directory(tmp_path, small_ttm):
    small_ttm.model.save_pretrained(tmp_path / "ttm")
    assert isinstance(adapter_for(str(tmp_path / "ttm")), TTMAdapter)
    loaded = load_pretrained(str(tmp_path / "ttm"))
    x = torch.randn(4, 64)
    with torch.inference_mode():
        out = loaded(x)
        torch.testing.assert_close(out, small_ttm.eval()(x))
    assert out.shape == (4, 16)


def test_directory_without_config_is_named(tmp_path):
    with pytest.raises(ModelError, match="no config.json"):
        load_pretrained(str(tmp_path))


def test_unknown_family_in_config(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ModelError, match="no known family"):
        load_pretrained(str(tmp_path))


def test_config_roundtrip_rebuilds_the_architecture(small_ttm):
    rebuilt = TTMAdapter().from_config(small_ttm.config_dict(), 64, 16)
    shapes = {k: v.shape for k, v in small_ttm.state_dict().items()}
    assert shapes == {k: v.shape for k, v in rebuilt.state_dict().items()}
    assert small_ttm_config()["d_model"] == rebuilt.model.config.d_model
