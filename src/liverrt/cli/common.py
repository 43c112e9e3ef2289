"""Options and helpers shared by the commands."""

from __future__ import annotations

import importlib
import logging
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import click
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)

from liverrt.atomic import start_command
from liverrt.data.sources import LAYOUTS
from liverrt.errors import InputError, LiverrtError

#: everything for humans goes to stderr; stdout stays for machine-readable output. Off a terminal
#: (a log file, CI, a pipe) its lines are not wrapped: see :func:`configure_output`
console = Console(stderr=True)

existing_path = click.Path(exists=True, path_type=Path)
any_path = click.Path(path_type=Path)
#: an output folder: may not exist yet, must not be a file
out_dir = click.Path(file_okay=False, path_type=Path)


class LineHandler(logging.Handler):
    """Each log record as whole lines, ``LEVEL    message`` (the columns rich's handler draws).

    For output that is no terminal: rich's handler wraps a record at the console's width (80 columns
    off a terminal) and pads every line with spaces to it.
    """

    def emit(self, record: logging.LogRecord) -> None:
        try:
            console.out(f"{record.levelname:<8} {self.format(record)}", highlight=False)
        except Exception:  # noqa: BLE001 - logging's contract: report, never raise
            self.handleError(record)


def configure_output() -> logging.Handler:
    """Where the CLI's log records go, and how the console wraps, for the output of this run.

    On a terminal, rich's handler and word wrapping at its width. Elsewhere a line stays one line,
    however long: log records through :class:`LineHandler`, and the console's own lines soft-wrapped
    (a log viewer wraps them; grep finds them whole).
    """
    console.soft_wrap = not console.is_terminal
    if console.is_terminal:
        return RichHandler(console=console, show_path=False, show_time=False, markup=False)
    return LineHandler()


def seed_option(f):
    return click.option("--seed", type=click.IntRange(0), default=0, show_default=True, help="Random seed (reproducible runs).")(f)


