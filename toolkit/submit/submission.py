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
from toolkit.data.jsonfile import JsonInputError, read_json
from toolkit.submit.checks import json_kind, submission_problems

RESULTS_PER_QUERY = 10


class SubmissionError(ValueError):
    """A submission that the server would reject or score wrongly."""


def build_submission(query_paths: Sequence[Path], gallery_paths: Sequence[Path],
                     ranked_indices: np.ndarray) -> dict[str, list[str]]:
    gallery_names = [Path(path).name for path in gallery_paths]
    return {Path(query).name: [gallery_names[index] for index in row if index >= 0]
            for query, row in zip(query_paths, np.asarray(ranked_indices))}


def validate_submission(submission: Mapping, query_names: Sequence[str], gallery_names: Sequence[str],
                        k: int = RESULTS_PER_QUERY, every_query: bool = True) -> None:
    """Raise SubmissionError listing what is wrong (the first few problems; the rules are
    toolkit.submit.checks'). every_query=False lets queries be missing (scored as misses)."""
    _refuse(submission_problems(submission, query_names, gallery_names, k, every_query=every_query))


def validate_submission_structure(submission: Mapping, k: int = RESULTS_PER_QUERY) -> None:
    """What can be checked without the competition's file names: a non-empty object of
    query -> exactly k unique gallery names. Raise SubmissionError listing what is wrong."""
    _refuse(submission_problems(submission, k=k))


def _refuse(problems: list[str], where: str = "") -> None:
    if problems:
        raise SubmissionError(f"{where}invalid submission: " + "; ".join(problems))


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
    """The submission in the JSON file *path*, read by toolkit.data.jsonfile and checked for all
    that needs no competition: an object of query -> 1 to k distinct file names. SubmissionError
    naming the file and the problem otherwise."""
    path = Path(path)
    try:
        data = read_json(path, "submission file")
    except JsonInputError as error:
        raise SubmissionError(str(error)) from None
    if not isinstance(data, dict):
        raise SubmissionError(f"{path}: expected a JSON object of query -> list of gallery names, "
                              f"not {json_kind(data)}")
    _refuse(submission_problems(data, k=RESULTS_PER_QUERY, exact_count=False), f"{path}: ")
    return data
