"""The command line of the invoke tasks, decided in one place (tasks.py: `@task(klass=Command)`):

- `invoke TASK --help` (or `-h`) works after every task name, also before a positional argument
  is given; no option takes `-h` as its short flag;
- every option's help says its default ("(default: 8)", "(default: on)"); a required option says so;
- an option without a default that is not positional is required: missing, one line and exit 1;
- a number option (annotated `Count`, `Fraction`, ... from toolkit.machine.options) reaches the
  task as a number; a bad one is one line naming the option, and exit 1;
- `fail(message)`: the one way a task ends with an error line.
"""
from __future__ import annotations

import inspect
import sys
import typing
from typing import Any, Callable

import invoke
from rich.markup import escape

from toolkit.machine import interrupts
from toolkit.machine.console import console
from toolkit.machine.options import OptionError, number_rule, read_number

HELP_FLAGS = ("--help", "-h")
RESERVED_SHORT_FLAGS = {"h"}        # invoke's own -h (help) must not be shadowed by an option


def fail(message: str) -> invoke.Exit:
    """Print 'error: <message>' (one line) and return the Exit to raise (exit code 1)."""
    console.print(f"[red]error:[/red] {message}", soft_wrap=True)
    return invoke.Exit(code=1)


def default_text(default: Any) -> str:
    """A default as help shows it: on/off for switches, the value otherwise."""
    if isinstance(default, bool):
        return "on" if default else "off"
    if isinstance(default, float):
        return f"{default:g}"
    return str(default)


def help_with_default(text: str | None, default: Any, required: bool) -> str:
    """An option's help with '(default: X)' or '(required)' added; a None default says its meaning
    in the help text itself ('(default: half the cores)'), and a text that already names it is kept."""
    text = (text or "").rstrip()
    if required:
        return f"{text} (required)".strip()
    if default is None or default is inspect.Parameter.empty or "(default" in text:
        return text
    return f"{text} (default: {default_text(default)})".strip()


class Command(invoke.Task):
    """An invoke Task with this project's command-line rules (see the module docstring).
    `interrupted`: what the task says it kept when Ctrl-C stops it (toolkit.machine.interrupts)."""

    def __init__(self, body: Callable, *, interrupted: str = "stopped before it finished",
                 positional: typing.Iterable[str] = (), **options: Any):
        self.raw_body = body
        self.full_help = dict(options.get("help") or {})
        self.rules = {name: rule for name, hint in typing.get_type_hints(body, include_extras=True).items()
                      if (rule := number_rule(hint)) is not None}
        super().__init__(interrupts.interruptible(interrupted)(body), positional=list(positional), **options)
        parameters = list(self.argspec(self.body).parameters.values())
        self.required = [parameter.name for parameter in parameters
                         if parameter.default is inspect.Parameter.empty and parameter.name not in self.positional]

    def arg_opts(self, name: str, default: Any, taken_names: set[str]) -> dict[str, Any]:
        opts = super().arg_opts(name, default, taken_names)
        opts["names"] = [flag for flag in opts["names"] if flag not in RESERVED_SHORT_FLAGS]   # no other flag moves
        if name in self.rules:
            opts["kind"] = str                  # read by read_number, so a bad value is one line
        required = default is inspect.Parameter.empty and name not in self.positional
        opts["help"] = help_with_default(opts.get("help"), default, required)
        return opts

    def get_arguments(self, ignore_unknown_help: bool | None = None) -> list:
        self.help = dict(self.full_help)        # invoke pops help as it reads it; every read gets all of it
        return super().get_arguments(ignore_unknown_help)

    @property
    def command_name(self) -> str:
        return self.name.replace("_", "-")

    def __call__(self, context: Any, *args: Any, **kwargs: Any) -> Any:
        given = dict(zip(self.positional, args)) | kwargs
        if any(given.get(name) in HELP_FLAGS for name in self.positional):
            self.print_help()                   # `invoke score --help`: the positional took the flag
            return None
        missing = [name for name in self.required if given.get(name) is None]
        if missing:
            flags = ", ".join(f"--{name.replace('_', '-')}" for name in missing)
            raise fail(f"invoke {self.command_name} needs {flags}; invoke {self.command_name} --help says more")
        try:
            for name, rule in self.rules.items():
                if name in given:
                    given[name] = read_number(given[name], f"--{name.replace('_', '-')}", rule)
        except OptionError as error:
            raise fail(escape(str(error))) from None
        return super().__call__(context, **given)

    def print_help(self) -> None:
        """What `invoke --help TASK` prints, from this task's own module."""
        program = invoke.Program(namespace=invoke.Collection.from_module(sys.modules[self.raw_body.__module__]),
                                 binary="invoke")
        program.run(["invoke", "--help", self.command_name], exit=False)

