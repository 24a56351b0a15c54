"""The one rich Console the toolkit prints through, the width it prints at, and the warning style it uses.

The width is decided here, once: a terminal's own (followed as it is resized), a notebook's (rich's
default for Jupyter), COLUMNS when it is set; else, for output to a file, a pipe or a CI log,
PIPED_WIDTH: wide enough that a leaderboard row stays one line. The tables (toolkit.views.fit)
lay themselves out at the width they are printed at.
"""
from __future__ import annotations

from rich.console import Console, ConsoleDimensions

PIPED_WIDTH = 160


class ToolkitConsole(Console):
    """A rich Console whose width, when it writes to no terminal and none is given, is PIPED_WIDTH
    (rich's own choice there is 80 columns, or the width of a terminal its input comes from)."""

    def _size(self) -> ConsoleDimensions:
        size = Console.size.fget(self)
        if self._width is None and not self.is_terminal and not self.is_jupyter:
            return ConsoleDimensions(PIPED_WIDTH, size.height)
        return size

    size = property(_size, Console.size.fset)


console = ToolkitConsole(highlight=False)


def warn(message: str) -> None:
    console.print(f"[yellow]warning:[/yellow] {message}", soft_wrap=True)


def human_size(number: float) -> str:
    """Bytes for humans, in powers of 1000: 512 B, 3.4 MB, 1.2 GB."""
    for unit in ("B", "KB", "MB", "GB"):
        if abs(number) < 1000 or unit == "GB":
            return f"{number:.0f} {unit}" if unit == "B" else f"{number:.1f} {unit}"
        number /= 1000
    return f"{number:.1f} GB"
