import shutil

import numpy as np
import pytest
from PIL import Image

from strategies import create_strategy
from toolkit.retrieval.embed import EmbeddingCache, embed_images, file_digest


@pytest.fixture(scope="module")
def encoder(tiny_clip_model):
    return create_strategy("clip-zs", model=tiny_clip_model, pretrained=None, batch_size=4).fit([]).encoder


@pytest.fixture
def images(tmp_path, synthetic_competition):
    folder = tmp_path / "images"
    folder.mkdir()
    for source in sorted((synthetic_competition / "test" / "gallery").glob("*.jpg"))[:9]:
        shutil.copy(source, folder / source.name)
    return sorted(folder.glob("*.jpg"))


def test_embeddings_are_unit_float32_in_input_order(encoder, images, tmp_path):
    result = embed_images(encoder, images, cache_dir=tmp_path / "cache", num_workers=0, show_progress=False)
    assert result.vectors.shape == (9, 32) and result.vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(result.vectors, axis=1), 1, atol=1e-5)
    reversed_order = embed_images(encoder, images[::-1], cache_dir=tmp_path / "other", num_workers=0, show_progress=False)
    assert np.allclose(reversed_order.vectors[::-1], result.vectors, atol=1e-5)


def test_worker_processes_give_the_same_vectors(encoder, images, tmp_path):
    inline = embed_images(encoder, images, cache_dir=tmp_path / "a", num_workers=0, show_progress=False)
    workers = embed_images(encoder, images, cache_dir=tmp_path / "b", num_workers=2, show_progress=False)
    assert np.allclose(inline.vectors, workers.vectors, atol=1e-5)


def test_second_run_re_embeds_nothing_and_keys_follow_content(encoder, images, tmp_path):
    cache = tmp_path / "cache"
    first = embed_images(encoder, images, cache_dir=cache, num_workers=0, show_progress=False)
    assert (first.computed, first.from_cache) == (9, 0)
    second = embed_images(encoder, images, cache_dir=cache, num_workers=0, show_progress=False)
    assert (second.computed, second.from_cache) == (0, 9)
    assert np.array_equal(first.vectors, second.vectors)

    renamed = images[0].with_name("renamed.jpg")
    shutil.copy(images[0], renamed)
    edited = images[1]
    Image.new("RGB", (64, 64), (200, 10, 10)).save(edited)
    third = embed_images(encoder, [renamed, edited], cache_dir=cache, num_workers=0, show_progress=False)
    assert (third.computed, third.from_cache) == (1, 1)
    assert np.array_equal(third.vectors[0], first.vectors[0])
    assert len(EmbeddingCache(cache, encoder.fingerprint)) == 10


def test_unreadable_files_are_named_embedded_as_placeholder_and_not_cached(encoder, images, tmp_path):
    broken = images[2].with_name("broken.jpg")
    broken.write_bytes(images[2].read_bytes()[:200])
    empty = images[2].with_name("empty.jpg")
    empty.write_bytes(b"")
    paths = [images[0], broken, empty]
    result = embed_images(encoder, paths, cache_dir=tmp_path / "cache", num_workers=0, show_progress=False)
    assert [path.name for path, _ in result.unreadable] == ["broken.jpg", "empty.jpg"]
    assert result.readable_mask.tolist() == [True, False, False]
    assert np.allclose(result.vectors[1], result.vectors[2])  # both the grey placeholder
    again = embed_images(encoder, paths, cache_dir=tmp_path / "cache", num_workers=0, show_progress=False)
    assert again.computed == 2 and len(again.unreadable) == 2


def test_flip_tta_is_cached_separately_and_differs(encoder, images, tmp_path):
    cache = tmp_path / "cache"
    plain = embed_images(encoder, images[:3], cache_dir=cache, num_workers=0, show_progress=False)
    flipped = embed_images(encoder, images[:3], cache_dir=cache, flip_tta=True, num_workers=0, show_progress=False)
    assert flipped.computed == 3
    assert not np.allclose(plain.vectors, flipped.vectors)
    assert np.allclose(np.linalg.norm(flipped.vectors, axis=1), 1, atol=1e-5)


def test_a_damaged_cache_part_is_ignored(encoder, images, tmp_path):
    cache = tmp_path / "cache"
    embed_images(encoder, images[:2], cache_dir=cache, num_workers=0, show_progress=False)
    (cache / encoder.fingerprint / "part-0-damaged.npz").write_bytes(b"garbage")
    again = embed_images(encoder, images[:2], cache_dir=cache, num_workers=0, show_progress=False)
    assert again.from_cache == 2


def test_file_digest_depends_on_bytes_only(tmp_path):
    (tmp_path / "a").write_bytes(b"same")
    (tmp_path / "b").write_bytes(b"same")
    (tmp_path / "c").write_bytes(b"other")
    assert file_digest(tmp_path / "a") == file_digest(tmp_path / "b") != file_digest(tmp_path / "c")


def test_a_flip_pass_after_the_plain_one_reuses_the_plain_half(encoder, images, tmp_path, monkeypatch):
    cold = embed_images(encoder, images, cache_dir=tmp_path / "cold", flip_tta=True, num_workers=0,
                        show_progress=False)
    calls = []
    original = type(encoder).encode
    monkeypatch.setattr(type(encoder), "encode", lambda self, batch: calls.append(len(batch)) or original(self, batch))
    embed_images(encoder, images, cache_dir=tmp_path / "warm", num_workers=0, show_progress=False)
    plain_passes = len(calls)
    warm = embed_images(encoder, images, cache_dir=tmp_path / "warm", flip_tta=True, num_workers=0,
                        show_progress=False)
    assert len(calls) - plain_passes == plain_passes        # only the mirrored pass: one model pass a batch
    np.testing.assert_array_equal(warm.vectors, cold.vectors)
