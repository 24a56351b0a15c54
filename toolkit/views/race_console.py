"""The race told on the terminal: the lines a person reads while it runs (roles, split, each
strategy's start and end, failures, unreadable files) and the live table (toolkit.views.live)."""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

from rich.markup import escape

from toolkit.machine.console import console, warn
from toolkit.race.runs import RaceObserver, StrategyRun
from toolkit.views.live import RaceView

UNREADABLE_SHOWN = 10


class RaceConsole(RaceObserver):
    """A RaceObserver printing to the console; `live` shows the live table and progress bars."""

    def __init__(self, live: bool = True):
        self.live = live
        self.view: RaceView | None = None

    @contextmanager
    def watching(self, runs, budget) -> Iterator[None]:
        with RaceView(runs, budget, enabled=self.live) as view:
            self.view = view
            try:
                yield
            finally:
                self.view = None

    def roles(self, gallery_pattern: str | None, detected: bool) -> None:
        if gallery_pattern:
            console.print(f"validation roles: training files matching {gallery_pattern} take the gallery role"
                          + (" (detected)" if detected else ""))
        elif detected:
            console.print("validation roles: drawn at random (no stylised-file marker detected)")

    def split(self, yardstick) -> None:
        console.print(escape(yardstick.describe()))

    def started(self, run: StrategyRun) -> None:
        console.rule(escape(run.label))

    def ended(self, run: StrategyRun) -> None:
        if run.status in ("skipped", "timed-out") or (run.status == "failed" and run.reason == "interrupted"):
            colour = "yellow" if run.status == "skipped" else "red"
            console.print(f"[{colour}]{run.status}[/{colour}] {escape(run.label)}: {escape(run.reason)}",
                          soft_wrap=True)
        if self.view is not None:
            self.view.strategy_ended()

    def failed(self, run: StrategyRun, reason: str, trace: str | None) -> None:
        if trace is None:
            console.print(f"[red]failed[/red] {escape(reason)}", soft_wrap=True)
            return
        console.print(f"[red]failed[/red] {escape(run.label)}: {escape(reason)}", soft_wrap=True)
        console.print(trace, style="dim", soft_wrap=True, markup=False)

    def unreadable(self, what: str, files: Sequence[tuple[Path, str]]) -> None:
        for path, reason in files[:UNREADABLE_SHOWN]:
            warn(f"skipped unreadable {what} image {escape(str(path))}: {escape(reason)}")
        if len(files) > UNREADABLE_SHOWN:
            warn(f"... and {len(files) - UNREADABLE_SHOWN} more unreadable {what} images")

    def note(self, text: str) -> None:
        console.print(f"[yellow]{escape(text)}[/yellow]", soft_wrap=True)
