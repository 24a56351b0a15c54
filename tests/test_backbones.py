"""toolkit/models/backbones.py: one factory for CNN and CLIP backbones, and what it tells about them."""
from __future__ import annotations

import pytest
import torch
from PIL import Image

from strategies import create_strategy
from toolkit.models.backbones import backbone_status, create_backbone, parse_backbone


@pytest.fixture(autouse=True)
def _one_torch_thread(one_torch_thread):
    yield


def test_a_cnn_backbone_is_pooled_and_says_its_width():
    backbone = create_backbone("cnn:efficientnet_lite0", pretrained=False, image_size=64)
    assert backbone.kind == "cnn" and backbone.model is backbone.module and backbone.image_size == 64
    assert backbone.identity == "tf_efficientnet_lite0:random-seed-0"
    image = backbone.transform(Image.new("RGB", (90, 70), (10, 120, 200)))
    assert image.shape == (3, 64, 64)
    backbone.module.train()
    assert backbone.feature_dim == 1280
    assert backbone.module.training            # the width probe leaves the mode as it was
    with torch.no_grad():
        assert backbone.module.eval()(image[None]).shape == (1, 1280)
    same = create_backbone("efficientnet_lite0", pretrained=False, image_size=64)   # a bare name is a CNN
    assert all(torch.equal(value, same.module.state_dict()[key]) for key, value in backbone.module.state_dict().items())


def test_a_clip_backbone_is_its_image_tower_with_clip_zs_identity(tiny_clip_model):
    backbone = create_backbone(f"clip:{tiny_clip_model}/", seed=3)
    assert backbone.kind == "clip" and backbone.image_size == 64 and backbone.feature_dim == 32
    zero_shot = create_strategy("clip-zs", model=tiny_clip_model, pretrained=None, seed=3, device="cpu").fit([]).encoder
    assert backbone.identity == zero_shot.fingerprint
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(backbone.module(images), backbone.model.encode_image(images))


def test_spec_parsing_and_weights_status():
    assert parse_backbone("clip:ViT-B-32/openai") == ("clip", "ViT-B-32", "openai")
    assert parse_backbone("clip:ViT-B-32/") == ("clip", "ViT-B-32", None)
    assert parse_backbone("cnn:resnet18") == parse_backbone("resnet18") == ("cnn", "resnet18", None)
    with pytest.raises(ValueError, match="clip:MODEL/PRETRAINED"):
        parse_backbone("clip:ViT-B-32")
    with pytest.raises(ValueError, match="cnn:NAME"):
        parse_backbone("vit:tiny")
    assert backbone_status("cnn:resnet18", pretrained=False).available_offline
    assert backbone_status("clip:ViT-B-32/").available_offline
    unknown = backbone_status("cnn:no_such_backbone_xyz", label="triplet")
    assert not unknown.available_offline and unknown.detail.startswith("triplet: unknown backbone")
