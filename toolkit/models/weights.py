"""Pretrained weights: whether they are on disk, where the hubs keep them, and the error a model
raises when they can be neither found nor downloaded."""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from urllib.parse import urlparse


class WeightsUnavailable(RuntimeError):
    """Raised when a model's pretrained weights cannot be found or downloaded."""


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
