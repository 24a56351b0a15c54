"""Large galleries: exact search in bounded chunks equals one whole-gallery search (ties included), a
memmap gallery is read in chunks, and the approximate index is used above its threshold with its
measured recall printed."""
import re

import faiss
import numpy as np
import pytest

from strategies.base import l2_normalise
from toolkit.retrieval.approximate_index import ApproximateIndex, RECALL_TARGET, recall_at
from toolkit.retrieval.exact_search import FAISS_GALLERY_BLOCK, exact_top_k
from toolkit.retrieval.search import top_k

ONE_BLOCK = FAISS_GALLERY_BLOCK * 4  # chunk budget in bytes for one faiss block of width-1 rows


def _tied(rng, rows, queries, width=16):
    """Integer rows drawn from few distinct ones: many exactly equal scores, at the k-th place too."""
    distinct = rng.integers(-2, 3, size=(300, width)).astype(np.float32)
    return distinct[rng.integers(0, 300, queries)], distinct[rng.integers(0, 300, rows)]


def _clustered(rng, rows, centres, spread=0.35):
    return l2_normalise(centres[rng.integers(0, len(centres), rows)]
                        + spread * rng.normal(size=(rows, centres.shape[1])) / np.sqrt(centres.shape[1]))


@pytest.mark.parametrize("n_queries", [7, 300])
@pytest.mark.parametrize("k", [1, 10, 50])
def test_chunked_exact_equals_one_search_ties_included(n_queries, k):
    rng = np.random.default_rng(n_queries + k)
    queries, gallery = _tied(rng, 5000, n_queries)
    whole = top_k(queries, gallery, k)  # within one chunk: one faiss search over the whole gallery
    chunked = exact_top_k(queries, gallery, k, chunk_bytes=ONE_BLOCK * gallery.shape[1])  # 5 chunks
    scores = queries @ gallery.T
    assert (np.sort(scores, axis=1)[:, ::-1][:, k - 1] == np.sort(scores, axis=1)[:, ::-1][:, k]).any(), \
        "the data must tie at the k-th place"
    assert chunked[1].tolist() == whole[1].tolist()
    assert np.array_equal(chunked[0], whole[0])


def test_a_competition_sized_gallery_is_searched_as_before(capsys):
    rng = np.random.default_rng(2)
    queries, gallery = _tied(rng, 1313, 600, width=512)
    index = faiss.IndexFlatIP(512)  # the search as it was: one flat index over the whole gallery
    index.add(gallery)
    expected = index.search(queries, 10)
    found = top_k(queries, gallery, 10)
    assert found[1].tolist() == expected[1].tolist() and np.array_equal(found[0], expected[0])
    assert "approximate" not in capsys.readouterr().out


def test_chunked_exact_with_k_beyond_the_gallery_or_no_queries():
    rng = np.random.default_rng(7)
    queries, gallery = _tied(rng, 1500, 30)
    similarities, indices = exact_top_k(queries, gallery, 2000, chunk_bytes=ONE_BLOCK * 16)
    assert indices.shape == (30, 1500) and sorted(indices[0].tolist()) == list(range(1500))
    assert exact_top_k(queries[:0], gallery, 10)[1].shape == (0, 0)


def test_chunked_exact_equals_one_search_on_real_valued_rows():
    rng = np.random.default_rng(3)
    queries, gallery = l2_normalise(rng.normal(size=(200, 64))), l2_normalise(rng.normal(size=(9000, 64)))
    whole = top_k(queries, gallery, 10)
    chunked = exact_top_k(queries.astype(np.float32), gallery, 10, chunk_bytes=3 * ONE_BLOCK * 64)
    assert chunked[1].tolist() == whole[1].tolist()
    assert np.array_equal(chunked[0], whole[0])


class ReadLog:
    """A real memmap that records how many rows each read asked for."""

    def __init__(self, array):
        self.array, self.shape, self.reads = array, array.shape, []

    def __getitem__(self, rows):
        part = self.array[rows]
        self.reads.append(len(part))
        return part


def test_memmap_gallery_is_read_in_chunks_and_answers_exactly(tmp_path):
    rng = np.random.default_rng(4)
    queries, gallery = _tied(rng, 6000, 40, width=8)
    on_disk = np.lib.format.open_memmap(tmp_path / "gallery.npy", mode="w+", dtype=np.float32, shape=gallery.shape)
    on_disk[:] = gallery
    on_disk.flush()
    del on_disk
    mapped = ReadLog(np.load(tmp_path / "gallery.npy", mmap_mode="r"))
    assert isinstance(mapped.array, np.memmap)
    similarities, indices = exact_top_k(queries, mapped, 10, chunk_bytes=ONE_BLOCK * 8)
    assert max(mapped.reads) == FAISS_GALLERY_BLOCK and sum(mapped.reads) >= len(gallery)
    expected = top_k(queries, gallery, 10)
    assert indices.tolist() == expected[1].tolist() and np.array_equal(similarities, expected[0])


def _printed_recall(output: str) -> float:
    match = re.search(r"recall@10 ([0-9.]+) against exact search", output)
    assert match, output
    return float(match.group(1))


def test_top_k_above_the_threshold_uses_a_tuned_index_and_prints_its_recall(capsys):
    rng = np.random.default_rng(5)
    centres = l2_normalise(rng.normal(size=(150, 32)))
    gallery, queries = _clustered(rng, 4000, centres), _clustered(rng, 700, centres)
    exact = top_k(queries, gallery, 10)
    assert "approximate search" not in capsys.readouterr().out  # at or below the threshold: exact
    similarities, indices = top_k(queries, gallery, 10, approximate_above=3999)
    output = capsys.readouterr().out
    assert "HNSW" in output and _printed_recall(output) >= RECALL_TARGET
    assert indices.shape == (700, 10) and (indices >= 0).all()
    assert recall_at(exact[1], indices) >= 0.9  # on all the queries, not only the measured sample
    assert np.allclose(similarities, np.take_along_axis(queries @ gallery.T, indices, 1), atol=1e-5)


def test_an_ivf_index_over_a_memmap_raises_nprobe_until_the_recall_holds(tmp_path, capsys):
    rng = np.random.default_rng(6)
    centres = l2_normalise(rng.normal(size=(200, 32)))
    on_disk = np.lib.format.open_memmap(tmp_path / "gallery.npy", mode="w+", dtype=np.float32, shape=(6000, 32))
    on_disk[:] = _clustered(rng, 6000, centres, spread=1.0)
    on_disk.flush()
    gallery = np.load(tmp_path / "gallery.npy", mmap_mode="r")
    queries = _clustered(rng, 300, centres, spread=1.0).astype(np.float32)
    index = ApproximateIndex.build(gallery, hnsw_up_to=5000)
    recall = index.tune(queries[:150])
    output = capsys.readouterr().out
    assert index.kind.startswith("IVF") and "nprobe" in output
    assert _printed_recall(output) == pytest.approx(recall, abs=5e-4) and recall >= RECALL_TARGET
    assert index.parameter > 1  # one list alone misses neighbours: tuning had to raise nprobe
    exact = exact_top_k(queries, gallery, 10)[1]
    assert recall_at(exact[150:], index.search(queries[150:], 10)[1]) >= 0.9
