"""Progress bars that tell speed and time left from the first batch on.

rich measures speed over a window of recent updates, and has none until a task has been advanced
twice: a bar of a few batches showed '… img/s' and '-:--:--' until it ended. Here, until rich has
its windowed speed, the speed is what was completed over the time since the task started, and the
time left follows from it.

    with progress_bar() as progress:
        task = progress.add_task("embedding", total=len(paths))
        ...
        progress.advance(task, len(batch))
"""
from __future__ import annotations

from typing import Any

from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)
from rich.text import Text

from toolkit.machine.console import console as toolkit_console


def task_speed(task: Task) -> float | None:
    """Items a second: rich's (over its recent window) once it has one, else completed / elapsed
    since the task started; None before anything is completed."""
    speed = task.finished_speed or task.speed
    if speed:
        return speed
    elapsed = task.elapsed
    return task.completed / elapsed if task.completed and elapsed else None


def time_left(task: Task) -> float | None:
    """Seconds until the task is done at task_speed, or None when that is not known yet."""
    if task.finished:
        return 0.0
    speed = task_speed(task)
    if task.total is None or not speed:
        return None
    return max(task.total - task.completed, 0) / speed


class SpeedColumn(ProgressColumn):
    """'12.3 img/s' (task_speed), '… img/s' before the first batch is done."""

    def __init__(self, unit: str = "img"):
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        speed = task_speed(task)
        return Text(f"{speed:.1f} {self.unit}/s" if speed else f"… {self.unit}/s", style="progress.data.speed")


class TimeLeftColumn(TimeRemainingColumn):
    """rich's time remaining, from task_speed: known after the first batch."""

    def render(self, task: Task) -> Text:
        if task.finished:
            return super().render(task)
        seconds = time_left(task)
        if seconds is None:
            return Text("-:--:--", style="progress.remaining")
        minutes, second = divmod(int(seconds), 60)
        hours, minute = divmod(minutes, 60)
        return Text(f"{hours:d}:{minute:02d}:{second:02d}", style="progress.remaining")


def progress_bar(transient: bool = False, unit: str = "img", **options: Any) -> Progress:
    """A rich Progress on the toolkit's console (options such as console= or get_time= are passed
    on): description, bar, done/total, speed, time elapsed, time left."""
    options.setdefault("console", toolkit_console)
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), SpeedColumn(unit),
                    TimeElapsedColumn(), TimeLeftColumn(), transient=transient, **options)
