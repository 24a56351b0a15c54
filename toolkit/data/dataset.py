"""Finding and checking a competition's data layout.

A competition ships its data as::

    <competition folder>/
        training/<identity>/<image>      (train/ is accepted too)
        test/query/<image>
        test/gallery/<image>

:func:`find_competition` locates that layout (also inside the single wrapper
folders that unpacked archives tend to add), lists the labelled training images
and the query and gallery images in a deterministic order, records every file
it does not use and why, and raises :class:`LayoutError` with a message that
names the folder at fault and says what to do when the layout is unusable.
It only looks at names; decoding the images is :mod:`toolkit.data.images`' job.
"""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass, field
from pathlib import Path

from toolkit.data.images import is_image_name

__all__ = [
    "CompetitionData",
    "LabelledImage",
    "LayoutError",
    "check_gallery_pattern",
    "describe",
    "find_competition",
]

#: Accepted names of the training folder, preferred first.
TRAINING_FOLDER_NAMES = ("training", "train")

#: How many single wrapper folders :func:`find_competition` descends through.
MAX_WRAPPER_DEPTH = 3

EXPECTED_LAYOUT = """\
    <competition folder>/
        training/<identity>/<image>   (train/ is accepted too)
        test/query/<image>
        test/gallery/<image>"""

#: Folder names that archivers add and that never hold competition data.
_METADATA_FOLDERS = frozenset({"__MACOSX"})


class LayoutError(ValueError):
    """The competition folder does not have the expected layout."""


@dataclass(frozen=True)
class LabelledImage:
    """A training image and its identity (the name of its identity folder)."""

    path: Path
    label: str


@dataclass
class CompetitionData:
    """The images of one competition, as found on disk.

    ``root`` is the folder that holds ``training/`` and ``test/``;
    ``training`` is sorted by label then path, ``queries`` and ``gallery`` by
    path; ``ignored`` lists (path, reason) for every file or folder inside the
    layout that is not used.
    """

    root: Path
    training: list[LabelledImage] = field(default_factory=list)
    queries: list[Path] = field(default_factory=list)
    gallery: list[Path] = field(default_factory=list)
    ignored: list[tuple[Path, str]] = field(default_factory=list)

    def identities(self) -> list[str]:
        """The sorted identity labels that have at least one training image."""
        return sorted({image.label for image in self.training})

    def summary(self) -> dict[str, int]:
        """Counts: identities, training_images, queries, gallery_images, ignored."""
        return {
            "identities": len(self.identities()),
            "training_images": len(self.training),
            "queries": len(self.queries),
            "gallery_images": len(self.gallery),
            "ignored": len(self.ignored),
        }


def describe(data: CompetitionData) -> str:
    """One line for humans, e.g.
    ``"510 identities, 4,974 training images, 781 queries, 1,313 gallery images (3 files ignored)"``.
    """
    counts = data.summary()
    text = ", ".join(
        [
            _count(counts["identities"], "identity", "identities"),
            _count(counts["training_images"], "training image", "training images"),
            _count(counts["queries"], "query", "queries"),
            _count(counts["gallery_images"], "gallery image", "gallery images"),
        ]
    )
    if counts["ignored"]:
        text += f" ({_count(counts['ignored'], 'file', 'files')} ignored)"
    return text


def check_gallery_pattern(data: CompetitionData, pattern: str | None, option: str = "--gallery-pattern") -> None:
    """Raise LayoutError when a gallery pattern (a filename glob such as ``*_s.*``) marks none of
    the training files, or every one of them: validation would then draw roles at random, which is
    not what the pattern asked for. None, "auto" and "none" are not patterns and pass."""
    if pattern in (None, "auto", "none"):
        return
    matched = sum(fnmatch.fnmatch(image.path.name, pattern) for image in data.training)
    total = len(data.training)
    if matched and matched < total:
        return
    example = data.training[0].path.name if data.training else "none"
    how = "none of" if not matched else "all"
    raise LayoutError(
        f"{option} {pattern} matches {how} the {total:,} training files (e.g. {example}), so it marks no "
        f"gallery role; give a glob that matches only the stylised files' names, 'auto' to detect a "
        f"marker, or 'none' for roles drawn at random"
    )


