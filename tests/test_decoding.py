"""toolkit/data/decoding.py: many files decoded (in workers or not), unreadable ones reported."""
from __future__ import annotations

import numpy as np
from PIL import Image

from toolkit.data.decoding import DecodedFiles, decode_files


def _size(image: Image.Image) -> tuple[int, int]:
    return image.size


def test_every_file_in_order_with_the_problems_named(tmp_path):
    paths = []
    for index in range(5):
        path = tmp_path / f"{index}.png"
        Image.fromarray(np.full((8 + index, 10, 3), 40 * index, np.uint8)).save(path)
        paths.append(path)
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    paths.insert(2, tmp_path / "broken.jpg")
    for workers in (0, 1):
        items = list(decode_files(paths, _size, num_workers=workers, batch_size=2))
        assert [index for index, _, _ in items] == list(range(6))
        assert items[2][1] is None and "not an image" in items[2][2]
        assert items[0] == (0, (10, 8), "") and items[5] == (5, (10, 12), "")
    assert list(decode_files([], _size)) == []


def test_a_placeholder_stands_in_for_an_unreadable_file(tmp_path):
    files = DecodedFiles([tmp_path / "missing.jpg"], _size, placeholder=lambda: Image.new("RGB", (3, 4)))
    index, size, problem = files[0]
    assert (index, size) == (0, (3, 4)) and "not found" in problem
