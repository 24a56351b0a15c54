"""siamese / arcface / triplet: fine-tuning with tiny random backbones on the synthetic competition."""
import time

import numpy as np
import pytest
import torch
from PIL import Image

from strategies import create_strategy
from strategies.base import RaceContext
from toolkit.models.backbones import create_backbone, parse_backbone
from toolkit.models.faces import FaceCrop
from toolkit.models.faces import weights_status as face_crop_status
from toolkit.training.freezing import tail_parameter_names
from toolkit.data.dataset import find_competition
from toolkit.data.images import load_rgb

# Random-init Lite0 at 64 px with 4 x 2 batches: well under a second a step on two CPU cores.
TINY = dict(backbone="cnn:efficientnet_lite0", pretrained=False, image_size=64, identities_per_batch=4,
            images_per_identity=2, embedding_dim=32, device="cpu", num_workers=0)


@pytest.fixture(autouse=True)
def _one_torch_thread(one_torch_thread):
    yield


def embed(encoder, paths):
    return encoder.encode(encoder.collate([encoder.preprocess(load_rgb(path)) for path in paths]))


@pytest.mark.parametrize("name", ["siamese", "arcface", "triplet"])
def test_each_loss_trains_until_the_deadline(name, training):
    untrained = create_strategy(name, **TINY, steps=0).fit(training).encoder
    deadline = time.monotonic() + 3.0
    # no evaluation before the deadline: train_until keeps the last weights (it skips evaluating
    # them once the deadline has passed, and would otherwise go back to the best evaluated step)
    fitted = create_strategy(name, **TINY, steps=10_000, evaluate_at_start=False,
                             evaluate_every=10_000).fit(training, deadline=deadline)
    encoder, result = fitted.encoder, fitted.details["training"]
    assert result.stopped_by == "deadline" and 0 < result.steps < 10_000
    assert result.best_step == result.steps
    paths = [item.path for item in training[:5]]
    vectors = embed(encoder, paths)
    assert vectors.shape == (5, 32) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert encoder.fingerprint != untrained.fingerprint
    assert not np.allclose(vectors, embed(untrained, paths))
    assert encoder.flippable and "stopped by deadline" in fitted.report


def test_training_is_deterministic_with_a_seed(training):
    paths = [item.path for item in training[:4]]
    first = create_strategy("triplet", **TINY, steps=3, seed=1).fit(training).encoder
    again = create_strategy("triplet", **TINY, steps=3, seed=1).fit(training).encoder
    other = create_strategy("triplet", **TINY, steps=3, seed=2).fit(training).encoder
    assert first.fingerprint == again.fingerprint != other.fingerprint
    np.testing.assert_array_equal(embed(first, paths), embed(again, paths))


def test_unfreeze_head_leaves_the_backbone_unchanged_and_last_only_the_tail(training):
    original = create_backbone("cnn:efficientnet_lite0", pretrained=False, image_size=64).module.state_dict()
    head = create_strategy("siamese", **TINY, steps=3, unfreeze="head", evaluate_at_start=False).fit(training).encoder
    for key, value in head.module.backbone.state_dict().items():
        assert torch.equal(value, original[key]), key  # weights and BatchNorm statistics alike

    for freeze_batchnorm in (True, False):
        last = create_strategy("siamese", **TINY, steps=3, unfreeze="last", evaluate_at_start=False,
                               freeze_batchnorm=freeze_batchnorm).fit(training).encoder
        trained = last.module.backbone.state_dict()
        assert torch.equal(trained["trunk.model.conv_stem.weight"], original["trunk.model.conv_stem.weight"])
        assert torch.equal(trained["trunk.model.blocks.5.0.bn1.running_mean"],
                           original["trunk.model.blocks.5.0.bn1.running_mean"])
        assert not torch.equal(trained["trunk.model.blocks.6.0.conv_pw.weight"],
                               original["trunk.model.blocks.6.0.conv_pw.weight"])
        assert not torch.equal(trained["trunk.model.conv_head.weight"], original["trunk.model.conv_head.weight"])
        # running statistics move only where BatchNorm trains, and only when it is not frozen
        moved = not torch.equal(trained["trunk.model.bn2.running_mean"], original["trunk.model.bn2.running_mean"])
        assert moved == (not freeze_batchnorm)


