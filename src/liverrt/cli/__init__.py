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
from liverrt.atomic import os_error, overwrite_allowed, remove_unfinished, writing_as
from liverrt.cli.common import LazyGroup, configure_output
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


#: every command: its name, where it lives (``module:attribute``) and the line ``liverrt --help`` shows
#: (loaded on first use: :class:`~liverrt.cli.common.LazyGroup`)
COMMANDS: dict[str, tuple[str, str]] = {
    "data": ("liverrt.cli.data:data", "Create and prepare data."),
    "train": ("liverrt.cli.train:train", "Train a network (U-Net, Mask R-CNN or DnCNN-SR) on labelled cases."),
    "export": ("liverrt.cli.export:export",
               "Export a checkpoint to ONNX, TensorRT or Triton, kept only if it passes the check against PyTorch."),
    "infer": ("liverrt.cli.infer:infer", "Segment the liver in every case of INPUT."),
    "eval": ("liverrt.cli.evaluate:eval_cmd",
             "Score predicted liver masks against the ground truth, per volume and per slice."),
    "demo": ("liverrt.cli.demo:demo",
             "Run the whole pipeline on built-in phantoms: synth -> train -> ONNX -> onnxruntime -> eval -> report."),
    "bench": ("liverrt.cli.bench:bench",
              "Measure how fast a model runs on each engine and precision, and the metric kernels."),
    "models": ("liverrt.cli.models:models",
               "List the bundled liver models and print their cards (training data and licences, metrics, speed)."),
    "import-detectron2": ("liverrt.cli.import_d2:import_detectron2",
                          "Convert a Detectron2 Mask R-CNN (R-50/R-101 FPN) checkpoint into a liverrt checkpoint."),
}


class LiverrtGroup(LazyGroup):
    """The top-level group: commands load on first use (:data:`COMMANDS`), and :class:`LiverrtError`
    (and OS errors) become clean one-line CLI errors."""

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


#: libraries whose loggers are set by name (some set a level of their own, which the root's does not
#: override); every other library's logger follows the root logger, at the same level
THIRD_PARTY_LOGGERS = ("highdicom", "pydicom", "numba", "torch", "onnxruntime", "onnxscript", "onnx_ir", "onnx",
                       "PIL", "matplotlib", "polygraphy", "nibabel", "tritonclient")


#: libraries whose DEBUG logs are floods rather than diagnostics: INFO at ``-vv``, DEBUG only at ``-vvv``
#: (a first ``liverrt -vv eval`` logged 73,000 lines of Numba's compiler passes; PIL logs every PNG chunk)
FLOODS_AT_DEBUG = ("numba", "PIL", "matplotlib")


def _log_levels(verbose: int) -> tuple[int, int]:
    """(liverrt's level, other libraries' level) for ``-q`` (verbose -1), the default (0), ``-v`` (1), ``-vv`` (2+).

    Other libraries speak only of warnings unless asked: highdicom alone logs 9 INFO lines per DICOM SEG.
    """
    if verbose < 0:
        return logging.WARNING, logging.WARNING
    if verbose == 0:
        return logging.INFO, logging.WARNING
    if verbose == 1:
        return logging.INFO, logging.INFO
    return logging.DEBUG, logging.DEBUG


def _setup_logging(verbose: int) -> None:
    own, others = _log_levels(verbose)
    if os.environ.get("RANK", "0") != "0":  # torchrun: rank 0 speaks for the run
        own, others = max(own, logging.WARNING), max(others, logging.WARNING)
    logging.basicConfig(level=others, handlers=[configure_output()], format="%(message)s", force=True)
    logging.getLogger("liverrt").setLevel(own)
    for name in THIRD_PARTY_LOGGERS:
        logging.getLogger(name).setLevel(others)
    if verbose < 3:
        for name in FLOODS_AT_DEBUG:
            logging.getLogger(name).setLevel(max(others, logging.INFO))
    if verbose <= 0:
        # pydicom warns about every odd header value before liverrt's reader names the file and the tag once
        logging.getLogger("pydicom").setLevel(logging.ERROR)


# help is as wide as the terminal up to 120 columns (click's default stops at 80)
@click.group(cls=LiverrtGroup, lazy=COMMANDS,
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 120})
@click.version_option(__version__, prog_name="liverrt")
@click.option("-v", "--verbose", count=True,
              help="More log output: -v adds other libraries' INFO logs, -vv debug logs (-vvv: Numba's and PIL's too).")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors.")
def cli(verbose: int, quiet: bool) -> None:
    """liverrt: liver segmentation for abdominal CT, from training to fast, verified deployment."""
    _setup_logging(-1 if quiet else verbose)


def main() -> None:  # console-script entry point
    """Run the CLI; SIGTERM is handled like SIGINT (what was being written is removed, finished outputs stay)."""
    signal.signal(signal.SIGTERM, _on_sigterm)  # the entry point runs in the main thread
    try:
        cli(prog_name="liverrt")
    except Terminated:
        click.echo("Error: stopped by SIGTERM; the output being written was removed, finished outputs are kept.",
                   err=True)
        sys.exit(EXIT_SIGTERM)
    finally:  # click turns SIGINT's KeyboardInterrupt into "Aborted!" and exit 1: this runs then too
        remove_unfinished()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
