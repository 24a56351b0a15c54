"""Many `invoke` commands without seconds of imports each: one process imports tasks.py and the
strategies once, then runs every command it is sent in a process forked from it. Each command is a
real process of its own (its own process group, like a job a shell starts) running invoke's
Program over tasks.py, as the `invoke` executable does; only the imports are shared.

    with InvokeForks(environment) as forks:
        command = forks.start(["race", "--data", str(data)], folder)   # stdout, stderr into folder
        os.killpg(command.pid, signal.SIGINT)                           # Ctrl-C, as a terminal sends it
        code = command.wait(timeout=5)                                  # None: still running
"""
from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import PROJECT

SERVER = r"""
import faulthandler, json, os, signal, sys
sys.path.insert(0, sys.argv[1])
import tasks, strategies, toolkit.race.runner, toolkit.views.race, toolkit.views.race_console  # the imports, once
from invoke import Collection, Program

namespace = Collection.from_module(tasks)
print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    request = json.loads(line)
    sys.stdout.flush()
    pid = os.fork()
    if pid == 0:                                   # the command
        os.setpgid(0, 0)
        os.chdir(request["cwd"])
        for fd, name in ((0, os.devnull), (1, request["stdout"]), (2, request["stderr"])):
            os.dup2(os.open(name, os.O_RDONLY if fd == 0 else os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
        os.environ.update(request["environment"])
        faulthandler.register(signal.SIGUSR1, all_threads=True)   # Command.stacks: where it is, into stderr.txt
        Program(namespace=namespace, version="test").run(["invoke", *request["arguments"]])
        sys.exit(0)
    os.setpgid(pid, pid)                           # before its pid is told: a signal to its group always lands
    print(json.dumps({"pid": pid}), flush=True)
    _, status = os.waitpid(pid, 0)
    print(json.dumps({"pid": pid, "code": os.waitstatus_to_exitcode(status)}), flush=True)
"""


@dataclass
class Command:
    pid: int
    folder: Path
    _replies: "queue.Queue[dict]"
    code: int | None = None

    def wait(self, timeout: float) -> int | None:
        """Its exit code (negative: killed by that signal), or None if it is still running after `timeout` s."""
        if self.code is None:
            try:
                reply = self._replies.get(timeout=timeout)
            except queue.Empty:
                return None
            assert reply["pid"] == self.pid, reply
            self.code = reply["code"]
        return self.code

    def stacks(self, seconds: float = 2.0) -> str:
        """What every thread of the still-running command is doing (Python's faulthandler, asked by
        SIGUSR1, writes it to its stderr): for the message of a test that found it running too long."""
        before = len(self.stderr)
        try:
            os.kill(self.pid, signal.SIGUSR1)
        except ProcessLookupError:
            return "(it has just ended)"
        waited_until = time.monotonic() + seconds
        while len(self.stderr) == before and time.monotonic() < waited_until:
            time.sleep(0.05)
        time.sleep(0.2)                             # the other threads' stacks, written after the first's
        return self.stderr[before:] + self.kernel_stacks()

    def kernel_stacks(self) -> str:
        """Each thread's state and kernel stack (Linux /proc, readable as root): where a command
        waits when Python cannot answer at all, e.g. in a long fsync (state D)."""
        lines = []
        for task in sorted(Path(f"/proc/{self.pid}/task").glob("[0-9]*")):
            try:
                status = dict(line.split(":\t", 1) for line in (task / "status").read_text().splitlines()
                              if ":\t" in line)
                kernel = (task / "stack").read_text().strip() if (task / "stack").exists() else ""
            except (OSError, ValueError):
                continue
            lines.append(f"thread {task.name} {status.get('Name', '?')}: {status.get('State', '?')}\n"
                         f"{kernel or '(kernel stack not readable)'}")
        return "\n".join(["", "kernel side:", *lines]) if lines else "\nkernel side: (it has ended)"

    @property
    def stdout(self) -> str:
        return self._read("stdout.txt")

    @property
    def stderr(self) -> str:
        return self._read("stderr.txt")

    def _read(self, name: str) -> str:
        """What the command wrote so far ("" before it opened the file)."""
        try:
            return (self.folder / name).read_text(errors="replace")
        except FileNotFoundError:
            return ""


class InvokeForks:
    """The forking process; one command at a time."""

    def __init__(self, environment: dict[str, str], startup_timeout: float = 300):
        self.log = open(os.devnull, "w")
        self.process = subprocess.Popen([sys.executable, "-c", SERVER, str(PROJECT)], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=self.log, text=True,
                                        env={**os.environ, **environment})
        self.replies: "queue.Queue[dict]" = queue.Queue()     # in order: ready, then a pid and a code a command
        self.running: Command | None = None
        threading.Thread(target=self._read, daemon=True).start()
        ready = self.replies.get(timeout=startup_timeout)
        assert ready == {"ready": True}, ready

    def _read(self) -> None:
        for line in self.process.stdout:
            self.replies.put(json.loads(line))

    def start(self, arguments: list[str], folder: Path, environment: dict[str, str] | None = None) -> Command:
        """Start `invoke ARGUMENTS` in `folder` (its stdout.txt and stderr.txt go there)."""
        assert self.running is None or self.running.code is not None, "one command at a time"
        folder.mkdir(parents=True, exist_ok=True)
        request = {"arguments": arguments, "cwd": str(folder), "environment": environment or {},
                   "stdout": str(folder / "stdout.txt"), "stderr": str(folder / "stderr.txt")}
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        self.running = Command(pid=self.replies.get(timeout=60)["pid"], folder=folder, _replies=self.replies)
        return self.running

    def __enter__(self) -> InvokeForks:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.running is not None and self.running.code is None:
            try:
                os.killpg(self.running.pid, 9)
            except ProcessLookupError:
                pass
        self.process.stdin.close()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()
