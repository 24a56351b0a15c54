"""Every JSON a user or a server hands in, read one way: bounded in size and nesting, strict.

    answers = read_json("answers.json", "answers file")        # a file
    reply = parse_json(body, "the request body")                # bytes or text already in memory

Refused, each with one JsonInputError (a ValueError) naming the file and the problem: a file over
`max_bytes`; text that is not UTF-8 or not JSON; nesting deeper than `max_depth` (checked before
parsing, so no RecursionError); NaN, Infinity and numbers too big for a float (1e999), which JSON
does not have; a key repeated in one object (the last one would silently win).
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

MAX_JSON_BYTES = 64 * 1024 * 1024      # a submission of 100,000 queries is about 30 MB
MAX_JSON_DEPTH = 32                    # a submission or an answers file is 2 or 3 levels deep

#: What can open or close a level, or change whether a bracket is inside a string.
_STRUCTURE = re.compile(r'["\\\[\]{}]')


class JsonInputError(ValueError):
    """JSON that cannot be used as given; the message names where it came from and why."""


class _Refused(ValueError):
    """Raised inside the parser's hooks; turned into a JsonInputError with the source's name."""


def read_json(path: str | Path, what: str = "JSON file", max_bytes: int = MAX_JSON_BYTES,
              max_depth: int = MAX_JSON_DEPTH) -> object:
    """The value in the JSON file *path* (a *what*, for messages), or JsonInputError."""
    path = Path(path)
    if not path.is_file():
        raise JsonInputError(f"{path}: no such {what}")
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise JsonInputError(f"{path}: {size:,} bytes, more than the {max_bytes:,} a {what} may have")
        with open(path, "rb") as stream:
            data = stream.read(max_bytes + 1)
    except OSError as error:
        raise JsonInputError(f"{path}: cannot read it ({error.strerror or error})") from None
    if len(data) > max_bytes:                          # it grew while being read
        raise JsonInputError(f"{path}: more than the {max_bytes:,} bytes a {what} may have")
    return parse_json(data, str(path), max_depth)


def parse_json(data: bytes | str, source: str, max_depth: int = MAX_JSON_DEPTH) -> object:
    """The value in *data* (from *source*, for messages), or JsonInputError."""
    if isinstance(data, (bytes, bytearray)):
        try:
            text = bytes(data).decode("utf-8-sig")
        except UnicodeDecodeError as error:
            raise JsonInputError(f"{source}: not UTF-8 text (byte {error.start}), so not JSON") from None
    else:
        text = data
    depth = nesting_depth(text, stop_above=max_depth)
    if depth > max_depth:
        raise JsonInputError(f"{source}: nested more than {max_depth} levels deep; "
                             "a submission or an answers file needs 3")
    try:
        return json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float,
                          object_pairs_hook=_object_without_repeats)
    except _Refused as error:
        raise JsonInputError(f"{source}: {error}") from None
    except ValueError as error:                         # JSONDecodeError, or an integer of 5,000 digits
        raise JsonInputError(f"{source}: not valid JSON ({error})") from None
    except RecursionError:                              # only if the stack was nearly full already
        raise JsonInputError(f"{source}: nested too deeply to read") from None


def nesting_depth(text: str, stop_above: int | None = None) -> int:
    """How deeply arrays and objects nest in JSON *text* (brackets inside strings do not count);
    stops counting once past *stop_above*. One pass over the structural characters only."""
    depth = deepest = 0
    in_string = False
    skip_to = -1                      # an escaped character inside a string is not structure
    for match in _STRUCTURE.finditer(text):
        position, character = match.start(), match.group()
        if position < skip_to:
            continue
        if in_string:
            if character == "\\":
                skip_to = position + 2
            elif character == '"':
                in_string = False
        elif character == '"':
            in_string = True
        elif character in "[{":
            depth += 1
            if depth > deepest:
                deepest = depth
                if stop_above is not None and deepest > stop_above:
                    break
        elif character in "]}":
            depth -= 1
    return deepest


def _refuse_constant(name: str) -> float:
    raise _Refused(f"{name} is not a number JSON allows")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _Refused(f"the number {text[:40]} is too big for a float")
    return value


def _object_without_repeats(pairs: list[tuple[str, object]]) -> dict:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        repeated = next(key for key, _ in pairs if key in seen or seen.add(key))
        raise _Refused(f"the key {_shorten(repeated)!r} appears more than once in one object")
    return result


def _shorten(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[:limit] + "..."
