from pathlib import Path

import pytest

from toolkit.data.dataset import LabelledImage
from toolkit.data.split import make_validation_split


def _training(counts: dict[str, int], stylised: bool = False) -> list[LabelledImage]:
    items = []
    for label, count in counts.items():
        for number in range(count):
            suffix = "_s" if stylised and number % 2 else ""
            items.append(LabelledImage(Path(f"/t/{label}/{label}_{number}{suffix}.jpg"), label))
    return items


TRAINING = _training({f"id{n:02d}": 1 + n % 6 for n in range(40)})


def test_identities_never_on_both_sides_and_nothing_lost():
    split = make_validation_split(TRAINING, held_out_fraction=0.25, seed=3)
    fit_labels = {item.label for item in split.fit}
    assert not fit_labels & split.held_out_identities
    assert len(split.held_out_identities) == 10
    everything = split.fit + split.queries + split.gallery
    assert sorted(map(str, (item.path for item in everything))) == sorted(str(item.path) for item in TRAINING)


def test_every_query_identity_has_a_gallery_match():
    split = make_validation_split(TRAINING, held_out_fraction=0.3, seed=1)
    gallery_labels = {item.label for item in split.gallery}
    assert split.queries and all(item.label in gallery_labels for item in split.queries)
    assert not {item.path for item in split.queries} & {item.path for item in split.gallery}


def test_single_image_identities_become_gallery_distractors():
    training = _training({"solo": 1, "pair": 2})
    split = make_validation_split(training, held_out_fraction=0.99, seed=0)
    assert [item.label for item in split.queries] == ["pair"]
    assert sorted(item.label for item in split.gallery) == ["pair", "solo"]


def test_seeded_and_reproducible():
    first = make_validation_split(TRAINING, seed=7)
    assert first == make_validation_split(TRAINING, seed=7)
    assert first != make_validation_split(TRAINING, seed=8)


def test_gallery_pattern_gives_stylised_files_the_gallery_role():
    training = _training({f"id{n}": 4 for n in range(10)}, stylised=True)
    split = make_validation_split(training, held_out_fraction=0.5, seed=0, gallery_pattern="*_s.*")
    assert all(item.path.stem.endswith("_s") for item in split.gallery)
    assert not any(item.path.stem.endswith("_s") for item in split.queries)


def test_bad_inputs_say_what_is_wrong():
    with pytest.raises(ValueError, match="two or more images"):
        make_validation_split(_training({"a": 1, "b": 1}))
    with pytest.raises(ValueError, match="between 0 and 1"):
        make_validation_split(TRAINING, held_out_fraction=1.5)


def test_detects_the_stylised_marker_in_file_names():
    from toolkit.data.split import detect_gallery_pattern

    assert detect_gallery_pattern(_training({f"id{n}": 4 for n in range(10)}, stylised=True)) == "*_s.*"
    assert detect_gallery_pattern(_training({f"id{n}": 4 for n in range(10)})) is None  # numbers only
    marked_everywhere = [LabelledImage(Path(f"/t/a/a_{n}_x.jpg"), "a") for n in range(6)]
    assert detect_gallery_pattern(marked_everywhere) is None  # on every file: marks nothing


def test_detection_on_the_generated_competition(synthetic_competition):
    from toolkit.data.dataset import find_competition
    from toolkit.data.split import detect_gallery_pattern

    assert detect_gallery_pattern(find_competition(synthetic_competition).training) == "*_s.*"


def test_few_identities_get_more_folds_none_held_out_twice():
    from toolkit.data.split import make_validation_folds, make_validation_split

    training = _training({f"id{n:02d}": 3 for n in range(12)})
    folds = make_validation_folds(training, held_out_fraction=0.2, seed=0, min_identities=20)
    assert folds[0] == make_validation_split(training, held_out_fraction=0.2, seed=0)
    assert len(folds) == 5                              # 2 identities a fold, capped at five folds
    held = [fold.held_out_identities for fold in folds]
    assert all(not a & b for i, a in enumerate(held) for b in held[i + 1:])
    for fold in folds:
        assert not {item.label for item in fold.fit} & fold.held_out_identities
    many = _training({f"id{n:03d}": 3 for n in range(150)})
    assert len(make_validation_folds(many, held_out_fraction=0.2, seed=0, min_identities=20)) == 1


def test_a_split_with_few_queries_gets_more_folds_counted_after_shaping():
    from toolkit.data.split import make_validation_folds, without_queries_of

    many = _training({f"id{n:03d}": 3 for n in range(150)})        # 30 held out, 60 queries a fold
    [one] = make_validation_folds(many, held_out_fraction=0.2, seed=0, min_identities=20)
    folds = make_validation_folds(many, held_out_fraction=0.2, seed=0, min_identities=20, min_queries=100)
    assert folds[0] == one and len(folds) > 1
    assert sum(len(fold.queries) for fold in folds) >= 100
    assert sum(len(fold.queries) for fold in folds[:-1]) < 100     # no more folds than it takes
    # the queries are counted after shaping: leaving out some identities' queries takes more folds
    left_out = {f"id{n:03d}" for n in range(0, 150, 2)}
    shaped = make_validation_folds(many, held_out_fraction=0.2, seed=0, min_identities=1, min_queries=100,
                                   shape=lambda fold: without_queries_of(fold, left_out))
    assert len(shaped) > len(folds)
    assert not {item.label for fold in shaped for item in fold.queries} & left_out


def test_roles_are_the_same_in_every_fold_and_in_the_role_split():
    from toolkit.data.split import make_validation_folds, role_split

    training = _training({f"id{n:02d}": 4 for n in range(10)})
    everything = role_split(training, seed=3)
    assert not everything.fit and everything.held_out_identities == {item.label for item in training}
    queries = {item.path for item in everything.queries}
    for fold in make_validation_folds(training, held_out_fraction=0.2, seed=3, min_identities=10):
        assert {item.path for item in fold.queries} <= queries
        assert not {item.path for item in fold.gallery} & queries


def test_validation_is_shaped_like_the_test_with_distractor_identities():
    from toolkit.data.split import distractor_identities, role_split, without_queries_of

    training = _training({f"id{n:02d}": 4 for n in range(40)}, stylised=True)   # 2 queries, 2 gallery each
    assert distractor_identities(training, 0, "*_s.*", None) == set()
    assert distractor_identities(training, 0, "*_s.*", 0.5) == set()       # already more gallery than that
    distractors = distractor_identities(training, 0, "*_s.*", 2.0)          # the test: 2 gallery a query
    assert 12 <= len(distractors) <= 28                                     # about half, drawn per identity
    assert distractors == distractor_identities(list(reversed(training)), 0, "*_s.*", 2.0)
    shaped = without_queries_of(role_split(training, 0, "*_s.*"), distractors)
    assert not {item.label for item in shaped.queries} & distractors
    assert len(shaped.gallery) == 80 and len(shaped.queries) == 2 * (40 - len(distractors))
    everyone = {item.label for item in training}
    assert without_queries_of(role_split(training, 0, "*_s.*"), everyone).queries   # one identity keeps queries