def find_competition(path: str | os.PathLike[str]) -> CompetitionData:
    """Find and check the competition layout at *path* (see the module docstring).

    If *path* has neither ``training/`` nor ``test/`` but holds exactly one
    sub-folder (hidden folders and ``__MACOSX`` aside), that sub-folder is
    searched instead, up to :data:`MAX_WRAPPER_DEPTH` levels down.

    Raises :class:`LayoutError` when *path* is missing or a file, when a
    folder of the layout is missing or holds no images, or when two query (or
    two gallery) images share a file name, since the server identifies them by
    file name.
    """
    given = Path(path).expanduser()
    if not given.exists():
        raise LayoutError(
            f"{given}: no such folder.{_project_hint(given)} Pass the folder that holds training/ and test/:\n"
            f"{EXPECTED_LAYOUT}"
        )
    if not given.is_dir():
        raise LayoutError(
            f"{given}: is a file, not a folder. If it is an archive, unpack it and pass the "
            f"folder that holds training/ and test/:\n{EXPECTED_LAYOUT}"
        )

    root = _locate_root(given)
    where = str(root) if root == given else f"{root} (reached from {given} through wrapper folders)"
    training_folder = _child_folder(root, TRAINING_FOLDER_NAMES, where)
    test_folder = _child_folder(root, ("test",), where)
    if training_folder is None and test_folder is None:
        raise LayoutError(
            f"No competition layout in {where}: it has no training/ and no test/ folder.\n"
            f"Expected layout:\n{EXPECTED_LAYOUT}\n"
            f"Pass the folder that holds training/ and test/.{_parent_hint(given) or _subfolder_hint(root)}"
        )
    if training_folder is None:
        raise _missing("training/", root / "training", where)
    if test_folder is None:
        raise _missing("test/", root / "test", where)
    query_folder = _child_folder(test_folder, ("query",), where)
    if query_folder is None:
        raise _missing("test/query/", test_folder / "query", where)
    gallery_folder = _child_folder(test_folder, ("gallery",), where)
    if gallery_folder is None:
        raise _missing("test/gallery/", test_folder / "gallery", where)

    ignored: list[tuple[Path, str]] = []
    training = _scan_training(training_folder, ignored)
    ignored.extend(_scan_test_extras(test_folder, {query_folder.name, gallery_folder.name}))
    queries = _scan_unique_images(query_folder, "query", ignored)
    gallery = _scan_unique_images(gallery_folder, "gallery", ignored)

    return CompetitionData(
        root=root,
        training=sorted(training, key=lambda image: (image.label, image.path)),
        queries=sorted(queries),
        gallery=sorted(gallery),
        ignored=sorted(ignored),
    )


# --- locating the layout ---------------------------------------------------------------


def _count(number: int, singular: str, plural: str) -> str:
    return f"{number:,} {singular if number == 1 else plural}"


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def _is_noise_folder(name: str) -> bool:
    return _is_hidden(name) or name in _METADATA_FOLDERS


def _noise_reason(path: Path) -> str:
    if path.name in _METADATA_FOLDERS:
        return "macOS archive metadata folder, not data"
    if path.name.startswith("._"):
        return "hidden file (macOS AppleDouble metadata, not an image)"
    return "hidden folder" if path.is_dir() else "hidden file"


def _visible_subfolders(folder: Path) -> list[Path]:
    try:
        entries = sorted(folder.iterdir())
    except OSError as error:
        raise LayoutError(f"{folder}: cannot list folder ({error.strerror or error}); check permissions") from error
    return [entry for entry in entries if entry.is_dir() and not _is_noise_folder(entry.name)]


def _has_layout(folder: Path) -> bool:
    names = {entry.name.lower() for entry in _visible_subfolders(folder)}
    return bool(names & {*TRAINING_FOLDER_NAMES, "test"})


def _locate_root(given: Path) -> Path:
    """The folder holding the layout: *given*, or one reached through single wrapper folders.

    Without a layout, the deepest folder reached, so the error names where the search ended.
    """
    folder = given
    for _ in range(MAX_WRAPPER_DEPTH):
        if _has_layout(folder):
            return folder
        subfolders = _visible_subfolders(folder)
        if len(subfolders) != 1:
            return folder
        folder = subfolders[0]
    return folder


def _child_folder(parent: Path, names: tuple[str, ...], where: str) -> Path | None:
    """The sub-folder of *parent* called one of *names* (case-insensitive), or None."""
    wanted = {name.lower() for name in names}
    matches = [entry for entry in _visible_subfolders(parent) if entry.name.lower() in wanted]
    if len(matches) > 1:
        listed = " and ".join(str(match) for match in matches)
        raise LayoutError(
            f"Ambiguous layout in {where}: both {listed} exist. "
            f"Keep one of them (or rename the other) so it is clear which holds the data."
        )
    return matches[0] if matches else None


def _missing(relative: str, expected_at: Path, where: str) -> LayoutError:
    return LayoutError(
        f"Missing folder {relative} (expected at {expected_at}) in {where}.\n"
        f"Expected layout:\n{EXPECTED_LAYOUT}\n"
        f"Create {expected_at} with its images, or pass the folder that holds training/ and test/."
    )


