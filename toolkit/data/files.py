"""Writing a file a person keeps (a submission, the best copy): whole or not at all, under a name
no other file has, never over another file.

The content is written to a hidden temporary file in the target folder and flushed to disk; it
then takes its name with a hard link, which fails rather than replace a file already there (a
race in another process that chose the same name), so another name is drawn. On a file system
without hard links the name is claimed with an exclusive create and the content moved over the
claim. A failure or Ctrl-C at any point removes the temporary file and leaves no partial file.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable, TextIO

NAME_TRIES = 20


def write_new_file(folder: str | os.PathLike[str], make_name: Callable[[], str],
                   write: Callable[[TextIO], None]) -> Path:
    """Write `write(stream)`'s text to a new file in folder, named by `make_name()` (called again
    while the name is taken, so it should draw a fresh suffix each call); return its path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=".", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        for _ in range(NAME_TRIES):
            target = folder / make_name()
            if _take_name(temporary, target):
                return target
        raise FileExistsError(f"{folder}: no free name after {NAME_TRIES} tries (last {target.name})")
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def _take_name(temporary: str, target: Path) -> bool:
    """Give the temporary file the name `target` unless a file has it; False when one has."""
    try:
        os.link(temporary, target)
        return True
    except FileExistsError:
        return False
    except OSError:                            # no hard links here (FAT, some network file systems)
        try:
            with open(target, "x"):
                pass
        except FileExistsError:
            return False
        os.replace(temporary, target)
        return True