def clock_text(seconds: float) -> str:
    """``m:ss`` (``h:mm:ss`` from an hour on)."""
    minutes, secs = divmod(max(0, round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


@dataclass(frozen=True)
class TimeBudget:
    """Work that stops after the first of its ``chunks`` equal parts to end past ``seconds`` (``liverrt train
    --max-minutes``: the epoch that passes the budget is the last). ``option`` and ``chunk`` name them."""

    seconds: float
    chunks: int
    option: str = "--max-minutes"
    chunk: str = "epoch"


class Eta:
    """Elapsed time, and the time left from the mean time per unit of work measured so far.

    The rate counts from the first report on, so what came before it (loading, the first step's
    warm-up) is left out: the first report gives no ETA, the second the first one. A count that goes
    back, or a new total, starts a new phase (a new rate; the elapsed time goes on). With a
    :class:`TimeBudget` the ETA is that of the chunk the budget will stop after, and says so.
    """

    def __init__(self, budget: TimeBudget | None = None, *, clock=time.monotonic) -> None:
        self.budget, self.clock = budget, clock
        self.t0 = clock()
        self._first: tuple[float, int] | None = None  # (time, done) of the phase's first report
        self._total: int | None = None

    def elapsed(self) -> str:
        return f"elapsed {clock_text(self.clock() - self.t0)}"

    def left(self, done: int, total: int | None) -> str:
        """``ETA m:ss`` (with the budget's note), or ``""`` before there is a rate or after the end."""
        now = self.clock()
        if self._first is None or done < self._first[1] or total != self._total:
            self._first, self._total = (now, done), total
        t1, d1 = self._first
        if total is None or done >= total or done <= d1:
            return ""
        rate = (now - t1) / (done - d1)
        until, note = self._stop(done, total, now - self.t0, rate)
        return f"ETA {clock_text(rate * (until - done))}{note}"

    def report(self, done: int, total: int | None) -> str:
        """``elapsed m:ss, ETA m:ss`` (the ETA once there is one)."""
        left = self.left(done, total)
        return f"{self.elapsed()}, {left}" if left else self.elapsed()

    def _stop(self, done: int, total: int, elapsed: float, rate: float) -> tuple[float, str]:
        """Where the work will stop (``total``, or the end of the chunk that passes the budget) and a note."""
        budget = self.budget
        if budget is None:
            return total, ""
        per_chunk = total / budget.chunks
        for k in range(max(1, math.ceil(done / per_chunk)), budget.chunks):
            if elapsed + rate * (k * per_chunk - done) > budget.seconds:
                return k * per_chunk, f" ({budget.option} ends it after {budget.chunk} {k}/{budget.chunks})"
        return total, ""


@contextmanager
def progress_bar(description: str, total: int | None = None, *, budget: TimeBudget | None = None):
    """A rich progress bar on stderr with the elapsed time and an :class:`Eta`; yields
    ``update(done, total=None, info='')``.

    Where stderr is not a terminal (a log file, CI, a batch job), a bar would
    only be drawn once, at the end: plain progress lines are written instead
    (see :class:`LogProgress`).
    """
    if not console.is_terminal:
        yield LogProgress(description, total, budget=budget)
        return
    eta = Eta(budget)
    with Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(), TextColumn("{task.fields[eta]}"), console=console, transient=False,
    ) as bar:
        task = bar.add_task(description, total=total, info="", eta="")
        current = {"total": total}

        def update(done: int, total: int | None = None, info: str = "") -> None:
            current["total"] = current["total"] if total is None else total
            bar.update(task, completed=done, total=current["total"], info=info,
                       eta=eta.left(done, current["total"]))

        yield update


class LogProgress:
    """Progress as plain lines, ``description: done/total info (elapsed m:ss, ETA m:ss)``, for logs.

    A line is written when the work has advanced by a tenth since the last one,
    when ``every_s`` seconds have passed, and once when it completes. A new
    total, or a count that goes back, starts a new phase (the demo reuses one
    bar for its stages). The ETA is an :class:`Eta`'s.
    """

    def __init__(self, description: str, total: int | None = None, *, every_s: float = 30.0,
                 write=None, clock=time.monotonic, budget: TimeBudget | None = None) -> None:
        self.description, self.total, self.every_s = description, total, every_s
        # console.out: one report stays one line in a log (console.print wraps at 80 columns off a terminal)
        self.write = write or (lambda line: console.out(line, highlight=False))
        self.clock = clock
        self.eta = Eta(budget, clock=clock)
        self.last_t = self.eta.t0
        self.last_done: float = float("-inf")
        self.finished = False

    def __call__(self, done: int, total: int | None = None, info: str = "") -> None:
        if (total is not None and total != self.total) or done < self.last_done:  # a new phase
            self.total = self.total if total is None else total
            self.last_done, self.finished = float("-inf"), False
        if self.finished:
            return
        times = self.eta.report(done, self.total)  # every call: the rate counts from the first
        now = self.clock()
        step = max(1.0, self.total / 10) if self.total else float("inf")
        self.finished = self.total is not None and done >= self.total
        if self.finished or done - self.last_done >= step or now - self.last_t >= self.every_s:
            of = f"/{self.total}" if self.total else ""
            info = info.strip()
            self.write(f"{self.description}: {done}{of}{' ' + info if info else ''} ({times})")
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


class SummaryGroup(click.Group):
    """A group whose help lists each command with its whole first docstring sentence, wrapped to the
    width (click's own listing cuts a sentence off with "..." where it does not fit on one line)."""

    def summary(self, ctx: click.Context, name: str) -> str | None:
        """Command ``name``'s line in the listing, or None to leave it out (hidden)."""
        command = self.get_command(ctx, name)
        return None if command is None or command.hidden else command.get_short_help_str(limit=10_000)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, line) for name in self.list_commands(ctx) if (line := self.summary(ctx, name)) is not None]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


class LazyGroup(SummaryGroup):
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

    def summary(self, ctx: click.Context, name: str) -> str | None:
        return self.lazy[name][1] if name in self.lazy else super().summary(ctx, name)