def test_the_last_blocks_of_a_vision_transformer_include_what_follows_them(tiny_clip_model):
    import open_clip

    visual = open_clip.create_model(tiny_clip_model, pretrained=None).visual
    example = torch.zeros(2, 3, 64, 64)
    tail = tail_parameter_names(visual, 1, example)
    assert {"proj", "ln_post.weight", "transformer.resblocks.1.mlp.c_fc.weight"} <= tail
    assert not any(name.startswith(("transformer.resblocks.0.", "conv1", "ln_pre")) for name in tail)
    assert "class_embedding" not in tail and "positional_embedding" not in tail
    assert tail_parameter_names(visual, 0, example) == {"proj", "ln_post.weight", "ln_post.bias"}
    assert all(parameter.requires_grad for parameter in visual.parameters())  # left as found


def test_a_clip_visual_tower_is_a_backbone_too(training, tiny_clip_model):
    encoder = create_strategy("arcface", backbone=f"clip:{tiny_clip_model}/", steps=2, identities_per_batch=4,
                              images_per_identity=2, device="cpu", num_workers=0).fit(training).encoder
    vectors = embed(encoder, [item.path for item in training[:3]])
    assert vectors.shape == (3, 256)
    assert parse_backbone("clip:ViT-B-32/openai") == ("clip", "ViT-B-32", "openai")
    assert parse_backbone("resnet18") == ("cnn", "resnet18", None)
    with pytest.raises(ValueError, match="clip:MODEL/PRETRAINED"):
        parse_backbone("clip:ViT-B-32")


def test_options_are_checked():
    with pytest.raises(ValueError, match="identities_per_batch x images_per_identity"):
        create_strategy("triplet", batch_size=32)
    with pytest.raises(ValueError, match="unfreeze must be one of"):
        create_strategy("triplet", unfreeze="some")
    with pytest.raises(ValueError, match="nothing of the encoder to train"):
        strategy = create_strategy("triplet", **{**TINY, "embedding_dim": 0}, unfreeze="head")
        strategy.build(["a", "b"], torch.device("cpu"))


def test_estimate_is_a_short_probe(training, monkeypatch):
    import strategies.trained.image_training as image_training

    probes = []
    probe = image_training.seconds_per_step
    monkeypatch.setattr(image_training, "seconds_per_step",
                        lambda *args, **kwargs: probes.append(kwargs["steps"]) or probe(*args, **kwargs))
    strategy = create_strategy("siamese", **TINY, steps=100)
    seconds = strategy.estimate(training, RaceContext(images_after_fit=50))
    assert probes and sum(probes) <= 5                  # a few timed steps, not the 100 it would train
    assert 0 < seconds < 3600


def _need_face_crop():
    status = face_crop_status()
    if not status.available_offline:
        pytest.skip(status.detail)


def test_face_crop_uses_the_whole_image_when_no_face_is_found():
    _need_face_crop()
    blank = Image.new("RGB", (120, 90), (200, 180, 160))
    cropped, found = FaceCrop(size=73).crop(blank)
    assert not found and cropped is blank
    assert "FaceCrop(size=73" in repr(FaceCrop(size=73))


def test_face_crop_trains_on_the_real_mini_benchmark(mini_benchmark):
    _need_face_crop()
    data = find_competition(mini_benchmark)
    crop = FaceCrop(size=73)
    chip, found = crop.crop(load_rgb(data.queries[0]))
    assert found and chip.size == (73, 73)
    fitted = create_strategy("triplet", **TINY, steps=2, face_crop=True).fit(data.training)
    encoder = fitted.encoder
    assert "face crop: no face in" in fitted.report
    assert "FaceCrop" in str(encoder.transform)
    vectors = embed(encoder, data.queries[:2] + data.gallery[:2])
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    plain = create_strategy("triplet", **TINY, steps=2).fit(data.training).encoder
    assert plain.fingerprint != encoder.fingerprint
