"""Preset parameter counts against the released model sizes (the released v1 config.json), and num_params() against
a built model."""
import pytest

from dscoder.models.hf import build_model
from dscoder.models.presets import get_preset


@pytest.mark.parametrize("name, billions", [
    ("deepseek-coder-1.3b", 1.35), ("deepseek-coder-6.7b", 6.74), ("deepseek-coder-33b", 33.3)])
def test_released_sizes(name, billions):
    n = get_preset(name).num_params()
    assert round(n / 1e9, 2 if billions < 10 else 1) == billions


@pytest.mark.parametrize("overrides", [{}, {"tie_word_embeddings": True}, {"num_key_value_heads": 1}])
def test_num_params_counts_the_built_model(overrides):
    cfg = get_preset("tiny", **overrides)
    model = build_model(cfg)
    assert sum(p.numel() for p in model.parameters()) == cfg.num_params()


def test_preset_overrides_are_checked():
    assert get_preset("tiny", vocab_size=500).vocab_size == 500
    with pytest.raises(ValueError, match="unknown field"):
        get_preset("tiny", vocab=500)
    with pytest.raises(ValueError, match="unknown preset"):
        get_preset("deepseek-coder-7b")
