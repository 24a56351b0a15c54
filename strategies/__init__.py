"""The registry of strategies: one factory, a strategy named by a string (the timm habit).

    create_strategy("clip-zs", model="ViT-B-32", pretrained="openai")
    parse_strategy_specs("face-zs,clip-zs[model=ViT-B-16,pretrained=laion2b_s34b_b88k]")
"""
from __future__ import annotations

import re
from typing import Any

from toolkit.race.config import parse_value
from strategies.base import Encoder, Strategy, WeightsStatus, WeightsUnavailable

_REGISTRY: dict[str, type[Strategy]] = {}


def register(cls: type[Strategy]) -> type[Strategy]:
    if cls.name in _REGISTRY:
        raise ValueError(f"two strategies are registered as {cls.name!r}")
    _REGISTRY[cls.name] = cls
    return cls


def strategy_names() -> list[str]:
    return sorted(_REGISTRY)


def strategy_class(name: str) -> type[Strategy]:
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(strategy_names())
        raise ValueError(f"unknown strategy {name!r}; known strategies: {known}") from None


def create_strategy(name: str, **options: Any) -> Strategy:
    return strategy_class(name)(**options)


_SPEC = re.compile(r"\s*([\w.-]+)\s*(?:\[([^\]]*)\])?\s*(?:,|$)")


def parse_strategy_specs(text: str) -> list[tuple[str, dict[str, Any]]]:
    """'a,b[k=v,k2=v2]' -> [("a", {}), ("b", {"k": v, "k2": v2})], names checked."""
    specs: list[tuple[str, dict[str, Any]]] = []
    position = 0
    text = text.strip()
    while position < len(text):
        match = _SPEC.match(text, position)
        if not match or match.end() == position:
            raise ValueError(f"cannot read strategy list {text!r} at {text[position:]!r}; "
                             "write e.g. face-zs,clip-zs[model=ViT-B-32,pretrained=openai]")
        name, inner = match.group(1), match.group(2)
        strategy_class(name)
        options: dict[str, Any] = {}
        for pair in filter(None, (part.strip() for part in (inner or "").split(","))):
            if "=" not in pair:
                raise ValueError(f"option {pair!r} of {name} needs the form key=value")
            key, value = pair.split("=", 1)
            options[key.strip()] = parse_value(value.strip())
        specs.append((name, options))
        position = match.end()
    return specs


# Importing the families registers them.
from strategies.trained import adapter, clip_ft, metric
from strategies.zero_shot import clip_zs, cnn_zs, face_zs  # noqa: E402,F401

__all__ = ["Encoder", "Strategy", "WeightsStatus", "WeightsUnavailable", "create_strategy",
           "parse_strategy_specs", "register", "strategy_class", "strategy_names"]
