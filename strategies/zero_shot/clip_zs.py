"""clip-zs: open_clip image embeddings, zero-shot, for any model / pretrained pair.

    create_strategy("clip-zs", model="ViT-B-32", pretrained="openai")
    create_strategy("clip-zs", model="ViT-B-16", pretrained="laion2b_s34b_b88k")

`pretrained` may also be a path to a local checkpoint, or empty/None for random initialisation
(seeded by `seed`), which the tests use with a tiny model config. Weights come from the usual
open_clip caches (Hugging Face hub cache, ~/.cache/clip); when they are absent and cannot be
downloaded the strategy fails with one line naming the model and where it looked.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch

from strategies import register
from strategies.base import (Fitted, Strategy, TorchEncoder, WeightsStatus, WeightsUnavailable, fingerprint_of,
                             host_reachable, hugging_face_cache_dir)

DEFAULT_MODEL = "ViT-B-32"
DEFAULT_PRETRAINED = "openai"


def _clip_url_cache_dir() -> str:
    return os.path.expanduser("~/.cache/clip")


def cached_weights_path(model: str, pretrained: str) -> tuple[str | None, str]:
    """(path of the weights file if on disk, where it would be) without downloading anything."""
    import open_clip
    from open_clip.pretrained import get_pretrained_cfg

    if Path(pretrained).expanduser().is_file():
        return str(Path(pretrained).expanduser()), str(Path(pretrained).expanduser())
    config = get_pretrained_cfg(model, pretrained)
    if not config:
        known = ", ".join(open_clip.list_pretrained_tags_by_model(model)) or "none"
        raise WeightsUnavailable(f"open_clip has no pretrained tag {pretrained!r} for model {model!r} "
                                 f"(known tags: {known})")
    if config.get("hf_hub"):
        from huggingface_hub import try_to_load_from_cache
        repo_id, filename = os.path.split(config["hf_hub"])
        names = [filename or "open_clip_pytorch_model.bin"]
        names += [name[:-4] + ".safetensors" for name in names if name.endswith((".bin", ".pth"))]
        names += ["open_clip_model.safetensors"]
        for name in names:
            found = try_to_load_from_cache(repo_id, name)
            if isinstance(found, str):
                return found, hugging_face_cache_dir()
        return None, f"{hugging_face_cache_dir()} (hub repo {repo_id})"
    url = config.get("url", "")
    target = os.path.join(_clip_url_cache_dir(), os.path.basename(url))
    return (target if os.path.isfile(target) else None), _clip_url_cache_dir()


def weights_host(model: str, pretrained: str) -> str:
    """The URL whose host serves these weights (the Hugging Face endpoint or open_clip's URL)."""
    from open_clip.pretrained import get_pretrained_cfg

    config = get_pretrained_cfg(model, pretrained) or {}
    if config.get("hf_hub") or not config.get("url"):
        from huggingface_hub import constants
        return constants.ENDPOINT
    return config["url"]


def _offline_requested() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")


@register
class ClipZeroShot(Strategy):
    name = "clip-zs"
    summary = "open_clip image embeddings, zero-shot (any model / pretrained pair)"
    images_per_second_cpu = 6.0

    def __init__(self, model: str = DEFAULT_MODEL, pretrained: str | None = DEFAULT_PRETRAINED,
                 batch_size: int = 32, device: str | None = None, seed: int = 0, **options: Any):
        super().__init__(model=model, pretrained=pretrained, **options)
        self.model_name = model
        self.pretrained = pretrained or None
        self.batch_size = batch_size
        self.device = device
        self.seed = seed

    def weights_status(self) -> WeightsStatus:
        if not self.pretrained:
            return WeightsStatus(True, "random initialisation (no weights needed)")
        try:
            path, where = cached_weights_path(self.model_name, self.pretrained)
        except WeightsUnavailable as error:
            return WeightsStatus(False, str(error))
        if path:
            return WeightsStatus(True, f"cached at {path}")
        return WeightsStatus(False, f"not cached; downloads to {where} on first use")

    def load_model(self):
        import open_clip

        torch.manual_seed(self.seed)  # fixes random initialisation; pretrained weights overwrite it
        if self.pretrained and not Path(self.pretrained).expanduser().is_file():
            cached, where = cached_weights_path(self.model_name, self.pretrained)
            host = weights_host(self.model_name, self.pretrained)
            if cached is None and (_offline_requested() or not host_reachable(host)):
                # fail in seconds, not after huggingface_hub's minute of retries
                raise WeightsUnavailable(
                    f"clip-zs: cannot load open_clip {self.model_name} / {self.pretrained}: weights not in "
                    f"{where} and the download failed ({urlparse(host).hostname} unreachable); connect once "
                    "(or `invoke prefetch`) or choose an offline strategy")
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(self.model_name, pretrained=self.pretrained)
        except WeightsUnavailable:
            raise
        except Exception as error:
            if not self.pretrained:
                raise
            try:
                _, where = cached_weights_path(self.model_name, self.pretrained)
            except WeightsUnavailable as unknown:
                raise unknown from None
            reason = str(error).splitlines()[0][:160] if str(error) else type(error).__name__
            raise WeightsUnavailable(
                f"clip-zs: cannot load open_clip {self.model_name} / {self.pretrained}: weights not in "
                f"{where} and the download failed ({reason}); connect once (or `invoke prefetch`) "
                "or choose an offline strategy") from None
        return model, preprocess

    def fit(self, training=(), context=None, deadline=None) -> Fitted:
        model, preprocess = self.load_model()
        weights = self.pretrained
        if weights and Path(weights).expanduser().is_file():
            stat = Path(weights).expanduser().stat()
            weights = f"{Path(weights).name}:{stat.st_size}:{int(stat.st_mtime)}"
        fingerprint = fingerprint_of("clip-zs", self.model_name, weights or f"random-seed-{self.seed}", str(preprocess))
        return Fitted(ClipImageEncoder(model, preprocess, fingerprint, device=self.device, batch_size=self.batch_size))


class ClipImageEncoder(TorchEncoder):
    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return self.module.encode_image(batch)
