"""The images a trained strategy learns from: every file decoded (and optionally cropped) once,
shrunk to what the transforms need, served as augmented tensors; the inner validation split as
preprocessed tensors scored by any embed function."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from toolkit.data.decoding import decode_files
from toolkit.data.split import ValidationSplit
from toolkit.retrieval.encoder import l2_normalise
from toolkit.training.loop import validation_score

# image -> (cropped image or the image itself, whether the crop found what it looks for)
Crop = Callable[[Image.Image], tuple[Image.Image, bool]]


class ImagePreparer:
    """Decoded RGB image -> uint8 array, cropped first when a `crop` is given (e.g. FaceCrop.crop),
    its shorter side shrunk to at most `shorter_side` (what every later transform starts from).
    Picklable when the crop is."""

    def __init__(self, shorter_side: int, crop: Crop | None = None):
        self.shorter_side = int(shorter_side)
        self.crop = crop

    def __call__(self, image: Image.Image) -> tuple[np.ndarray, bool | None]:
        found = None
        if self.crop is not None:
            image, found = self.crop(image)
        shorter = min(image.size)
        if shorter > self.shorter_side:
            scale = self.shorter_side / shorter
            image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                                 Image.BICUBIC)
        return np.ascontiguousarray(np.asarray(image, dtype=np.uint8)), found


@dataclass
class PreparedImages:
    arrays: list[np.ndarray | None]                     # one per path; None when unreadable
    problems: dict[int, str] = field(default_factory=dict)
    faces_found: int = 0                                # what the crop found / missed
    faces_missed: int = 0
    seconds: float = 0.0


def prepare_images(paths: Sequence, preparer: ImagePreparer, num_workers: int = 0) -> PreparedImages:
    """Every path decoded (and cropped) once, in DataLoader workers when num_workers > 0."""
    started = time.perf_counter()
    result = PreparedImages(arrays=[None] * len(paths))
    for index, prepared, problem in decode_files(paths, preparer, num_workers):
        if problem:
            result.problems[index] = problem
            continue
        result.arrays[index], found = prepared
        if found is not None:
            result.faces_found += int(found)
            result.faces_missed += int(not found)
    result.seconds = time.perf_counter() - started
    return result


class TrainingImages(Dataset):
    """Prepared arrays -> (augmented tensor, identity index)."""

    def __init__(self, arrays: Sequence[np.ndarray], labels: Sequence[int], transform: Any):
        self.arrays, self.labels, self.transform = list(arrays), list(labels), transform

    def __len__(self) -> int:
        return len(self.arrays)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(Image.fromarray(self.arrays[index])), self.labels[index]


class ValidationImages:
    """The inner validation split, preprocessed once (float16 tensors), scored by any embed function."""

    def __init__(self, tensors: torch.Tensor, labels: list[str], query_count: int, batch_size: int = 64):
        self.tensors, self.labels, self.query_count, self.batch_size = tensors, labels, query_count, batch_size

    @classmethod
    def from_split(cls, split: ValidationSplit, preparer: ImagePreparer, transform: Any,
                   num_workers: int = 0, batch_size: int = 64) -> "ValidationImages | None":
        items = list(split.queries) + list(split.gallery)
        prepared = prepare_images([item.path for item in items], preparer, num_workers)
        keep = [index for index, array in enumerate(prepared.arrays) if array is not None]
        query_count = sum(1 for index in keep if index < len(split.queries))
        if not query_count or query_count == len(keep):
            return None
        tensors = torch.stack([transform(Image.fromarray(prepared.arrays[index])) for index in keep]).half()
        return cls(tensors, [items[index].label for index in keep], query_count, batch_size)

    def __len__(self) -> int:
        return len(self.labels)

    def embed(self, embed: Callable[[torch.Tensor], torch.Tensor], device: torch.device) -> np.ndarray:
        chunks = []
        with torch.inference_mode(), torch.autocast(device_type=device.type, dtype=torch.float16,
                                                    enabled=device.type == "cuda"):
            for batch in self.tensors.split(self.batch_size):
                chunks.append(embed(batch.to(device).float()).float().cpu())
        return l2_normalise(torch.cat(chunks).numpy())

    def score(self, embed: Callable[[torch.Tensor], torch.Tensor], device: torch.device) -> float:
        vectors = self.embed(embed, device)
        count = self.query_count
        return validation_score(vectors[:count], vectors[count:], self.labels[:count], self.labels[count:])
