"""Decode many image files in DataLoader worker processes: each file through load_rgb, then a
picklable `prepare` function, with unreadable files reported by reason instead of raised.

    for index, prepared, problem in decode_files(paths, prepare, num_workers=4): ...
"""
from __future__ import annotations

from typing import Any, Callable, Iterator, Sequence

from PIL import Image
from torch.utils.data import DataLoader, Dataset

from toolkit.data.images import UnreadableImage, load_rgb
from toolkit.machine.interrupts import worker_batches


class DecodedFiles(Dataset):
    """paths[i] -> (i, prepare(image), "") or, for an unreadable file, (i, None, reason); with a
    `placeholder` factory, (i, prepare(placeholder()), reason) so that every file gets an item."""

    def __init__(self, paths: Sequence, prepare: Callable[[Image.Image], Any],
                 placeholder: Callable[[], Image.Image] | None = None):
        self.paths, self.prepare, self.placeholder = list(paths), prepare, placeholder

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, Any, str]:
        try:
            image = load_rgb(self.paths[index])
        except UnreadableImage as error:
            return index, (None if self.placeholder is None else self.prepare(self.placeholder())), error.reason
        return index, self.prepare(image), ""


def _as_list(items: list) -> list:
    return items


def decode_files(paths: Sequence, prepare: Callable[[Image.Image], Any], num_workers: int = 0,
                 batch_size: int = 8) -> Iterator[tuple[int, Any, str]]:
    """(index, prepare(image) or None, problem) for every path, in order; in `num_workers`
    processes when above 0 (`prepare` must then be picklable)."""
    if not len(paths):
        return
    loader = DataLoader(DecodedFiles(paths, prepare), batch_size=batch_size, num_workers=num_workers,
                        collate_fn=_as_list, persistent_workers=False)
    with worker_batches(loader) as batches:     # workers leave Ctrl-C to this process; stopped at once
        for items in batches:
            yield from items
