"""Ctrl-C, handled in one place: what a command says when it is interrupted, blocks that a Ctrl-C
must not cut in half, and DataLoader workers that leave Ctrl-C to the main process.

    exit_promptly_on_interrupt()                  # a process that runs commands, as it loads
    @interruptible("nothing was written")        # Ctrl-C: one line "interrupted: ...", exit code 130
    raise Interrupted("best so far written to x")  # what was kept, said by the code that knows it
    say_kept("best so far written to x")        # ... or said as it is written: a Ctrl-C after it says so
    with holding_interrupts() as pressed: ...     # Ctrl-C waits until the block is done
    except Exception as error: raise_if_stopped(error)    # a Ctrl-C or deadline wrapped in an error
    with worker_batches(loader) as batches: ...   # workers ignore Ctrl-C; stopped at once on the way out

A terminal's Ctrl-C sends SIGINT to every process in the foreground group: the command and its
DataLoader workers. The workers ignore it (so none prints a traceback or dies holding a queue's
lock), the main process raises KeyboardInterrupt where it is, the code on the way out keeps what
is finished and stops the workers, and the command says what it kept in one line.
"""
from __future__ import annotations

import functools
import os
import signal
import sys
import threading
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from rich.markup import escape

from toolkit.machine.console import console

EXIT_CODE = 130                 # 128 + SIGINT: what a shell reports for a command stopped by Ctrl-C
WORKER_GRACE_SECONDS = 0.2      # a DataLoader worker told to stop has this long before it is terminated
KILLED_WORKER_SECONDS = 10.0    # the most a SIGKILLed worker is waited for (the kernel ends it; a busy machine is slow)


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, with what was kept (e.g. "best so far written to x.json"): the line the command prints."""

    def __init__(self, kept: str):
        super().__init__(kept)
        self.kept = kept


_kept_now: list[str] = []     # what the running command has kept so far, as say_kept was last told


def say_kept(kept: str) -> None:
    """What the running command has kept from now on, for a Ctrl-C that lands where no code can
    still say it (e.g. just after a function that wrote it returned, before its caller's next line)."""
    _kept_now[:] = [kept]


def interruptible(kept: str) -> Callable[[Callable], Callable]:
    """Decorate a command (the body of a process): the first Ctrl-C raises KeyboardInterrupt where
    it lands; later ones, while the code on the way out keeps what is finished, are ignored; then
    one line "interrupted: <kept>" (or what an Interrupted, else say_kept, says was kept) and exit
    code 130. Once the command is done, a Ctrl-C while the process exits changes nothing and is
    ignored too."""
    def decorate(body: Callable) -> Callable:
        @functools.wraps(body)
        def command(*args: Any, **kwargs: Any) -> Any:
            _kept_now.clear()
            press_answered()
            _set_handler(_first_press)
            try:
                done = body(*args, **kwargs)
                raise_if_swallowed()        # pressed, and the press lost on the way: it is said now
                return done
            except BaseException as error:
                press, aside = _stop_behind(error, lambda stop: isinstance(stop, KeyboardInterrupt))
                if press is None:
                    raise
                press_answered()
                said = press.kept if isinstance(press, Interrupted) else _kept_now[0] if _kept_now else kept
                said += aside
            finally:
                _set_handler(signal.SIG_IGN)
            console.print(f"[yellow]interrupted:[/yellow] {escape(said)}", soft_wrap=True)
            _exit()
        return command
    return decorate


def _signalled(error: BaseException) -> bool:
    """A stop that a signal handler raises wherever the code happens to be: a Ctrl-C's
    KeyboardInterrupt, or a deadline's OutOfTime (toolkit.race.budget.hard_stop, from SIGALRM).
    Both are BaseExceptions and not Exceptions, so that no `except Exception` takes them for errors."""
    return not isinstance(error, (Exception, SystemExit, GeneratorExit))


def _stop_behind(error: BaseException, is_stop: Callable[[BaseException], bool] = _signalled
                 ) -> tuple[BaseException | None, str]:
    """The stop an error comes from (itself, or one in its chain), and what to add to the line.
    An error raised *from* the stop is the stop: Python wraps what a __set_name__ raises in
    RuntimeError (3.11; e.g. a press while an import makes a dataclass). An error raised *while*
    the stop was handled (a library's own, a clean-up that failed) is said beside it, so nothing
    that went wrong on the way out goes unsaid."""
    outermost, caused, seen = error, True, set()
    while error is not None and id(error) not in seen:
        if is_stop(error):
            return error, "" if caused else f" (on the way out: {type(outermost).__name__}: {outermost})"
        seen.add(id(error))
        caused = caused and error.__cause__ is not None
        error = error.__cause__ or error.__context__
    return None, ""


def raise_if_stopped(error: BaseException) -> None:
    """For a broad `except`: raise the Ctrl-C or deadline an error comes from, so that no error
    handler takes a stop for a failure and goes on."""
    stop, _ = _stop_behind(error)
    if stop is not None:
        raise stop


@contextmanager
def stops_unwrapped() -> Iterator[None]:
    """Inside: an error that comes from a Ctrl-C or a deadline is raised as that stop."""
    try:
        yield
    except Exception as error:
        raise_if_stopped(error)
        raise


_exit_at_once = False       # set for a process that runs commands: see exit_promptly_on_interrupt


def exit_promptly_on_interrupt() -> None:
    """For a process that runs commands (tasks.py calls this as it loads): until a command starts,
    nothing is under way and Ctrl-C prints one line and exits with 130 at once; an interrupted
    command, once it has said what it kept, exits without Python's teardown of every module (a
    second, and several on a busy machine, with nothing left to do)."""
    global _exit_at_once
    _exit_at_once = True
    _set_handler(_nothing_started)


def _nothing_started(signum: int, frame: Any) -> None:
    _set_handler(signal.SIG_IGN)
    console.print("[yellow]interrupted:[/yellow] nothing was started", soft_wrap=True)
    _exit()


def _exit() -> None:
    """Exit with 130: at once for a command's process, else by SystemExit."""
    if _exit_at_once:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(EXIT_CODE)
    raise SystemExit(EXIT_CODE)


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


_unanswered: list[bool] = []    # a press raised as KeyboardInterrupt that no code has caught to stop yet


def _ignore(signum: int, frame: Any) -> None:
    """SIGINT after the first: the command is already stopping."""


def _first_press(signum: int, frame: Any) -> None:
    signal.signal(signal.SIGINT, _ignore)
    _unanswered[:] = [True]
    raise KeyboardInterrupt


def press_answered() -> None:
    """Called by the code that caught the press and is stopping: later presses are ignored."""
    _unanswered.clear()


def raise_if_swallowed() -> None:
    """A press that was raised but never reached the code that stops, raised again. A C extension
    can run Python's signal handler and then clear the error it raised: triton's, as it is imported
    (torchvision imports it), drops a press that lands in a window of about 10 ms. Long loops
    (every DataLoader batch, in worker_batches) check, so such a press stops the work a batch later."""
    if _unanswered:
        raise KeyboardInterrupt


def _set_handler(handler: Any) -> None:
    if _in_main_thread():
        signal.signal(signal.SIGINT, handler)


@contextmanager
def holding_interrupts() -> Iterator[list]:
    """Hold Ctrl-C (SIGINT) while the block runs, so that it cannot leave a write half done.
    Yields a list that is non-empty once Ctrl-C was pressed; the caller decides what that means."""
    pressed: list[bool] = []
    if not _in_main_thread():
        yield pressed
        return
    previous = signal.signal(signal.SIGINT, lambda signum, frame: pressed.append(True))
    try:
        yield pressed
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler if previous is None else previous)


