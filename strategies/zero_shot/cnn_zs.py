"""cnn-zs: pooled ImageNet CNN features, zero-shot.

    create_strategy("cnn-zs")                                   # EfficientNet-Lite0, offline
    create_strategy("cnn-zs", pooling="gem", gem_p=3.0)         # generalised-mean pooling
    create_strategy("cnn-zs", backbone="resnet50")              # torchvision weights (cache / download)
    create_strategy("cnn-zs", backbone="convnext_tiny.fb_in22k")  # timm weights (cache / download)

The embedding is the backbone's last feature map pooled over space ("avg", or "gem" with `gem_p`),
L2-normalised; backbones, weights and preprocessing come from toolkit.models.backbones.
Options: backbone, pretrained (False: random init seeded by `seed`), pooling, gem_p, image_size,
batch_size, device, seed.
"""
from __future__ import annotations

from typing import Any

from strategies import register
from strategies.base import Fitted, Strategy, TorchEncoder, WeightsStatus, fingerprint_of
from toolkit.models.backbones import Backbone, backbone_status, create_backbone
from toolkit.models.cnn import DEFAULT_BACKBONE, POOLINGS


def as_bool(value: Any) -> bool:
    """An option's truth: the strings false/no/off/0/none/"" are False."""
    if isinstance(value, str):
        return value.strip().lower() not in ("false", "no", "off", "0", "none", "")
    return bool(value)


@register
class CnnZeroShot(Strategy):
    name = "cnn-zs"
    summary = "pooled ImageNet CNN features, zero-shot (EfficientNet-Lite0 offline by default)"
    images_per_second_cpu = 29.0

    DEFAULTS = {"backbone": DEFAULT_BACKBONE, "pretrained": True, "pooling": "avg", "gem_p": 3.0, "image_size": 224,
                "batch_size": 32, "device": None, "seed": 0}
    CHOICES = {"pooling": POOLINGS}

    def __init__(self, **options: Any):
        super().__init__(**options)
        settings = self.settings
        self.backbone = str(settings["backbone"])
        self.pretrained = as_bool(settings["pretrained"])
        self.pooling = str(settings["pooling"])
        self.gem_p = float(settings["gem_p"])
        self.image_size = int(settings["image_size"])
        self.batch_size = int(settings["batch_size"])
        self.device = settings["device"] or None
        self.seed = int(settings["seed"])
        if not self.gem_p > 0:
            raise ValueError(f"cnn-zs: gem_p must be positive, not {self.gem_p}")
        if self.image_size < 32:
            raise ValueError(f"cnn-zs: image_size must be at least 32, not {self.image_size}")

    @property
    def spec(self) -> str:
        return f"cnn:{self.backbone}"

    def weights_status(self) -> WeightsStatus:
        return backbone_status(self.spec, pretrained=self.pretrained, label="cnn-zs")

    def create_backbone(self) -> Backbone:
        """The pooled backbone with its transform and weights identity; raises WeightsUnavailable."""
        return create_backbone(self.spec, pretrained=self.pretrained, pooling=self.pooling, gem_p=self.gem_p,
                               image_size=self.image_size, seed=self.seed, label="cnn-zs")

    def fingerprint(self, identity: str, transform: Any) -> str:
        return fingerprint_of("cnn-zs", self.backbone, self.pretrained, identity, self.pooling,
                              self.gem_p if self.pooling == "gem" else None, self.image_size, str(transform))

    def fit(self, training=(), context=None, deadline=None) -> Fitted:
        return Fitted(self.encoder())

    def encoder(self) -> "CnnEncoder":
        backbone = self.create_backbone()
        return CnnEncoder(backbone.module, backbone.transform, self.fingerprint(backbone.identity, backbone.transform),
                          device=self.device, batch_size=self.batch_size)


class CnnEncoder(TorchEncoder):
    """PooledBackbone -> (n, c) pooled features, L2-normalised float32 (TorchEncoder.encode)."""
