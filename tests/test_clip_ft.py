"""clip-ft with the tiny random open_clip model: FLYP / SupCon training, WiSE-FT mixing."""
import time

import numpy as np
import pytest
import torch

from strategies import create_strategy
from strategies.trained.clip_ft import WISE_RATIOS, interpolate, parse_ratios
from toolkit.data.images import load_rgb


@pytest.fixture(autouse=True)
def _one_torch_thread(one_torch_thread):
    yield


@pytest.fixture
def tiny(tiny_clip_model):
    return dict(model=tiny_clip_model, pretrained=None, identities_per_batch=4, images_per_identity=2, lr=1e-3,
                device="cpu", num_workers=0)


def embed(encoder, paths):
    return encoder.encode(encoder.collate([encoder.preprocess(load_rgb(path)) for path in paths]))


def test_trains_and_picks_a_wise_ratio_from_the_grid(training, tiny):
    fitted = create_strategy("clip-ft", **tiny, steps=4).fit(training)
    encoder, details = fitted.encoder, fitted.details
    assert details["training"].steps == 4
    assert details["wise_ratio"] in WISE_RATIOS
    assert sorted(details["wise_scores"]) == list(WISE_RATIOS)
    assert max(details["wise_scores"].values()) == details["wise_scores"][details["wise_ratio"]]
    assert "WiSE-FT ratio" in fitted.report
    vectors = embed(encoder, [item.path for item in training[:3]])
    assert vectors.shape == (3, 32)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_ratio_zero_reproduces_the_zero_shot_embeddings_exactly(training, tiny):
    zero_shot = create_strategy("clip-zs", model=tiny["model"], pretrained=None, device="cpu").fit([]).encoder
    mixed = create_strategy("clip-ft", **tiny, steps=3, wise_ratios=0).fit(training).encoder
    tuned = create_strategy("clip-ft", **tiny, steps=3, wise_ratios=1, evaluate_at_start=False).fit(training).encoder
    paths = [item.path for item in training[:4]]
    np.testing.assert_array_equal(embed(mixed, paths), embed(zero_shot, paths))
    assert mixed.fingerprint == zero_shot.fingerprint        # so clip-zs's cached embeddings are reused
    assert tuned.fingerprint != zero_shot.fingerprint
    assert not np.allclose(embed(tuned, paths), embed(zero_shot, paths))


@pytest.mark.parametrize("objective", ["supcon", "both"])
def test_other_objectives_and_full_unfreezing_train(training, tiny, objective):
    details = create_strategy("clip-ft", **tiny, steps=2, objective=objective, unfreeze="all",
                              wise_ratios="0.5/1").fit(training).details
    assert details["wise_ratio"] in (0.5, 1.0) and details["training"].steps == 2


def test_unfreeze_last_trains_only_the_last_blocks(training, tiny):
    original = create_strategy("clip-zs", model=tiny["model"], pretrained=None, device="cpu").fit([]).encoder.module
    tuned = create_strategy("clip-ft", **tiny, steps=3, unfreeze_blocks=1, wise_ratios=1,
                            evaluate_at_start=False).fit(training).encoder.module
    before, after = original.visual.state_dict(), tuned.visual.state_dict()
    assert torch.equal(after["transformer.resblocks.0.mlp.c_fc.weight"], before["transformer.resblocks.0.mlp.c_fc.weight"])
    assert torch.equal(after["conv1.weight"], before["conv1.weight"])
    assert not torch.equal(after["transformer.resblocks.1.mlp.c_fc.weight"], before["transformer.resblocks.1.mlp.c_fc.weight"])
    assert not torch.equal(after["proj"], before["proj"])
    for key, value in original.transformer.state_dict().items():     # the text tower stays frozen
        assert torch.equal(tuned.transformer.state_dict()[key], value)


def test_stops_at_the_deadline(training, tiny):
    deadline = time.monotonic() + 2.0
    details = create_strategy("clip-ft", **tiny, steps=100_000).fit(training, deadline=deadline).details
    assert details["training"].stopped_by == "deadline" and 0 < details["training"].steps < 100_000


def test_ratios_and_interpolation():
    assert parse_ratios("0/0.5/1") == (0.0, 0.5, 1.0) and parse_ratios(0.25) == (0.25,)
    with pytest.raises(ValueError, match="wise_ratios"):
        parse_ratios([1.5])
    zero, tuned = {"w": torch.zeros(3), "n": torch.tensor(1)}, {"w": torch.ones(3), "n": torch.tensor(2)}
    assert torch.equal(interpolate(zero, tuned, 0.25)["w"], torch.full((3,), 0.25))
    assert interpolate(zero, tuned, 0.0) is zero and interpolate(zero, tuned, 1.0) is tuned
    with pytest.raises(ValueError, match="objective"):
        create_strategy("clip-ft", objective="nope")
