"""The ``liverrt`` command line: thin commands over the library.

Library errors become one-line messages: exit code 2 for bad input or
artifacts, 1 for runtime failures; no traceback (set LIVERRT_DEBUG=1 to see one).
"""

from __future__ import annotations

import logging
import os
import signal
import sys

import click

from liverrt import __version__
from liverrt.atomic import os_error, overwrite_allowed, writing_as
from liverrt.errors import LiverrtError

#: exit code after SIGTERM (128 + 15, as a shell reports a process ended by it)
EXIT_SIGTERM = 143


class Terminated(BaseException):
    """Raised in the main thread on SIGTERM, so that every atomic writer removes what it had begun.

    A BaseException, like KeyboardInterrupt: the per-case ``except Exception`` of batch commands
    must not swallow it and go on with the next case.
    """


def _on_sigterm(signum, frame):  # noqa: ARG001 - signal handler signature
    raise Terminated()


class _CliError(click.ClickException):
    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class LiverrtGroup(click.Group):
    """A group that turns :class:`LiverrtError` (and OS errors) into clean CLI errors."""

    def invoke(self, ctx: click.Context):
        try:
            # each writing command's --overwrite option sets both for itself (cli.common.overwrite_option)
            with overwrite_allowed(False), writing_as("liverrt"):
                return super().invoke(ctx)
        except LiverrtError as exc:
            if os.environ.get("LIVERRT_DEBUG"):
                raise
            raise _CliError(_one_line(str(exc)), exc.exit_code) from None
        except OSError as exc:
            if os.environ.get("LIVERRT_DEBUG"):
                raise
            err = os_error(exc, exc.filename or "a file", "read or write")
            raise _CliError(_one_line(str(err)), err.exit_code) from None


def _one_line(message: str) -> str:
    """Errors are one line: a message that spans several (a library's text inside) is joined."""
    return " ".join(part.strip() for part in message.strip().splitlines() if part.strip())


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
    # pydicom warns about every odd header value before liverrt's reader names the file and the tag once
    logging.getLogger("pydicom").setLevel(logging.ERROR)


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
    """Run the CLI; SIGTERM is handled like SIGINT (what was being written is removed, finished outputs stay)."""
    signal.signal(signal.SIGTERM, _on_sigterm)  # the entry point runs in the main thread
    try:
        cli(prog_name="liverrt")
    except Terminated:
        click.echo("Error: stopped by SIGTERM; the output being written was removed, finished outputs are kept.",
                   err=True)
        sys.exit(EXIT_SIGTERM)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
