"""Submission files in the server's format: {"<query basename>": ["<gallery basename>", ...k]}.

Built from ranked gallery indices, validated (every query present, exactly k unique existing
gallery basenames, fewer only when the gallery itself is smaller) and saved as a new file, whole
or not at all, under a name no other file has (toolkit.data.files).
"""
from __future__ import annotations

import json
import re
import secrets
import time
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from toolkit.data.files import write_new_file

RESULTS_PER_QUERY = 10


class SubmissionError(ValueError):
    """A submission that the server would reject or score wrongly."""


def build_submission(query_paths: Sequence[Path], gallery_paths: Sequence[Path],
                     ranked_indices: np.ndarray) -> dict[str, list[str]]:
    gallery_names = [Path(path).name for path in gallery_paths]
    return {Path(query).name: [gallery_names[index] for index in row if index >= 0]
            for query, row in zip(query_paths, np.asarray(ranked_indices))}


def validate_submission(submission: Mapping, query_names: Sequence[str], gallery_names: Sequence[str],
                        k: int = RESULTS_PER_QUERY) -> None:
    """Raise SubmissionError listing what is wrong (the first few problems of each kind)."""
    if not isinstance(submission, Mapping):
        raise SubmissionError(f"a submission is a JSON object of query -> list, not {type(submission).__name__}")
    expected = min(k, len(set(gallery_names)))
    known_gallery = set(gallery_names)
    problems: list[str] = []
    missing = sorted(set(query_names) - set(submission))
    if missing:
        problems.append(f"{len(missing)} queries missing, e.g. {missing[:3]}")
    extra = sorted(set(submission) - set(query_names))
    if extra:
        problems.append(f"{len(extra)} entries are not queries, e.g. {extra[:3]}")
    _check_entries(submission, expected, known_gallery, problems)


def validate_submission_structure(submission: Mapping, k: int = RESULTS_PER_QUERY) -> None:
    """What can be checked without the competition's file names: a non-empty object of
    query -> exactly k unique gallery names. Raise SubmissionError listing what is wrong."""
    if not isinstance(submission, Mapping) or not submission:
        raise SubmissionError("invalid submission: a submission is a non-empty JSON object of query -> list")
    _check_entries(submission, k, None, [])


def _check_entries(submission: Mapping, expected: int, known_gallery: set[str] | None, problems: list[str]) -> None:
    for query, results in submission.items():
        if not isinstance(results, list) or not all(isinstance(name, str) for name in results):
            problems.append(f"{query}: results must be a list of file names")
        elif len(results) != expected:
            problems.append(f"{query}: {len(results)} results, expected {expected}")
        elif len(set(results)) != len(results):
            problems.append(f"{query}: repeated gallery names")
        elif known_gallery is not None and not set(results) <= known_gallery:
            unknown = sorted(set(results) - known_gallery)
            problems.append(f"{query}: unknown gallery names {unknown[:3]}")
        if len(problems) >= 10:
            problems.append("... (more problems not shown)")
            break
    if problems:
        raise SubmissionError("invalid submission: " + "; ".join(problems))


def submission_file_name(strategy_label: str, when: float | None = None) -> str:
    """<date>-<time>-<milliseconds>-<random>-<label>.json: sorted by time, never the same twice."""
    when = time.time() if when is None else when
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(when))
    milliseconds = int(when * 1000) % 1000
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", strategy_label).strip("-") or "submission"
    return f"{stamp}-{milliseconds:03d}-{secrets.token_hex(3)}-{slug}.json"


def save_submission(submission: Mapping, folder: Path, strategy_label: str, when: float | None = None) -> Path:
    """Write it as a new file in folder, whole or not at all, never over another file; return the path."""
    return write_new_file(folder, lambda: submission_file_name(strategy_label, when),
                          lambda stream: json.dump(submission, stream, indent=1, sort_keys=True))


def load_submission(path: Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise SubmissionError(f"{path}: no such submission file")
    try:
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise SubmissionError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(data, dict):
        raise SubmissionError(f"{path}: expected a JSON object of query -> list of gallery names")
    return data
