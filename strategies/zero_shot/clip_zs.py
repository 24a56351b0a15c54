"""clip-zs: open_clip image embeddings, zero-shot, for any model / pretrained pair.

    create_strategy("clip-zs", model="ViT-B-32", pretrained="openai")
    create_strategy("clip-zs", model="ViT-B-16", pretrained="laion2b_s34b_b88k")

`pretrained` may also be a path to a local checkpoint, or empty/None for random initialisation
(seeded by `seed`). Loading, caches and the one-line failure are toolkit.models.clip's.
"""
from __future__ import annotations

from typing import Any

import torch

from strategies import register
from strategies.base import Fitted, Strategy, TorchEncoder, WeightsStatus
from toolkit.models.backbones import Backbone, clip_backbone
from toolkit.models.clip import DEFAULT_MODEL, DEFAULT_PRETRAINED, clip_model_names, clip_weights_status

__all__ = ["DEFAULT_MODEL", "DEFAULT_PRETRAINED", "ClipImageEncoder", "ClipZeroShot"]


@register
class ClipZeroShot(Strategy):
    """Options: model (open_clip's name, ViT-B-32), pretrained (a tag, a checkpoint file, or empty
    for a seeded random init; openai), batch_size (32), device (None: the fastest), seed (0)."""

    name = "clip-zs"
    summary = "open_clip image embeddings, zero-shot (any model / pretrained pair)"
    images_per_second_cpu = 6.0
    DEFAULTS = {"model": DEFAULT_MODEL, "pretrained": DEFAULT_PRETRAINED, "batch_size": 32, "device": None, "seed": 0}
    CHOICES = {"model": lambda options: clip_model_names(options["model"])}

    def __init__(self, **options: Any):
        # model and pretrained are always part of its label: clip-zs[model=ViT-B-32,pretrained=openai]
        super().__init__(**{"model": DEFAULT_MODEL, "pretrained": DEFAULT_PRETRAINED, **options})
        settings = self.settings
        self.model_name = str(settings["model"])
        self.pretrained = settings["pretrained"] or None
        self.batch_size = int(settings["batch_size"])
        self.device = settings["device"] or None
        self.seed = int(settings["seed"])

    def weights_status(self) -> WeightsStatus:
        return clip_weights_status(self.model_name, self.pretrained)

    def create_backbone(self) -> Backbone:
        """The open_clip model (`model`), its preprocessing and identity; raises WeightsUnavailable."""
        return clip_backbone(self.model_name, self.pretrained, seed=self.seed, label="clip-zs")

    def fit(self, training=(), context=None, deadline=None) -> Fitted:
        backbone = self.create_backbone()
        # the identity names the model, its weights and its preprocessing: all that fixes the numbers
        return Fitted(ClipImageEncoder(backbone.model, backbone.transform, backbone.identity, device=self.device,
                                       batch_size=self.batch_size))


class ClipImageEncoder(TorchEncoder):
    """The image tower of a whole open_clip model (model.encode_image)."""

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return self.module.encode_image(batch)
