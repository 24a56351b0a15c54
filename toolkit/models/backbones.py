"""The one backbone factory: a name in, a module that maps images to features out.

    backbone = create_backbone("cnn:efficientnet_lite0", pooling="gem", image_size=224)
    backbone = create_backbone("clip:ViT-B-32/openai")          # "clip:MODEL/" = random init
    backbone.module, backbone.transform, backbone.identity, backbone.feature_dim

CNNs (toolkit.models.cnn) come pooled; CLIP models (toolkit.models.clip) give their image tower,
and `model` keeps the whole open_clip model (both towers) for those who need the text side too.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch
from torch import nn

from toolkit.models.clip import ClipVisual, clip_weights_status, load_clip
from toolkit.models.cnn import cnn_weights_status, create_cnn
from toolkit.models.transforms import crop_size_of
from toolkit.models.weights import WeightsStatus


@dataclass
class Backbone:
    module: nn.Module          # images -> (n, feature_dim); in eval mode
    transform: Any             # the weights' own eval preprocessing (PIL -> tensor)
    identity: str              # the weights (and, for CLIP, the preprocessing), for fingerprints
    image_size: int            # the side of the images `module` expects
    kind: str                  # "cnn" or "clip"
    model: nn.Module           # what was loaded: `module` itself (cnn), the whole open_clip model (clip)

    @cached_property
    def feature_dim(self) -> int:
        """The width of `module`'s output, from one forward pass of zeros (in eval mode)."""
        parameter = next(self.module.parameters(), None)
        device = parameter.device if parameter is not None else torch.device("cpu")
        was_training = self.module.training
        self.module.eval()
        try:
            with torch.no_grad():
                example = torch.zeros(2, 3, self.image_size, self.image_size, device=device)
                return int(first_tensor(self.module(example)).shape[1])
        finally:
            self.module.train(was_training)


def parse_backbone(text: str) -> tuple[str, str, str | None]:
    """"cnn:NAME" / bare NAME -> ("cnn", NAME, None); "clip:MODEL/PRETRAINED" -> ("clip", MODEL,
    PRETRAINED or None)."""
    kind, _, name = str(text).partition(":")
    if not name:
        return "cnn", kind, None
    if kind == "cnn":
        return "cnn", name, None
    if kind == "clip":
        model, slash, pretrained = name.partition("/")
        if not slash:
            raise ValueError(f"backbone {text!r}: write clip:MODEL/PRETRAINED, e.g. clip:ViT-B-32/openai "
                             "(clip:MODEL/ with nothing after the slash for a random initialisation)")
        return "clip", model, pretrained or None
    raise ValueError(f"backbone {text!r}: write cnn:NAME (a cnn-zs backbone) or clip:MODEL/PRETRAINED")


def create_backbone(spec: str, *, pretrained: bool = True, pooling: str = "avg", gem_p: float = 3.0,
                    image_size: int = 224, seed: int = 0, label: str = "backbone") -> Backbone:
    """The backbone `spec` names (see parse_backbone). CNN options: `pretrained` (False: random init
    seeded by `seed`), `pooling` ("avg" or "gem", with `gem_p`), `image_size`; a CLIP model has its
    own image size and takes its weights from the spec. `label` starts the messages of the
    WeightsUnavailable it raises when the weights can be neither found nor downloaded."""
    kind, name, clip_pretrained = parse_backbone(spec)
    if kind == "cnn":
        return cnn_backbone(name, pretrained=pretrained, pooling=pooling, gem_p=gem_p, image_size=image_size,
                            seed=seed, label=label)
    return clip_backbone(name, clip_pretrained, seed=seed, label=label, default_size=image_size)


def cnn_backbone(name: str, *, pretrained: bool = True, pooling: str = "avg", gem_p: float = 3.0,
                 image_size: int = 224, seed: int = 0, label: str = "backbone") -> Backbone:
    """A pooled CNN (toolkit.models.cnn: the packaged Lite0, torchvision or timm)."""
    module, transform, identity = create_cnn(name, pretrained=pretrained, pooling=pooling, gem_p=gem_p,
                                             image_size=image_size, seed=seed, label=label)
    return Backbone(module, transform, identity, int(image_size), "cnn", module)


def clip_backbone(model: str, pretrained: str | None, *, seed: int = 0, label: str = "backbone",
                  default_size: int = 224) -> Backbone:
    """An open_clip model (any name open_clip takes, hf-hub: ones included) and its image tower;
    `pretrained` a tag, a local checkpoint, or None for a random initialisation seeded by `seed`."""
    loaded, transform, identity = load_clip(model, pretrained, seed=seed, label=label)
    return Backbone(ClipVisual(loaded.visual).eval(), transform, identity, crop_size_of(transform, int(default_size)),
                    "clip", loaded)


def backbone_status(spec: str, *, pretrained: bool = True, label: str = "backbone") -> WeightsStatus:
    """Whether the weights of the backbone `spec` names are on disk now (never downloads)."""
    kind, name, clip_pretrained = parse_backbone(spec)
    if kind == "cnn":
        return cnn_weights_status(name, pretrained, label)
    return clip_weights_status(name, clip_pretrained)


def first_tensor(output: Any) -> torch.Tensor:
    """The first tensor of a model's output (a tensor, a tuple / list, or a dict of them)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)):
        return first_tensor(output[0])
    if isinstance(output, dict):
        return first_tensor(next(iter(output.values())))
    raise TypeError(f"cannot find a tensor in the backbone output {type(output).__name__}")
