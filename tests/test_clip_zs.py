import pytest

from strategies import create_strategy, parse_strategy_specs
from strategies.base import WeightsUnavailable


def test_random_init_is_seeded_and_fingerprinted(tiny_clip_model):
    first = create_strategy("clip-zs", model=tiny_clip_model, pretrained=None, seed=1).fit([]).encoder
    again = create_strategy("clip-zs", model=tiny_clip_model, pretrained=None, seed=1).fit([]).encoder
    other = create_strategy("clip-zs", model=tiny_clip_model, pretrained=None, seed=2).fit([]).encoder
    assert first.fingerprint == again.fingerprint != other.fingerprint


def test_missing_weights_fail_with_one_clear_line():
    strategy = create_strategy("clip-zs", model="ViT-B-32", pretrained="openai")
    status = strategy.weights_status()
    if status.available_offline:
        pytest.skip("ViT-B-32/openai is cached on this machine")
    assert "not cached" in status.detail
    with pytest.raises(WeightsUnavailable) as caught:
        strategy.fit([]).encoder
    message = str(caught.value)
    assert "ViT-B-32" in message and "openai" in message and "\n" not in message


def test_unknown_pretrained_tag_lists_the_known_ones():
    status = create_strategy("clip-zs", model="ViT-B-32", pretrained="no-such-tag").weights_status()
    assert not status.available_offline and "laion2b" in status.detail


def test_strategy_specs_parse_options_and_reject_unknown_names():
    specs = parse_strategy_specs("face-zs, clip-zs[model=ViT-B-16,pretrained=laion2b_s34b_b88k,batch_size=8]")
    assert specs == [("face-zs", {}), ("clip-zs", {"model": "ViT-B-16", "pretrained": "laion2b_s34b_b88k", "batch_size": 8})]
    with pytest.raises(ValueError, match="unknown strategy 'nope'"):
        parse_strategy_specs("nope")
    with pytest.raises(ValueError, match="key=value"):
        parse_strategy_specs("clip-zs[model]")
