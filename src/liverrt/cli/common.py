"""Options and helpers shared by the commands."""

from __future__ import annotations

import importlib
import time
from contextlib import contextmanager
from pathlib import Path

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from liverrt.atomic import start_command
from liverrt.data.sources import LAYOUTS
from liverrt.errors import InputError, LiverrtError

#: everything for humans goes to stderr; stdout stays for machine-readable output
console = Console(stderr=True)

existing_path = click.Path(exists=True, path_type=Path)
any_path = click.Path(path_type=Path)
#: an output folder: may not exist yet, must not be a file
out_dir = click.Path(file_okay=False, path_type=Path)


def seed_option(f):
    return click.option("--seed", type=click.IntRange(0), default=0, show_default=True, help="Random seed (reproducible runs).")(f)


@contextmanager
def progress_bar(description: str, total: int | None = None):
    """A rich progress bar on stderr; yields ``update(done, total=None, info='')``.

    Where stderr is not a terminal (a log file, CI, a batch job), a bar would
    only be drawn once, at the end: plain progress lines are written instead
    (see :class:`LogProgress`).
    """
    if not console.is_terminal:
        yield LogProgress(description, total)
        return
    with Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=False,
    ) as bar:
        task = bar.add_task(description, total=total, info="")

        def update(done: int, total: int | None = None, info: str = "") -> None:
            bar.update(task, completed=done, total=total, info=info)

        yield update


class LogProgress:
    """Progress as plain lines, ``description: done/total info (elapsed)``, for logs.

    A line is written when the work has advanced by a tenth since the last one,
    when ``every_s`` seconds have passed, and once when it completes. A new
    total, or a count that goes back, starts a new phase (the demo reuses one
    bar for its stages).
    """

    def __init__(self, description: str, total: int | None = None, *, every_s: float = 30.0,
                 write=None, clock=time.monotonic) -> None:
        self.description, self.total, self.every_s = description, total, every_s
        # soft_wrap: one report stays one line in a log (rich wraps at 80 columns off a terminal)
        self.write = write or (lambda line: console.print(line, highlight=False, markup=False, soft_wrap=True))
        self.clock = clock
        self.t0 = self.last_t = clock()
        self.last_done: float = float("-inf")
        self.finished = False

    def __call__(self, done: int, total: int | None = None, info: str = "") -> None:
        if (total is not None and total != self.total) or done < self.last_done:  # a new phase
            self.total = self.total if total is None else total
            self.last_done, self.finished = float("-inf"), False
        if self.finished:
            return
        now = self.clock()
        step = max(1.0, self.total / 10) if self.total else float("inf")
        self.finished = self.total is not None and done >= self.total
        if self.finished or done - self.last_done >= step or now - self.last_t >= self.every_s:
            of = f"/{self.total}" if self.total else ""
            info = info.strip()
            self.write(f"{self.description}: {done}{of}{' ' + info if info else ''} ({now - self.t0:.0f} s)")
            self.last_done, self.last_t = done, now


def _set_overwrite(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
    # the writer the outputs' markers record, and --overwrite; LiverrtGroup.invoke resets both after the command
    start_command(" ".join(["liverrt", *ctx.command_path.split()[1:]]), overwrite=bool(value))
    return value


def overwrite_option(f=None, *, expose: bool = False, help: str | None = None):  # noqa: A002
    """``--overwrite``: outputs may replace files and folders liverrt did not write (never an input).

    Without it, an existing output is replaced only if liverrt wrote it (see :mod:`liverrt.atomic`).
    ``expose``: also pass the flag to the command (export forwards it to the Triton writer).
    """
    def decorate(fn):
        return click.option("--overwrite", is_flag=True, callback=_set_overwrite, expose_value=expose,
                            help=help or "Replace existing outputs even where liverrt did not write them "
                                         "(never an input). Without it, only liverrt's own outputs are replaced.")(fn)

    return decorate(f) if f is not None else decorate


def fail_if_skipped(skipped: list[dict], written: int, *, shown: int = 3) -> None:
    """End a batch command after its good cases: exit 1 if a case failed at run time, else 2.

    ``skipped``: ``{"id", "reason", "kind": "input" | "runtime"}`` per case left out (each was
    also logged as a warning); the error line names the first ``shown`` of them.
    """
    if not skipped:
        return
    lines = "; ".join(f"{s['id']}: {s['reason']}" for s in skipped[:shown])
    more = f"; and {len(skipped) - shown} more (see the warnings above)" if len(skipped) > shown else ""
    others = f"the other {written} were written" if written else "no case was written"
    message = f"{len(skipped)} case(s) skipped, {others}: {lines}{more}"
    raise (LiverrtError if any(s["kind"] == "runtime" for s in skipped) else InputError)(message)


def layout_option(f):
    return click.option("--layout", type=click.Choice(LAYOUTS), default=None,
                        help="Read only this layout (default: detect).")(f)


def kitti_options(f):
    f = click.option("--unannotated", type=click.Choice(["exclude", "negative"]), default="exclude",
                     show_default=True,
                     help="KITTI images without a mask: leave out, or keep as liver-free slices.")(f)
    return click.option("--label", default="liver", show_default=True,
                        help="Label name of the liver in a KITTI label_colors.txt.")(f)


def given(ctx: click.Context, name: str) -> bool:
    """Whether the user set option ``name`` on the command line (not its default)."""
    source = ctx.get_parameter_source(name)
    return source is not None and source.name == "COMMANDLINE"


class LazyGroup(click.Group):
    """A group whose ``lazy`` commands, ``{name: ("module:attribute", first docstring sentence)}``, are
    imported only when they run or show their own help: the training, export and runtime commands
    import torch (about 2.5 s on 2 cores), and ``liverrt --help`` or ``liverrt data inspect`` should
    not wait for it. The listing shows the stored sentence (``tests/cli/test_cli.py`` checks it
    against the command's own docstring)."""

    def __init__(self, *args, lazy: dict[str, tuple[str, str]] | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = dict(lazy or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy:
            module, attribute = self.lazy[cmd_name][0].split(":")
            return getattr(importlib.import_module(module), attribute)
        return super().get_command(ctx, cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        names = self.list_commands(ctx)
        if not names:
            return
        width = formatter.width - 6 - max(len(name) for name in names)
        rows = []
        for name in names:
            if name in self.lazy:
                short = click.Command(name, help=self.lazy[name][1]).get_short_help_str(limit=width)
            else:
                short = self.commands[name].get_short_help_str(limit=width)
            rows.append((name, short))
        with formatter.section("Commands"):
            formatter.write_dl(rows)
