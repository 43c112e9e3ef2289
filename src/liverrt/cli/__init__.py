"""The ``liverrt`` command line: thin commands over the library.

Library errors become one-line messages: exit code 2 for bad input or
artifacts, 1 for runtime failures; no traceback (set LIVERRT_DEBUG=1 to see one).
"""

from __future__ import annotations

import logging
import os
import sys

import click

from liverrt import __version__
from liverrt.errors import LiverrtError


class _CliError(click.ClickException):
    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class LiverrtGroup(click.Group):
    """A group that turns :class:`LiverrtError` (and OS errors) into clean CLI errors."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except LiverrtError as exc:
            if os.environ.get("LIVERRT_DEBUG"):
                raise
            raise _CliError(str(exc), exc.exit_code) from None
        except OSError as exc:
            if os.environ.get("LIVERRT_DEBUG"):
                raise
            raise _CliError(f"{exc.strerror or exc} ({exc.filename or ''})", 1) from None


def _setup_logging(verbose: int) -> None:
    from rich.logging import RichHandler

    from liverrt.cli.common import console

    level = logging.WARNING if verbose < 0 else logging.INFO if verbose == 0 else logging.DEBUG
    if os.environ.get("RANK", "0") != "0":  # torchrun: rank 0 speaks for the run
        level = max(level, logging.WARNING)
    handler = RichHandler(console=console, show_path=False, show_time=False, markup=False)
    logging.basicConfig(level=level, handlers=[handler], format="%(message)s", force=True)
    for noisy in ("torch", "onnxscript", "onnx_ir", "numba", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@click.group(cls=LiverrtGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="liverrt")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors.")
def cli(verbose: int, quiet: bool) -> None:
    """liverrt: liver segmentation for abdominal CT, from training to fast, verified deployment."""
    _setup_logging(-1 if quiet else verbose)


def _register() -> None:
    from liverrt.cli import bench, data, demo, evaluate, export, import_d2, infer, train

    cli.add_command(data.data)
    cli.add_command(train.train)
    cli.add_command(export.export)
    cli.add_command(infer.infer)
    cli.add_command(evaluate.eval_cmd)
    cli.add_command(demo.demo)
    cli.add_command(bench.bench)
    cli.add_command(import_d2.import_detectron2)


_register()


def main() -> None:  # console-script entry point
    cli(prog_name="liverrt")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