def _subfolder_hint(folder: Path) -> str:
    names = [entry.name for entry in _visible_subfolders(folder)]
    if not names:
        return ""
    shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    return f" {folder} holds the folder(s) {shown}; is the competition one of them?"


def _project_hint(given: Path) -> str:
    """' Did you mean <project>/data/comp?' when a relative path typed in a sub-folder is in the project folder."""
    from toolkit.machine.settings import project_path

    if given.is_absolute():
        return ""
    in_project = project_path(given)
    return f" Did you mean {in_project}?" if in_project.is_dir() and in_project != given.resolve() else ""


def _parent_hint(given: Path) -> str:
    inner_names = {*TRAINING_FOLDER_NAMES, "test", "query", "gallery"}
    if given.name.lower() in inner_names:
        parent = given.parent.parent if given.name.lower() in {"query", "gallery"} else given.parent
        return f" {given} looks like part of the layout itself; did you mean {parent}?"
    return ""


# --- scanning ----------------------------------------------------------------------------


def _walk_files(top: Path, ignored: list[tuple[Path, str]]) -> list[Path]:
    """Image files under *top*, recursively, sorted; everything else goes to *ignored*."""
    images: list[Path] = []

    def unreadable(error: OSError) -> None:
        ignored.append((Path(error.filename or top), f"cannot list folder ({error.strerror or error})"))

    for folder, subfolders, files in os.walk(top, onerror=unreadable):
        folder_path = Path(folder)
        for name in sorted(subfolders):
            if _is_noise_folder(name):
                ignored.append((folder_path / name, _noise_reason(folder_path / name)))
        subfolders[:] = sorted(name for name in subfolders if not _is_noise_folder(name))
        for name in sorted(files):
            file_path = folder_path / name
            reason = _file_problem(file_path)
            if reason:
                ignored.append((file_path, reason))
            else:
                images.append(file_path)
    return sorted(images)


def _file_problem(path: Path) -> str | None:
    """Why *path* is not used as an image, or None if it is one."""
    if _is_hidden(path.name):
        return _noise_reason(path)
    if not is_image_name(path):
        return "not an image file"
    if not path.exists():
        return "broken symbolic link"
    return None


def _scan_training(training_folder: Path, ignored: list[tuple[Path, str]]) -> list[LabelledImage]:
    folder_name = f"{training_folder.name}/"
    training: list[LabelledImage] = []
    loose_images = 0
    for entry in sorted(training_folder.iterdir()):
        if entry.is_dir():
            if _is_noise_folder(entry.name):
                ignored.append((entry, _noise_reason(entry)))
                continue
            images = _walk_files(entry, ignored)
            if not images:
                ignored.append((entry, "identity folder has no images"))
            training.extend(LabelledImage(path=image, label=entry.name) for image in images)
        else:
            reason = _file_problem(entry)
            if reason is None:
                loose_images += 1
                reason = f"image directly in {folder_name}, not in an identity folder"
            ignored.append((entry, reason))
    if not training:
        hint = (
            f" It holds {loose_images} image(s) directly; move each into a folder named after its identity."
            if loose_images
            else ""
        )
        raise LayoutError(
            f"{training_folder}: no training images. Expected {training_folder}/<identity>/<image>, "
            f"one folder per identity.{hint}"
        )
    return training


def _scan_test_extras(test_folder: Path, used: set[str]) -> list[tuple[Path, str]]:
    """Entries of test/ other than query/ and gallery/."""
    extras: list[tuple[Path, str]] = []
    for entry in sorted(test_folder.iterdir()):
        if entry.name in used:
            continue
        if _is_noise_folder(entry.name):
            extras.append((entry, _noise_reason(entry)))
        else:
            extras.append((entry, "in test/ but not in test/query/ or test/gallery/"))
    return extras


def _scan_unique_images(folder: Path, role: str, ignored: list[tuple[Path, str]]) -> list[Path]:
    """The images under *folder*; their file names must be unique."""
    skipped: list[tuple[Path, str]] = []
    images = _walk_files(folder, skipped)
    ignored.extend(skipped)
    if not images:
        hint = f" ({len(skipped)} other file(s) there, e.g. {skipped[0][0].name}: {skipped[0][1]})" if skipped else ""
        raise LayoutError(f"{folder}: no {role} images{hint}. Put the {role} images in this folder.")
    first_seen: dict[str, Path] = {}
    for image in images:
        earlier = first_seen.setdefault(image.name, image)
        if earlier is not image:
            raise LayoutError(
                f"Two {role} images share the file name {image.name!r}: {earlier} and {image}. "
                f"The server identifies {role} images by file name; rename or remove one of them."
            )
    return images