def _deliver_held_press() -> None:
    """A Ctrl-C that was held, handled now as the SIGINT handler in force says (usually: raised)."""
    handler = signal.getsignal(signal.SIGINT)
    if callable(handler):
        handler(signal.SIGINT, None)


@contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Hold Ctrl-C while the block runs, then handle it (unless the block raised something already)."""
    with holding_interrupts() as pressed:
        yield
    if pressed:
        _deliver_held_press()


# --- DataLoader workers ---------------------------------------------------------------------------


class _WorkerIgnoresInterrupts:
    """A DataLoader worker's first step: ignore SIGINT (the main process stops it), then the
    loader's own worker_init_fn. Top-level and picklable, as worker_init_fn must be."""

    def __init__(self, then: Callable[[int], None] | None):
        self.then = then

    def __call__(self, worker_id: int) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})   # held since the fork: see worker_batches
        sys.excepthook = _quiet_about_broken_hand_offs(sys.excepthook)
        if self.then is not None:
            self.then(worker_id)


def _quiet_about_broken_hand_offs(report: Callable) -> Callable:
    """A worker hands each batch's shared memory to the main process over a socket (torch shares
    tensors by file descriptor; multiprocessing's resource_sharer thread sends them, and reports
    whatever goes wrong through sys.excepthook). When the main process is interrupted in the middle
    of one, the connection breaks and the worker would print a traceback: the main process no longer
    wants that batch, which is no error of the worker's. Anything else is reported as before."""
    def excepthook(kind: type, error: BaseException, trace: Any) -> None:
        if not issubclass(kind, (EOFError, ConnectionError)):
            report(kind, error, trace)
    return excepthook


