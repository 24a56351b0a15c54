"""The interface a strategy plugs in through, in one import for strategy authors, and the one rule
its options are checked by.

The race defines the interface (toolkit.race.contract: Strategy, RaceContext, Fitted); encoders come
from toolkit.retrieval.encoder and the weights vocabulary from toolkit.models.weights. `Strategy`
here is the race's, with its options checked when it is created (check_options): a strategy names
every option it takes, with its default, in DEFAULTS, and the values some of them take in CHOICES,
so that an unknown option is named with the known ones and a near miss gets "did you mean".
"""
from __future__ import annotations

import difflib
from typing import Any, Callable, ClassVar, Mapping, Sequence, Union

from toolkit.models.weights import WeightsStatus, WeightsUnavailable, host_reachable, hugging_face_cache_dir
from toolkit.race import contract
from toolkit.race.contract import Fitted, RaceContext
from toolkit.retrieval.encoder import (DerivedEncoder, Encoder, TorchEncoder, default_device, fingerprint_of,
                                       l2_normalise)

# The values an option takes: a tuple, or a function of all the options giving them (None: any value).
Choices = Union[Sequence[Any], Callable[[Mapping[str, Any]], Union[Sequence[Any], None]]]
LISTED = 12          # a list of known values longer than this is counted, not printed


class Strategy(contract.Strategy):
    """toolkit.race.contract.Strategy, its options checked by check_options when it is created.

    DEFAULTS   every option it takes and its default (None: options are not checked)
    CHOICES    for some options, the values they take (see Choices); a value equal to the
               option's default is not checked
    HINTS      for names people try that it does not take, what to write instead
    settings   DEFAULTS updated with the options given
    """

    DEFAULTS: ClassVar[dict[str, Any] | None] = None
    CHOICES: ClassVar[dict[str, Choices]] = {}
    HINTS: ClassVar[dict[str, str]] = {}

    def __init__(self, **options: Any):
        check_options(type(self), options)
        super().__init__(**options)
        self.settings = {**(self.DEFAULTS or {}), **options}


def check_options(strategy: type[Strategy], options: Mapping[str, Any]) -> None:
    """Raise ValueError in one line for an option `strategy` does not take (named with the known
    ones, and the nearest) or a value not among its CHOICES (with the nearest, if one is near)."""
    known = strategy.DEFAULTS
    if known is None:
        return
    for key in options:
        if key not in known:
            hint = strategy.HINTS.get(key) or (f"did you mean {near}?" if (near := nearest(key, list(known))) else "")
            raise ValueError(f"{strategy.name} has no option {key!r}" + (f" ({hint})" if hint else "")
                             + f"; known: {', '.join(sorted(known))}")
    for key, choices in strategy.CHOICES.items():
        if key not in options or options[key] == known.get(key):
            continue
        values = choices(options) if callable(choices) else choices
        if values is None or options[key] in values:
            continue
        value, names = options[key], [str(choice) for choice in values]
        hint = nearest(str(value), names)
        listing = ", ".join(names) if len(names) <= LISTED else f"the {len(names)} {key}s it knows"
        raise ValueError(f"{strategy.name}: {key} must be one of {listing}, not {value!r}"
                         + (f"; did you mean {hint}?" if hint else ""))


def nearest(text: str, names: Sequence[str]) -> str | None:
    """The name `text` most likely meant: the same with '/' written '-' (OpenAI's ViT-B/32 is
    open_clip's ViT-B-32), the same but for case, else the closest by difflib; None if none is close."""
    for candidate in (text.replace("/", "-"), *(name for name in names if name.lower() == text.lower())):
        if candidate in names:
            return candidate
    close = difflib.get_close_matches(text, names, n=1, cutoff=0.6)
    if not close:
        lowered = {name.lower(): name for name in names}
        close = [lowered[match] for match in difflib.get_close_matches(text.lower(), list(lowered), n=1, cutoff=0.6)]
    return close[0] if close else None


__all__ = ["Choices", "DerivedEncoder", "Encoder", "Fitted", "RaceContext", "Strategy", "TorchEncoder",
           "WeightsStatus", "WeightsUnavailable", "check_options", "default_device", "fingerprint_of",
           "host_reachable", "hugging_face_cache_dir", "l2_normalise", "nearest"]
