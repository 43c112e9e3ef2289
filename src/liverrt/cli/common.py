"""Options and helpers shared by the commands."""

from __future__ import annotations

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
    """A rich progress bar on stderr; yields ``update(done, total=None, info='')``."""
    with Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=False,
    ) as bar:
        task = bar.add_task(description, total=total, info="")

        def update(done: int, total: int | None = None, info: str = "") -> None:
            bar.update(task, completed=done, total=total, info=info)

        yield update


def layout_option(f):
    from liverrt.data.sources import LAYOUTS

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
