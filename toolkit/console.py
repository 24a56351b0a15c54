"""The one rich Console the toolkit prints through, and the warning style it uses."""
from __future__ import annotations

from rich.console import Console

console = Console(highlight=False)


def warn(message: str) -> None:
    console.print(f"[yellow]warning:[/yellow] {message}", soft_wrap=True)