@contextmanager
def worker_batches(loader) -> Iterator[Iterator]:
    """Iterate a torch DataLoader (without persistent workers) whose workers ignore Ctrl-C, and stop
    them at once when the block ends before the batches do (Ctrl-C, out of time, an error, a break)
    rather than waiting up to 5 s for each.

    The workers start with SIGINT held (caught and blocked while they are forked or spawned), so
    not even a Ctrl-C during their start reaches them; one pressed meanwhile is raised here after."""
    if not loader.num_workers:
        yield _checked(iter(loader))
        return
    if not isinstance(loader.worker_init_fn, _WorkerIgnoresInterrupts):
        loader.worker_init_fn = _WorkerIgnoresInterrupts(loader.worker_init_fn)
    with holding_interrupts() as pressed, _sigint_blocked():
        batches = iter(loader)
    try:
        if pressed:
            _deliver_held_press()
        yield _checked(batches)
    finally:
        _stop_workers(batches)      # after the last batch torch has stopped them: nothing to do


def _checked(batches: Iterator) -> Iterator:
    for batch in batches:
        raise_if_swallowed()
        yield batch


@contextmanager
def _sigint_blocked() -> Iterator[None]:
    """SIGINT blocked in this thread (children started meanwhile inherit the mask); a signal that
    arrives meanwhile is delivered when the block ends."""
    if not _in_main_thread():
        yield
        return
    before = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def _stop_workers(batches) -> None:
    """Stop a multi-process DataLoader iterator's workers now (once stopped, nothing). torch's own
    shutdown tells them to stop, waits MP_STATUS_CHECK_INTERVAL (5 s) for each, then terminates
    those still running; it has no public call with a shorter wait, so its interval is shortened
    for this one call."""
    from torch.utils.data import _utils

    usual = _utils.MP_STATUS_CHECK_INTERVAL
    _utils.MP_STATUS_CHECK_INTERVAL = WORKER_GRACE_SECONDS
    try:
        with interrupts_deferred():     # a press meanwhile is raised once they are stopped, never dropped
            batches._shutdown_workers()
            for worker in getattr(batches, "_workers", ()):    # torch terminates and waits the same short time:
                if worker.is_alive():                          # on a busy machine one can still be there
                    worker.kill()
                    worker.join(timeout=KILLED_WORKER_SECONDS)
    finally:
        _utils.MP_STATUS_CHECK_INTERVAL = usual
