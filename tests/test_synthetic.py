import hashlib

from PIL import Image

from toolkit.data.dataset import find_competition
from toolkit.data.synthetic import make_synthetic_competition


def digest(root):
    return hashlib.sha1(b"".join(path.read_bytes() for path in sorted(root.rglob("*.jpg")))).hexdigest()


def test_same_seed_same_bytes_whatever_ran_before(tmp_path):
    first = make_synthetic_competition(tmp_path / "a", training_identities=3, test_identities=2, distractors=1)
    Image.effect_noise((32, 32), 10)   # moves C's rand() state, which the generator must not depend on
    second = make_synthetic_competition(tmp_path / "b", training_identities=3, test_identities=2, distractors=1)
    assert digest(first) == digest(second)
    other = make_synthetic_competition(tmp_path / "c", training_identities=3, test_identities=2, distractors=1, seed=1)
    assert digest(other) != digest(first)


def test_competition_shape(tmp_path):
    root = make_synthetic_competition(tmp_path / "c", training_identities=4, test_identities=3, distractors=2,
                                      photos_per_identity=2)
    data = find_competition(root)
    assert data.summary()["identities"] == 4 and len(data.training) == 4 * 2 * 2
    assert len(data.queries) == 3 * 2 and len(data.gallery) == 3 * 2 + 2
