"""What makes a submission acceptable, decided in one place.

A submission is a JSON object {"<query file>": ["<gallery file>", ... k]}. Every query's list holds
exactly k distinct gallery file names (all of the gallery, in some order, when it has fewer than k),
each a string. Where the competition's names are known, each name is in the gallery, each query is
one of the queries and, unless missing ones are allowed (`invoke score` scores them as misses),
every query is there. Where the gallery is not known, a list may be shorter than k only when
`exact_count` is off (a file read before its competition is known).

`submission_problems` lists what is wrong in words for the user; toolkit.submit.submission turns
them into a SubmissionError for the race, `invoke submit`, `invoke score`, `invoke show` and the
reference scorer alike.
"""
from __future__ import annotations

from typing import Collection, Mapping

MAX_PROBLEMS_SHOWN = 10


def submission_problems(submission: object, query_names: Collection[str] | None = None,
                        gallery_names: Collection[str] | None = None, k: int = 10, every_query: bool = True,
                        exact_count: bool = True) -> list[str]:
    """What is wrong with *submission* (the first few problems, one line each); empty when nothing is."""
    if not isinstance(submission, Mapping):
        return [f"a submission is a JSON object of query -> list of gallery names, not {json_kind(submission)}"]
    if not submission:
        return ["the submission holds no queries"]
    problems: list[str] = []
    if query_names is not None:
        known_queries = set(query_names)
        missing = sorted(known_queries - set(submission)) if every_query else []
        if missing:
            problems.append(f"{len(missing)} queries missing, e.g. {_names(missing)}")
        extra = sorted(set(submission) - known_queries)
        if extra:
            problems.append(f"{len(extra)} entries are not queries, e.g. {_names(extra)}")
    known_gallery = set(gallery_names) if gallery_names is not None else None
    expected = min(k, len(known_gallery)) if known_gallery is not None else k
    for query, results in submission.items():
        problem = _results_problem(results, expected, exact_count or known_gallery is not None, known_gallery)
        if problem:
            problems.append(f"{_short(query)}: {problem}")
        if len(problems) >= MAX_PROBLEMS_SHOWN:
            problems.append("... (more problems not shown)")
            break
    return problems


def _results_problem(results: object, expected: int, exact: bool, known_gallery: set[str] | None) -> str | None:
    if not isinstance(results, list):
        return f"results must be a list of file names, not {json_kind(results)}"
    odd = [name for name in results if not isinstance(name, str)]
    if odd:
        return f"results must be a list of file names (strings), not a list holding {json_kind(odd[0])}"
    if len(results) != expected and (exact or not 1 <= len(results) < expected):
        return f"{len(results)} results, expected {expected}"
    if len(set(results)) != len(results):
        seen: set[str] = set()
        repeated = sorted({name for name in results if name in seen or seen.add(name)})
        return f"repeated gallery names {_names(repeated)}"
    if known_gallery is not None:
        unknown = sorted(set(results) - known_gallery)
        if unknown:
            return f"unknown gallery names {_names(unknown)}"
    return None


def json_kind(value: object) -> str:
    """What a JSON value is, in words: 'a list', 'a string', 'null', ..."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true or false"
    for kind, words in ((str, "a string"), (int, "a number"), (float, "a number"), (list, "a list"),
                        (dict, "an object")):
        if isinstance(value, kind):
            return words
    return type(value).__name__


def _names(names: list[str], shown: int = 3) -> list[str]:
    return [_short(name) for name in names[:shown]]


def _short(name: str, limit: int = 60) -> str:
    return name if len(name) <= limit else name[:limit] + "..."
