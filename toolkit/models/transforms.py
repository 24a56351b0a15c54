"""Image transforms (PIL -> tensor): the eval transform of classification weights, the training
augmentation, and reading a transform's normalisation and crop size back."""
from __future__ import annotations

from typing import Any, Callable, Sequence

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def classification_transform(image_size: int, mean: Sequence[float], std: Sequence[float],
                             interpolation: str = "bicubic", crop_pct: float = 0.875):
    """Resize the shorter side to image_size / crop_pct, centre crop image_size, to tensor, normalise.

    Hand-built rather than timm.data.create_transform: timm's gives the same pixels but another
    repr (MaybeToTensor, CenterCrop((s, s)), Normalize with tensors), and str(transform) is part of
    every encoder fingerprint, so the embedding caches would be invalidated for nothing."""
    from torchvision import transforms

    modes = {"bicubic": transforms.InterpolationMode.BICUBIC, "bilinear": transforms.InterpolationMode.BILINEAR,
             "nearest": transforms.InterpolationMode.NEAREST}
    return transforms.Compose([
        transforms.Resize(int(image_size / crop_pct),
                          interpolation=modes.get(interpolation, transforms.InterpolationMode.BICUBIC)),
        transforms.CenterCrop(image_size),
        transforms.ToTensor(),
        transforms.Normalize(mean, std),
    ])


def training_transform(image_size: int, mean: Sequence[float], std: Sequence[float]):
    """The augmentation: random resized crop, horizontal flip, colour jitter, random grayscale."""
    from torchvision import transforms

    return transforms.Compose([
        transforms.RandomResizedCrop(image_size, scale=(0.6, 1.0), ratio=(0.85, 1.18),
                                     interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.RandomHorizontalFlip(),
        transforms.RandomApply([transforms.ColorJitter(0.3, 0.3, 0.3, 0.05)], p=0.8),
        transforms.RandomGrayscale(p=0.2),
        transforms.ToTensor(),
        transforms.Normalize(tuple(mean), tuple(std)),
    ])


def normalisation_of(transform: Any) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) of the Normalize step of a torchvision Compose (ImageNet's when there is none)."""
    from torchvision import transforms

    for step in getattr(transform, "transforms", [transform]):
        if isinstance(step, transforms.Normalize):
            return tuple(float(value) for value in step.mean), tuple(float(value) for value in step.std)
    return IMAGENET_MEAN, IMAGENET_STD


def crop_size_of(transform: Any, default: int) -> int:
    """The side of the CenterCrop step of a torchvision Compose (`default` when there is none)."""
    from torchvision import transforms

    for step in getattr(transform, "transforms", []):
        if isinstance(step, transforms.CenterCrop):
            size = step.size
            return int(size[0] if isinstance(size, (tuple, list)) else size)
    return default


def preceded_by(transform: Any, first: Callable | None):
    """`first` (e.g. a face crop) in front of `transform`; the transform itself when there is none."""
    if first is None:
        return transform
    from torchvision import transforms
    return transforms.Compose([first, transform])
