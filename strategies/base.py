"""The one interface every strategy plugs in through.

A Strategy knows how to produce an Encoder (zero-shot strategies load one, trained strategies fit
one before a deadline). An Encoder turns decoded PIL images into L2-normalised float32 embeddings
in two steps, so that extraction can overlap decoding with the model:

    preprocess(image) -> item        runs in DataLoader worker processes (must be picklable)
    collate(items)    -> batch       default: torch.stack for tensors, list otherwise
    encode(batch)     -> (n, d)      runs in the main process, L2-normalised float32 numpy

The fingerprint names everything that changes the numbers (weights, preprocessing, options); the
embedding cache is keyed by it, so two encoders with one fingerprint must give one embedding.
"""
from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

import numpy as np
import torch
from PIL import Image


def l2_normalise(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, as contiguous float32 (a zero row stays zero)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.ascontiguousarray(vectors / np.maximum(norms, 1e-12), dtype=np.float32)


def fingerprint_of(*parts: Any) -> str:
    """A short stable hash of JSON-able parts: the cache key of an encoder."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


class WeightsUnavailable(RuntimeError):
    """Raised when a strategy's pretrained weights cannot be found or downloaded."""


@dataclass(frozen=True)
class WeightsStatus:
    available_offline: bool
    detail: str


class Encoder(ABC):
    """Images in, L2-normalised float32 embeddings out."""

    fingerprint: str
    batch_size: int = 32
    device: torch.device = torch.device("cpu")
    flippable: bool = False          # whether flip() works, so flip TTA can be tried

    @abstractmethod
    def preprocess(self, image: Image.Image) -> Any:
        """One decoded RGB image to one model input (runs in worker processes)."""

    def collate(self, items: Sequence[Any]) -> Any:
        if items and isinstance(items[0], torch.Tensor):
            return torch.stack(list(items))
        return list(items)

    @abstractmethod
    def encode(self, batch: Any) -> np.ndarray:
        """A collated batch to an (n, d) L2-normalised float32 array."""

    def report(self) -> str:
        """Anything worth telling the user after encoding (e.g. how often no face was found)."""
        return ""

    def flip(self, batch: Any) -> Any:
        """The same batch mirrored left-right, for flip test-time augmentation."""
        if isinstance(batch, torch.Tensor):
            return batch.flip(-1)
        raise NotImplementedError(f"{type(self).__name__} does not support flip TTA")


class TorchEncoder(Encoder):
    """An Encoder around a torch module and a torchvision-style transform.

    Moves batches to the device (non-blocking, from pinned memory when the loader pins), runs under
    inference_mode, with autocast (float16) on CUDA, and L2-normalises the output.
    """

    flippable = True

    def __init__(self, module: torch.nn.Module, transform, fingerprint: str,
                 device: torch.device | str | None = None, batch_size: int = 32):
        self.device = torch.device(device) if device else default_device()
        self.module = module.to(self.device).eval()
        self.transform = transform
        self.fingerprint = fingerprint
        self.batch_size = batch_size

    def __getstate__(self):
        # Workers only need the transform; never pickle the model into each worker.
        state = self.__dict__.copy()
        state["module"] = None
        return state

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        return self.transform(image)

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return self.module(batch)

    def encode(self, batch: torch.Tensor) -> np.ndarray:
        batch = batch.to(self.device, non_blocking=True)
        with torch.inference_mode(), torch.autocast(
            device_type=self.device.type, dtype=torch.float16, enabled=self.device.type == "cuda"
        ):
            features = self.forward(batch)
        return l2_normalise(features.float().cpu().numpy())


def hugging_face_cache_dir() -> str:
    """Where Hugging Face hub downloads go (open_clip and timm weights among them)."""
    from huggingface_hub import constants
    return str(constants.HF_HUB_CACHE)


def host_reachable(url: str, timeout: float = 3.0) -> bool:
    """Whether the host of *url* accepts a TCP connection within *timeout* seconds.

    A quick probe before a weights download, so that an offline machine fails in seconds instead
    of after a library's minute of retries. Assumed true behind a proxy (the proxy decides).
    """
    import os
    import socket
    from urllib.parse import urlparse

    if any(os.environ.get(key) for key in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    parsed = urlparse(url)
    try:
        with socket.create_connection((parsed.hostname, parsed.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class Strategy(ABC):
    """A way of producing an Encoder for a competition, created by name from the registry.

    Class attributes: `name` (registry key), `summary` (one line for `invoke strategies`),
    `images_per_second_cpu` (nominal throughput used to estimate cost before a probe exists).
    """

    name: ClassVar[str]
    summary: ClassVar[str]
    images_per_second_cpu: ClassVar[float] = 10.0
    trains: ClassVar[bool] = False

    def __init__(self, **options: Any):
        self.options = options

    def describe(self) -> str:
        """The name with its options, as a user would type it: clip-zs[model=ViT-B-32]."""
        if not self.options:
            return self.name
        inner = ",".join(f"{key}={value}" for key, value in sorted(self.options.items()))
        return f"{self.name}[{inner}]"

    @abstractmethod
    def weights_status(self) -> WeightsStatus:
        """Whether the weights this strategy needs are on disk now (no download attempted)."""

    # Set by the race before estimate()/fit(): the embed_images options it uses (cache_dir,
    # num_workers, show_progress), so a strategy that embeds images itself shares the cache.
    embed_options: dict = {}
    # Set by the race: the filename glob that gives training files the gallery role in validation
    # (e.g. "*_s.*" for stylised renderings), so a trained strategy's inner validation has the
    # race's (and the test's) query/gallery roles. None: roles drawn at random.
    validation_gallery_pattern: str | None = None
    # Set by the race before estimate()/fit(): the images it will embed after fitting (validation
    # and test), so an estimate can leave out those already in the embedding cache.
    pending_images: Sequence = ()

    def estimate_seconds(self, n_images: int) -> float:
        """Rough wall-clock cost of embedding n_images on this machine, from nominal speed."""
        speed = self.images_per_second_cpu * (8.0 if torch.cuda.is_available() else 1.0)
        return n_images / speed

    def estimate(self, training: Sequence, n_images: int) -> float:
        """Seconds to fit on `training` and embed n_images. Zero-shot: embedding only. Trained
        strategies override this with a short probe (seconds per step x planned steps)."""
        return self.estimate_seconds(n_images)

    @abstractmethod
    def fit(self, training: Sequence, deadline: float | None = None) -> Encoder:
        """An Encoder for this competition; `training` is a list of dataset.LabelledImage and
        `deadline` a time.monotonic() value that a training loop must stop at."""
