"""What a person types for a number option, read in one place: the command line and the Python
API both go through `read_number`, so `--seed abc`, `--held-out 1.5` and `race(held_out=1.5)` are
each one line naming the option, the value and what it takes.

    read_number("abc", "--seed", WHOLE)        # OptionError: --seed abc: give a whole number, e.g. 0
    queries: Count = 8                         # a task's option: tasks read it through its annotation

The annotated types (`Count`, `Whole`, `Fraction`, ...) carry their rule: an invoke task whose option
is annotated with one of them receives the number already read (toolkit.machine.command_line).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Any


class OptionError(ValueError):
    """A value an option does not take: the message is the one line a person sees."""


@dataclass(frozen=True)
class NumberRule:
    """What a number option takes: its kind (int or float), its bounds, an example."""

    kind: type
    what: str                           # 'a whole number', 'a fraction between 0 and 1 (both excluded)'
    example: str
    at_least: float | None = None
    above: float | None = None
    below: float | None = None
    at_most: float | None = None

    def allows(self, number: float) -> bool:
        return ((self.at_least is None or number >= self.at_least) and (self.above is None or number > self.above)
                and (self.below is None or number < self.below) and (self.at_most is None or number <= self.at_most))


WHOLE = NumberRule(int, "a whole number", "0")
COUNT = NumberRule(int, "a whole number of at least 1", "8", at_least=1)
ZERO_OR_MORE = NumberRule(int, "a whole number of at least 0", "2", at_least=0)
IDENTIFIER = NumberRule(int, "an id (a number from invoke leaderboard)", "3", at_least=1)
PORT = NumberRule(int, "a port number from 0 to 65535 (0: any free port)", "3001", at_least=0, at_most=65535)
FRACTION = NumberRule(float, "a fraction between 0 and 1 (both excluded)", "0.2", above=0, below=1)
SECONDS = NumberRule(float, "a number of seconds above 0", "30", above=0)

# Annotations for invoke tasks: `def show(c, queries: Count = 8)`
Whole = Annotated[int, WHOLE]
Count = Annotated[int, COUNT]
ZeroOrMore = Annotated[int, ZERO_OR_MORE]
Identifier = Annotated[int, IDENTIFIER]
Port = Annotated[int, PORT]
Fraction = Annotated[float, FRACTION]
Seconds = Annotated[float, SECONDS]


def read_number(value: Any, option: str, rule: NumberRule) -> int | float | None:
    """`value` (text as typed, or a number from Python) as the rule's kind; None stays None.
    Raises OptionError: '<option> <value>: give <what>, e.g. <example>'."""
    if value is None:
        return None
    refused = OptionError(f"{option} {value}: give {rule.what}, e.g. {rule.example}")
    if isinstance(value, bool):
        raise refused
    if isinstance(value, (int, float)):
        number = value
    else:
        try:
            number = int(str(value).strip()) if rule.kind is int else float(str(value).strip())
        except ValueError:
            raise refused from None
    if isinstance(number, float) and not math.isfinite(number):
        raise refused
    if rule.kind is int:
        if number != int(number):
            raise refused
        number = int(number)
    else:
        number = float(number)
    if not rule.allows(number):
        raise refused
    return number


def number_rule(annotation: Any) -> NumberRule | None:
    """The NumberRule an annotation carries (`Count`, `Fraction | None`, ...), else None."""
    for part in (annotation, *getattr(annotation, "__args__", ())):
        for metadata in getattr(part, "__metadata__", ()):
            if isinstance(metadata, NumberRule):
                return metadata
    return None
