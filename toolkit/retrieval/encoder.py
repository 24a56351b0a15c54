"""Encoders: decoded images in, L2-normalised float32 embeddings out.

    preprocess(image) -> item        runs in DataLoader worker processes (must be picklable)
    collate(items)    -> batch       default: torch.stack for tensors, list otherwise
    encode(batch)     -> (n, d)      L2-normalised float32 numpy: in the main process, or in the
                                     worker processes when `encodes_in_workers` (a CPU model that
                                     each process loads itself, e.g. dlib's: one per core)
    batch_stats(batch) -> stats      what report() counts about a batch, made where the batch is
    add_stats(stats)                 ... and added up in the main process

The fingerprint names everything that changes the numbers (weights, preprocessing, options); the
embedding cache is keyed by it, so two encoders with one fingerprint must give one embedding.
A DerivedEncoder (e.g. an adapter) maps another encoder's embeddings and is served from its cache.
"""
from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from typing import Any, Sequence

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


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class Encoder(ABC):
    """Images in, L2-normalised float32 embeddings out."""

    fingerprint: str
    batch_size: int = 32
    device: torch.device = torch.device("cpu")
    flippable: bool = False          # whether flip() works, so flip TTA can be tried
    encodes_in_workers: bool = False  # encode() runs in the worker processes, beside preprocess()

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

    def batch_stats(self, batch: Any) -> Any:
        """A small picklable summary of a batch for report() (e.g. which detector found each face),
        made in the process that holds the batch; None: nothing to count."""
        return None

    def add_stats(self, stats: Any) -> None:
        """Count a batch_stats() summary (in the main process, once per newly embedded batch)."""

    def flip(self, batch: Any) -> Any:
        """The same batch mirrored left-right, for flip test-time augmentation."""
        if isinstance(batch, torch.Tensor):
            return batch.flip(-1)
        raise NotImplementedError(f"{type(self).__name__} does not support flip TTA")


class DerivedEncoder(Encoder):
    """An encoder whose embeddings are `project(base's embeddings)`: embedding is served from the
    base's cache (toolkit.retrieval.embed), and its own embeddings are never cached."""

    def __init__(self, base: Encoder, fingerprint: str):
        self.base = base
        self.fingerprint = fingerprint
        self.batch_size = base.batch_size
        self.device = base.device
        self.flippable = base.flippable

    @abstractmethod
    def project(self, vectors: np.ndarray) -> np.ndarray:
        """(n, d_base) base embeddings -> (n, d) L2-normalised float32."""

    def preprocess(self, image: Image.Image) -> Any:
        return self.base.preprocess(image)

    def collate(self, items: Sequence[Any]) -> Any:
        return self.base.collate(items)

    def encode(self, batch: Any) -> np.ndarray:
        return self.project(self.base.encode(batch))

    def flip(self, batch: Any) -> Any:
        return self.base.flip(batch)

    def report(self) -> str:
        return self.base.report()

    def batch_stats(self, batch: Any) -> Any:
        return self.base.batch_stats(batch)

    def add_stats(self, stats: Any) -> None:
        self.base.add_stats(stats)


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
