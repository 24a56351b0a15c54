import json

import numpy as np
import pytest

from strategies.base import l2_normalise
from toolkit.retrieval.search import top_k
from toolkit.submit.submission import (SubmissionError, build_submission, load_submission, save_submission,
                                validate_submission)


def test_top_k_matches_brute_force_cosine():
    rng = np.random.default_rng(0)
    queries, gallery = l2_normalise(rng.normal(size=(7, 16))), l2_normalise(rng.normal(size=(30, 16)))
    similarities, indices = top_k(queries, gallery, 10)
    expected = np.argsort(-(queries @ gallery.T), axis=1)[:, :10]
    assert indices.tolist() == expected.tolist()
    assert np.allclose(similarities, np.take_along_axis(queries @ gallery.T, expected, axis=1), atol=1e-5)


def test_top_k_larger_than_gallery_and_width_mismatch():
    assert top_k(np.eye(3, dtype=np.float32), np.eye(3, dtype=np.float32), 10)[1].shape == (3, 3)
    with pytest.raises(ValueError, match="one width"):
        top_k(np.zeros((2, 4)), np.zeros((3, 5)), 2)


GALLERY = [f"g{n}.jpg" for n in range(12)]


def _good() -> dict:
    return {"q1.jpg": GALLERY[:10], "q2.jpg": GALLERY[2:12]}


def test_build_uses_basenames_in_rank_order(tmp_path):
    submission = build_submission([tmp_path / "query" / "q1.jpg"], [tmp_path / "g" / name for name in GALLERY],
                                  np.array([[3, 1, 2]]))
    assert submission == {"q1.jpg": ["g3.jpg", "g1.jpg", "g2.jpg"]}


@pytest.mark.parametrize("mutate, message", [
    (lambda s: s.pop("q2.jpg"), "queries missing"),
    (lambda s: s.update({"zz.jpg": GALLERY[:10]}), "not queries"),
    (lambda s: s.update({"q1.jpg": GALLERY[:9]}), "9 results, expected 10"),
    (lambda s: s.update({"q1.jpg": GALLERY[:9] + ["g0.jpg"]}), "repeated"),
    (lambda s: s.update({"q1.jpg": GALLERY[:9] + ["nope.jpg"]}), "unknown gallery names"),
    (lambda s: s.update({"q1.jpg": "g1.jpg"}), "must be a list"),
])
def test_validation_names_the_problem(mutate, message):
    submission = _good()
    validate_submission(submission, ["q1.jpg", "q2.jpg"], GALLERY)
    mutate(submission)
    with pytest.raises(SubmissionError, match=message):
        validate_submission(submission, ["q1.jpg", "q2.jpg"], GALLERY)


def test_a_gallery_smaller_than_k_needs_all_of_it():
    validate_submission({"q.jpg": GALLERY[:3]}, ["q.jpg"], GALLERY[:3])


def test_save_and_load_round_trip(tmp_path):
    path = save_submission(_good(), tmp_path / "subs", "clip-zs[model=ViT-B/32]", when=0)
    assert path.name.endswith("-clip-zs-model-ViT-B-32-.json") or path.name.endswith("-clip-zs-model-ViT-B-32.json")
    assert load_submission(path) == _good()
    assert not list((tmp_path / "subs").glob("*.tmp"))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(SubmissionError, match="not valid JSON"):
        load_submission(tmp_path / "bad.json")
    (tmp_path / "list.json").write_text(json.dumps([1]))
    with pytest.raises(SubmissionError, match="JSON object"):
        load_submission(tmp_path / "list.json")
    with pytest.raises(SubmissionError, match="no such"):
        load_submission(tmp_path / "absent.json")
