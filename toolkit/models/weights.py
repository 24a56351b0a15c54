"""Pretrained weights: whether they are on disk, where the hubs keep them, and the error a model
raises when they can be neither found nor downloaded."""
from __future__ import annotations

import contextlib
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse


class WeightsUnavailable(RuntimeError):
    """Raised when a model's pretrained weights cannot be found or downloaded."""


class NoSuchWeights(WeightsUnavailable):
    """Raised when the weights asked for do not exist under that name (a wrong option, not a
    download still to make): a race fails such a run rather than skipping it."""


@dataclass(frozen=True)
class WeightsStatus:
    available_offline: bool
    detail: str


def hugging_face_cache_dir() -> str:
    """Where Hugging Face hub downloads go (open_clip and timm weights among them)."""
    from huggingface_hub import constants
    return str(constants.HF_HUB_CACHE)


def host_reachable(url: str, timeout: float = 3.0) -> bool:
    """Whether the host of *url* accepts a TCP connection within *timeout* seconds.

    A quick probe before a weights download, so that an offline machine fails in seconds instead
    of after a library's minute of retries. Assumed true behind a proxy (the proxy decides).
    """
    if any(os.environ.get(key) for key in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    parsed = urlparse(url)
    try:
        with socket.create_connection((parsed.hostname, parsed.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


# ---------------------------------------------------------------- where each hub keeps its files

DOWNLOAD_TIMEOUT_S = 30.0   # socket timeout while downloading, so a dead network fails, not hangs
PROBE_TIMEOUT_S = 3.0       # quick reachability check of a weights host before a download


def offline_requested() -> bool:
    """Whether HF_HUB_OFFLINE asks the hubs to stay offline."""
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")


@contextlib.contextmanager
def socket_timeout(seconds: float = DOWNLOAD_TIMEOUT_S):
    """The default socket timeout set for the block (downloads that would hang fail instead)."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def first_line(error: BaseException) -> str:
    """The first line of an error's message (its type's name when it has none), at most 160 chars."""
    text = str(error).strip().splitlines()
    return text[0][:160] if text else type(error).__name__


def file_identity(path: str | os.PathLike | None) -> str:
    """A cheap identity of a weights file for fingerprints: its name and size in bytes."""
    if not path or not Path(path).is_file():
        return "unknown-file"
    return f"{Path(path).name}:{Path(path).stat().st_size}"


def torch_hub_checkpoints() -> Path:
    import torch
    return Path(torch.hub.get_dir()) / "checkpoints"


def torchvision_weights(name: str):
    """torchvision's DEFAULT weights enum of a model name, or None."""
    from torchvision.models import get_model_weights
    try:
        return get_model_weights(name).DEFAULT
    except (ValueError, AttributeError):
        return None


def torchvision_cached_file(name: str) -> tuple[str | None, str]:
    """(path of the cached torchvision weights file, the folder it looked in); never downloads."""
    weights = torchvision_weights(name)
    folder = torch_hub_checkpoints()
    if weights is None:
        return None, f"nowhere (torchvision has no weights for {name})"
    target = folder / os.path.basename(urlparse(weights.url).path)
    return (str(target) if target.is_file() else None), str(folder)


def timm_cached_file(name: str) -> tuple[str | None, str]:
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
        target = torch_hub_checkpoints() / os.path.basename(urlparse(url).path)
        if target.is_file():
            return str(target), str(torch_hub_checkpoints())
        places.append(str(torch_hub_checkpoints()))
    return None, " and ".join(places) or "nowhere (no weights source)"


def open_clip_cached_file(model: str, pretrained: str) -> tuple[str | None, str]:
    """(path of the open_clip weights file if on disk, where it would be); never downloads.
    WeightsUnavailable (naming the known tags) when open_clip has no such pretrained tag."""
    import open_clip
    from open_clip.pretrained import get_pretrained_cfg

    if Path(pretrained).expanduser().is_file():
        return str(Path(pretrained).expanduser()), str(Path(pretrained).expanduser())
    config = get_pretrained_cfg(model, pretrained)
    if not config:
        known = ", ".join(open_clip.list_pretrained_tags_by_model(model)) or "none"
        raise NoSuchWeights(f"open_clip has no pretrained tag {pretrained!r} for model {model!r} "
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
    folder = os.path.expanduser("~/.cache/clip")
    target = os.path.join(folder, os.path.basename(config.get("url", "")))
    return (target if os.path.isfile(target) else None), folder


def open_clip_weights_host(model: str, pretrained: str) -> str:
    """The URL whose host serves these open_clip weights (the Hugging Face endpoint or its URL)."""
    from open_clip.pretrained import get_pretrained_cfg

    config = get_pretrained_cfg(model, pretrained) or {}
    if config.get("hf_hub") or not config.get("url"):
        from huggingface_hub import constants
        return constants.ENDPOINT
    return config["url"]
