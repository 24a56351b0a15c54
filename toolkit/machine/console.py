"""The one rich Console the toolkit prints through, and the warning style it uses."""
from __future__ import annotations

from rich.console import Console

console = Console(highlight=False)


def warn(message: str) -> None:
    console.print(f"[yellow]warning:[/yellow] {message}", soft_wrap=True)


def human_size(number: float) -> str:
    """Bytes for humans, in powers of 1000: 512 B, 3.4 MB, 1.2 GB."""
    for unit in ("B", "KB", "MB", "GB"):
        if abs(number) < 1000 or unit == "GB":
            return f"{number:.0f} {unit}" if unit == "B" else f"{number:.1f} {unit}"
        number /= 1000
    return f"{number:.1f} GB"
