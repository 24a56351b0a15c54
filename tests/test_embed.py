import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from PIL import Image
from torch.utils.data import get_worker_info

from strategies import create_strategy
from tests.conftest import PROJECT
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


def _part_bytes(encoder, paths, folder) -> bytes:
    """The bytes of the one cache part that embedding `paths` into a fresh cache writes."""
    embed_images(encoder, paths, cache_dir=folder, num_workers=0, show_progress=False)
    [part] = (folder / encoder.fingerprint).glob("part-*.npz")
    return part.read_bytes()


def test_damaged_cache_parts_are_skipped_removed_with_one_warning_and_embedded_again(encoder, images, tmp_path,
                                                                                      capsys):
    cache = tmp_path / "cache"
    first = embed_images(encoder, images[:3], cache_dir=cache, num_workers=0, show_progress=False)
    whole = _part_bytes(encoder, images[3:6], tmp_path / "elsewhere")     # a real part of images 3-5
    folder = cache / encoder.fingerprint
    overwritten = bytearray(whole)
    overwritten[len(whole) // 2:len(whole) // 2 + 64] = os.urandom(64)     # a page of the data overwritten
    damaged = {"part-1-truncated.npz": whole[:len(whole) // 2],
               "part-2-leftover.npz.tmp.npz": whole[:len(whole) - 40],    # an older version's half-written part
               "part-3-garbage.npz": os.urandom(3000),
               "part-4-empty.npz": b"",
               "part-5-overwritten.npz": bytes(overwritten)}
    for name, content in damaged.items():
        (folder / name).write_bytes(content)
    capsys.readouterr()

    again = embed_images(encoder, images[:6], cache_dir=cache, num_workers=0, show_progress=False)
    fresh = embed_images(encoder, images[:6], cache_dir=tmp_path / "fresh", num_workers=0, show_progress=False)
    assert (again.from_cache, again.computed) == (3, 3)                   # only the good part was read
    np.testing.assert_allclose(again.vectors, fresh.vectors, atol=1e-6)
    np.testing.assert_array_equal(again.vectors[:3], first.vectors)
    warnings = [line for line in capsys.readouterr().out.splitlines() if "damaged" in line]
    assert len(warnings) == 1 and "5 damaged parts" in warnings[0] and "embedded again" in warnings[0]
    assert not any((folder / name).exists() for name in damaged)
    third = embed_images(encoder, images[:6], cache_dir=cache, num_workers=0, show_progress=False)
    assert third.from_cache == 6 and "damaged" not in capsys.readouterr().out


KILLED_WHILE_WRITING = """
import os, signal, sys
import numpy as np
sys.path.insert(0, {project!r})
from toolkit.retrieval.embed import EmbeddingCache

def half_then_killed(file, **arrays):
    stream = file if hasattr(file, "write") else open(file, "wb")
    stream.write(b"PK\\x03\\x04" + bytes(500))           # the start of a zip, and no more
    stream.flush()
    os.kill(os.getpid(), signal.SIGKILL)

np.savez = half_then_killed
EmbeddingCache({root!r}, "fingerprint").put(["a", "b"], np.ones((2, 4), np.float32))
"""


def test_a_process_killed_while_writing_a_part_leaves_nothing_a_reader_trips_on(tmp_path):
    script = tmp_path / "killed.py"
    script.write_text(KILLED_WHILE_WRITING.format(project=str(PROJECT), root=str(tmp_path / "cache")))
    killed = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert list((tmp_path / "cache" / "fingerprint").iterdir())            # it left its half-written file
    cache = EmbeddingCache(tmp_path / "cache", "fingerprint")
    assert len(cache) == 0 and cache.get("a") is None
    cache.put(["c"], np.ones((1, 4), np.float32))
    assert len(EmbeddingCache(tmp_path / "cache", "fingerprint")) == 1


def test_a_cache_that_cannot_be_written_is_a_warning_and_the_vectors_are_used(encoder, images, tmp_path, capsys):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / encoder.fingerprint).write_text("a file where the cache folder should be")
    result = embed_images(encoder, images[:3], cache_dir=cache, num_workers=0, show_progress=False)
    reference = embed_images(encoder, images[:3], cache_dir=tmp_path / "good", num_workers=0, show_progress=False)
    np.testing.assert_allclose(result.vectors, reference.vectors, atol=1e-6)
    assert "not written" in capsys.readouterr().out


class InterruptedOnThirdBatch:
    """Wraps an encoder: a real SIGINT to this process while the third batch is encoded."""

    def __init__(self, encoder):
        self.encoder, self.batches = encoder, 0

    def __getattr__(self, name):
        return getattr(self.encoder, name)

    def encode(self, batch):
        self.batches += 1
        if self.batches == 3:
            os.kill(os.getpid(), signal.SIGINT)
        return self.encoder.encode(batch)


class StuckInWorkers:
    """Wraps an encoder: in a DataLoader worker, preprocessing is one long call that no signal but
    SIGTERM ends (as a C call that checks for none: a big decode, a face detector on a busy
    machine). Each stuck worker leaves a file in `folder`."""

    def __init__(self, encoder, folder):
        self.encoder, self.folder = encoder, folder

    def __getattr__(self, name):
        return getattr(self.encoder, name)

    def preprocess(self, image):
        if get_worker_info() is not None:
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
            (self.folder / f"stuck-{os.getpid()}").touch()
            time.sleep(60)
        return self.encoder.preprocess(image)


def test_ctrl_c_while_workers_are_stuck_in_a_long_call_ends_the_embedding_within_5_seconds(encoder, images, tmp_path):
    """The issue's bound for a Ctrl-C (torch by itself waits 5 s for each worker, then terminates it)."""
    pressed_at = []

    def press_once_both_are_stuck():
        given_up_at = time.monotonic() + 60
        while len(list(tmp_path.glob("stuck-*"))) < 2 and time.monotonic() < given_up_at:
            time.sleep(0.02)
        pressed_at.append(time.monotonic())
        os.kill(os.getpid(), signal.SIGINT)

    presser = threading.Thread(target=press_once_both_are_stuck)
    presser.start()
    with pytest.raises(KeyboardInterrupt):
        embed_images(StuckInWorkers(encoder, tmp_path), images, cache_dir=tmp_path / "cache", num_workers=2,
                     show_progress=False)
    stopped_at = time.monotonic()
    presser.join()
    assert len(list(tmp_path.glob("stuck-*"))) == 2
    assert stopped_at - pressed_at[0] < 5.0
    assert multiprocessing.active_children() == []


def test_ctrl_c_while_workers_embed_stops_them_at_once_and_keeps_what_was_computed(encoder, images, tmp_path):
    interrupted = InterruptedOnThirdBatch(encoder)
    with pytest.raises(KeyboardInterrupt):
        embed_images(interrupted, images, cache_dir=tmp_path / "cache", num_workers=2, show_progress=False)
    assert multiprocessing.active_children() == []          # stopped before the interrupt left embed_images
    kept = EmbeddingCache(tmp_path / "cache", encoder.fingerprint)
    assert len(kept) == 2 * encoder.batch_size              # the two batches encoded before it
    again = embed_images(encoder, images, cache_dir=tmp_path / "cache", num_workers=2, show_progress=False)
    assert (again.from_cache, again.computed) == (2 * encoder.batch_size, len(images) - 2 * encoder.batch_size)


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
