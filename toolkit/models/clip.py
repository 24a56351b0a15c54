"""open_clip models as backbones: loaded from the usual caches (Hugging Face hub, ~/.cache/clip) or
a local checkpoint, downloaded only when the host answers, randomly initialised (seeded) when
`pretrained` is empty; the image tower alone is `ClipVisual`."""
from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from toolkit.models.weights import (WeightsStatus, WeightsUnavailable, first_line, host_reachable,
                                    offline_requested, open_clip_cached_file, open_clip_weights_host)
from toolkit.retrieval.encoder import fingerprint_of

DEFAULT_MODEL = "ViT-B-32"
DEFAULT_PRETRAINED = "openai"
# The namespace of a CLIP model's identity; clip-zs uses the identity as its fingerprint, so what
# a fine-tuned model that ends up with the zero-shot weights embeds shares clip-zs's cache.
IDENTITY_TAG = "clip-zs"
RESOLVED_BY_OPEN_CLIP = ("hf-hub:", "local-dir:")   # model names open_clip finds itself, not in its list


def clip_model_names(model: str) -> list[str] | None:
    """The model names open_clip knows (configs registered with add_model_config included), to check
    `model` against; None when `model` is a hub or local-folder name, which open_clip resolves itself."""
    if str(model).startswith(RESOLVED_BY_OPEN_CLIP):
        return None
    import open_clip

    return list(open_clip.list_models())


class ClipVisual(nn.Module):
    """An open_clip visual tower as a backbone: images -> its projected image embedding
    (what model.encode_image gives)."""

    def __init__(self, visual: nn.Module):
        super().__init__()
        self.visual = visual

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        output = self.visual(images)
        return output[0] if isinstance(output, (tuple, list)) else output


def clip_weights_status(model: str, pretrained: str | None) -> WeightsStatus:
    """Whether an open_clip model's weights are on disk now (never downloads)."""
    if not pretrained:
        return WeightsStatus(True, "random initialisation (no weights needed)")
    try:
        path, where = open_clip_cached_file(model, pretrained)
    except WeightsUnavailable as error:
        return WeightsStatus(False, str(error))
    if path:
        return WeightsStatus(True, f"cached at {path}")
    return WeightsStatus(False, f"not cached; downloads to {where} on first use")


def _cannot_load(label: str, model: str, pretrained: str, where: str, reason: str) -> WeightsUnavailable:
    return WeightsUnavailable(
        f"{label}: cannot load open_clip {model} / {pretrained}: weights not in {where} and the "
        f"download failed ({reason}); connect once (or `invoke prefetch`) or choose an offline strategy")


def load_clip(model: str, pretrained: str | None, seed: int = 0, label: str = "clip") -> tuple[nn.Module, Any, str]:
    """(the open_clip model, its eval preprocessing, the identity of model + weights + preprocessing);
    raises WeightsUnavailable in one line. Seeds torch's global generator with `seed` first."""
    import open_clip

    torch.manual_seed(seed)  # fixes random initialisation; pretrained weights overwrite it
    local = bool(pretrained) and Path(pretrained).expanduser().is_file()
    if pretrained and not local:
        cached, where = open_clip_cached_file(model, pretrained)
        host = open_clip_weights_host(model, pretrained)
        if cached is None and (offline_requested() or not host_reachable(host)):
            # fail in seconds, not after huggingface_hub's minute of retries
            raise _cannot_load(label, model, pretrained, where, f"{urlparse(host).hostname} unreachable")
    try:
        loaded, _, preprocess = open_clip.create_model_and_transforms(model, pretrained=pretrained)
    except WeightsUnavailable:
        raise
    except Exception as error:
        if not pretrained:
            raise
        try:
            _, where = open_clip_cached_file(model, pretrained)
        except WeightsUnavailable as unknown:  # an unknown tag says so, with the known ones
            raise unknown from None
        raise _cannot_load(label, model, pretrained, where, first_line(error)) from None
    weights = pretrained
    if local:
        stat = Path(pretrained).expanduser().stat()
        weights = f"{Path(pretrained).name}:{stat.st_size}:{int(stat.st_mtime)}"
    identity = fingerprint_of(IDENTITY_TAG, model, weights or f"random-seed-{seed}", str(preprocess))
    return loaded, preprocess, identity
