"""Tests for toolkit.data.dataset: finding the competition layout on disk and reporting what is wrong with it."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from toolkit.data.dataset import (
    CompetitionData,
    LabelledImage,
    LayoutError,
    describe,
    find_competition,
)


def write_image(path: Path, colour=(120, 60, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), colour).save(path)
    return path


def make_competition(
    root: Path,
    training_name: str = "training",
    identities: dict[str, list[str]] | None = None,
    queries: list[str] | None = None,
    gallery: list[str] | None = None,
) -> Path:
    """Real image files in the competition layout under *root*."""
    identities = identities if identities is not None else {"bob": ["b1.jpg", "b2.png"], "alice": ["a1.jpg"]}
    queries = queries if queries is not None else ["q2.jpg", "q1.jpg"]
    gallery = gallery if gallery is not None else ["g1.jpg", "g3.png", "g2.jpg"]
    for identity, names in identities.items():
        (root / training_name / identity).mkdir(parents=True, exist_ok=True)
        for name in names:
            write_image(root / training_name / identity / name)
    (root / "test" / "query").mkdir(parents=True, exist_ok=True)
    (root / "test" / "gallery").mkdir(parents=True, exist_ok=True)
    for name in queries:
        write_image(root / "test" / "query" / name)
    for name in gallery:
        write_image(root / "test" / "gallery" / name)
    return root


# --- layouts that work ------------------------------------------------------------------


def test_plain_layout(tmp_path):
    root = make_competition(tmp_path / "comp")
    data = find_competition(root)
    assert isinstance(data, CompetitionData)
    assert data.root == root
    assert data.training == [
        LabelledImage(root / "training" / "alice" / "a1.jpg", "alice"),
        LabelledImage(root / "training" / "bob" / "b1.jpg", "bob"),
        LabelledImage(root / "training" / "bob" / "b2.png", "bob"),
    ]
    assert data.queries == [root / "test" / "query" / "q1.jpg", root / "test" / "query" / "q2.jpg"]
    assert data.gallery == [root / "test" / "gallery" / name for name in ("g1.jpg", "g2.jpg", "g3.png")]
    assert data.ignored == []
    assert data.identities() == ["alice", "bob"]
    assert data.summary() == {"identities": 2, "training_images": 3, "queries": 2, "gallery_images": 3, "ignored": 0}
    assert describe(data) == "2 identities, 3 training images, 2 queries, 3 gallery images"


def test_accepts_a_string_path(tmp_path):
    root = make_competition(tmp_path / "comp")
    assert find_competition(str(root)).root == root


def test_train_alias(tmp_path):
    root = make_competition(tmp_path / "comp", training_name="train")
    data = find_competition(root)
    assert [image.label for image in data.training] == ["alice", "bob", "bob"]
    assert data.training[0].path == root / "train" / "alice" / "a1.jpg"


def test_layout_wrapped_in_two_single_folders(tmp_path):
    inner = make_competition(tmp_path / "data" / "comp" / "comp-2024")
    data = find_competition(tmp_path / "data")
    assert data.root == inner
    assert data.summary()["training_images"] == 3


def test_macosx_and_ds_store_beside_the_wrapper_are_ignored(tmp_path):
    inner = make_competition(tmp_path / "download" / "comp")
    write_image(tmp_path / "download" / "__MACOSX" / "comp" / "._x.jpg")
    (tmp_path / "download" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (tmp_path / "download" / ".hidden-folder").mkdir()
    data = find_competition(tmp_path / "download")
    assert data.root == inner


def test_wrappers_deeper_than_three_levels_are_not_searched(tmp_path):
    make_competition(tmp_path / "a" / "b" / "c" / "d" / "comp")
    with pytest.raises(LayoutError, match="no training/ and no test/"):
        find_competition(tmp_path / "a")
    assert find_competition(tmp_path / "a" / "b").root == tmp_path / "a" / "b" / "c" / "d" / "comp"


def test_nested_identity_subfolders_are_labelled_by_the_top_folder(tmp_path):
    root = make_competition(tmp_path / "comp", identities={"carol": ["top.jpg"]})
    write_image(root / "training" / "carol" / "2019" / "summer" / "deep.jpg")
    write_image(root / "training" / "carol" / "2020" / "mid.png")
    data = find_competition(root)
    assert data.training == [
        LabelledImage(root / "training" / "carol" / "2019" / "summer" / "deep.jpg", "carol"),
        LabelledImage(root / "training" / "carol" / "2020" / "mid.png", "carol"),
        LabelledImage(root / "training" / "carol" / "top.jpg", "carol"),
    ]
    assert data.identities() == ["carol"]


def test_query_and_gallery_are_searched_recursively(tmp_path):
    root = make_competition(tmp_path / "comp", gallery=["g1.jpg"])
    write_image(root / "test" / "gallery" / "part2" / "g9.jpg")
    data = find_competition(root)
    assert data.gallery == [root / "test" / "gallery" / "g1.jpg", root / "test" / "gallery" / "part2" / "g9.jpg"]


def test_non_image_and_hidden_files_are_reported_in_ignored(tmp_path):
    root = make_competition(tmp_path / "comp")
    (root / "training" / "bob" / "notes.txt").write_text("bob is tall")
    (root / "training" / "labels.csv").write_text("a,b\n")
    write_image(root / "training" / "stray.jpg")
    (root / "training" / "bob" / "._b1.jpg").write_bytes(b"\0\5\26\7")
    (root / "training" / "empty_person").mkdir()
    (root / "test" / "query" / "Thumbs.db").write_bytes(b"\1")
    (root / "test" / "answers.json").write_text("{}")
    (root / "answers.json").write_text("{}")  # beside the layout: not part of it, not reported
    data = find_competition(root)
    assert data.ignored == [
        (root / "test" / "answers.json", "in test/ but not in test/query/ or test/gallery/"),
        (root / "test" / "query" / "Thumbs.db", "not an image file"),
        (root / "training" / "bob" / "._b1.jpg", "hidden file (macOS AppleDouble metadata, not an image)"),
        (root / "training" / "bob" / "notes.txt", "not an image file"),
        (root / "training" / "empty_person", "identity folder has no images"),
        (root / "training" / "labels.csv", "not an image file"),
        (root / "training" / "stray.jpg", "image directly in training/, not in an identity folder"),
    ]
    assert data.identities() == ["alice", "bob"]  # empty_person contributes nothing
    assert len(data.training) == 3 and len(data.queries) == 2
    assert describe(data) == "2 identities, 3 training images, 2 queries, 3 gallery images (7 files ignored)"


def test_macosx_inside_training_is_not_an_identity(tmp_path):
    root = make_competition(tmp_path / "comp")
    write_image(root / "training" / "__MACOSX" / "bob" / "._b1.jpg")
    data = find_competition(root)
    assert "__MACOSX" not in data.identities()
    assert (root / "training" / "__MACOSX", "macOS archive metadata folder, not data") in data.ignored


def test_order_is_deterministic(tmp_path):
    first = find_competition(make_competition(tmp_path / "one"))
    second = find_competition(make_competition(tmp_path / "one"))
    assert first == second


def test_describe_uses_thousands_separators_and_singulars(tmp_path):
    data = CompetitionData(
        root=tmp_path,
        training=[LabelledImage(tmp_path / f"{index}.jpg", f"id{index}") for index in range(1234)],
        queries=[tmp_path / "q.jpg"],
        gallery=[tmp_path / f"g{index}.jpg" for index in range(1313)],
        ignored=[(tmp_path / "x.txt", "not an image file")],
    )
    assert describe(data) == "1,234 identities, 1,234 training images, 1 query, 1,313 gallery images (1 file ignored)"


# --- layouts that do not work -------------------------------------------------------------


def test_missing_gallery_names_the_folder(tmp_path):
    root = make_competition(tmp_path / "comp")
    for path in (root / "test" / "gallery").iterdir():
        path.unlink()
    (root / "test" / "gallery").rmdir()
    with pytest.raises(LayoutError) as caught:
        find_competition(root)
    message = str(caught.value)
    assert "test/gallery/" in message
    assert str(root / "test" / "gallery") in message
    assert "test/query/<image>" in message  # shows the expected layout


def test_missing_training_names_the_searched_wrapper_folder(tmp_path):
    root = tmp_path / "outer" / "comp"
    write_image(root / "test" / "query" / "q.jpg")
    write_image(root / "test" / "gallery" / "g.jpg")
    with pytest.raises(LayoutError) as caught:
        find_competition(tmp_path / "outer")
    message = str(caught.value)
    assert "Missing folder training/" in message
    assert str(root) in message and str(tmp_path / "outer") in message


def test_empty_query_folder(tmp_path):
    root = make_competition(tmp_path / "comp", queries=[])
    with pytest.raises(LayoutError, match="no query images") as caught:
        find_competition(root)
    assert str(root / "test" / "query") in str(caught.value)


def test_query_folder_with_only_non_images(tmp_path):
    root = make_competition(tmp_path / "comp", queries=[])
    (root / "test" / "query" / "readme.txt").write_text("queries coming soon")
    with pytest.raises(LayoutError, match="no query images.*readme.txt"):
        find_competition(root)


def test_empty_training_folder(tmp_path):
    root = make_competition(tmp_path / "comp", identities={})
    (root / "training").mkdir()
    (root / "training" / "nobody").mkdir()
    with pytest.raises(LayoutError, match="no training images"):
        find_competition(root)


def test_training_images_without_identity_folders(tmp_path):
    root = make_competition(tmp_path / "comp", identities={})
    write_image(root / "training" / "a.jpg")
    with pytest.raises(LayoutError, match="1 image"):
        find_competition(root)


def test_duplicate_gallery_basenames_in_two_subfolders(tmp_path):
    root = make_competition(tmp_path / "comp", gallery=["g1.jpg"])
    first = write_image(root / "test" / "gallery" / "part1" / "same.jpg")
    second = write_image(root / "test" / "gallery" / "part2" / "same.jpg")
    with pytest.raises(LayoutError) as caught:
        find_competition(root)
    message = str(caught.value)
    assert "'same.jpg'" in message
    assert str(first) in message and str(second) in message


def test_same_basename_in_query_and_gallery_is_allowed(tmp_path):
    root = make_competition(tmp_path / "comp", queries=["x.jpg"], gallery=["x.jpg"])
    data = find_competition(root)
    assert data.queries[0].name == data.gallery[0].name == "x.jpg"


def test_path_that_does_not_exist(tmp_path):
    with pytest.raises(LayoutError, match="no such folder") as caught:
        find_competition(tmp_path / "nope")
    assert str(tmp_path / "nope") in str(caught.value)


def test_path_that_is_a_file(tmp_path):
    archive = tmp_path / "comp.zip"
    archive.write_bytes(b"PK\3\4")
    with pytest.raises(LayoutError, match="is a file, not a folder.*unpack"):
        find_competition(archive)


def test_folder_with_several_candidates_lists_them(tmp_path):
    make_competition(tmp_path / "benchmarks" / "one")
    make_competition(tmp_path / "benchmarks" / "two")
    with pytest.raises(LayoutError) as caught:
        find_competition(tmp_path / "benchmarks")
    assert "one, two" in str(caught.value)


def test_pointing_at_the_training_folder_suggests_the_parent(tmp_path):
    root = make_competition(tmp_path / "comp")
    with pytest.raises(LayoutError, match="did you mean") as caught:
        find_competition(root / "training")
    assert str(root) in str(caught.value)


def test_training_and_train_together_are_ambiguous(tmp_path):
    root = make_competition(tmp_path / "comp")
    write_image(root / "train" / "dave" / "d.jpg")
    with pytest.raises(LayoutError, match="Ambiguous"):
        find_competition(root)


def test_layout_error_is_a_value_error():
    assert issubclass(LayoutError, ValueError)
