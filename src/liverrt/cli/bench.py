"""``liverrt bench``."""

from __future__ import annotations

from pathlib import Path

import click

from liverrt.bench import SECTIONS, run_bench
from liverrt.bench.subject import RandomWeights
from liverrt.cli.common import console, out_dir, overwrite_option
from liverrt.models import names


@click.command()
@click.option("--quick", is_flag=True,
              help="Fewer repeats, int8 timed with quick ranges and not gated, no fresh Numba compile (CI); the "
                   "report lists what it skips.")
@click.option("-o", "--out", type=out_dir, default=Path("bench_out"), show_default=True)
@click.option("-m", "--model", default=None, metavar="FILE|NAME",
              help="What to time: a checkpoint (.pt: U-Net, Mask R-CNN or DnCNN-SR), an ONNX file, or a bundled "
                   "model's name (default: the bundled default model, `liverrt models`).")
@click.option("--random-weights", "random_weights", is_flag=False, flag_value="unet_paper", default=None,
              type=click.Choice(names()), metavar="[NETWORK]",
              help=f"Time a network with seeded random weights instead, at 512x512 ({', '.join(names())}; "
                   "default: unet_paper, the study's U-Net); timed, not gated.")
@click.option("--only", type=click.Choice(["engines", "metrics"]), multiple=True,
              help="Run only these sections (repeatable; default: all).")
@overwrite_option
def bench(quick: bool, out: Path, model: str | None, random_weights: str | None, only: tuple[str, ...]) -> None:
    """Measure how fast a model runs on each engine and precision, and the metric kernels.

    The bundled model by default: torch vs onnxruntime fp32/fp16/int8 at batch 1 and 8, network and
    end to end, each variant with its verification gate; the metric kernels vs SciPy references.
    Prints a Markdown report and writes report.md and results.json."""

    run_bench(out, quick=quick, model=model,
              random_weights=None if random_weights is None else RandomWeights(random_weights),
              sections=tuple(only) or SECTIONS, on_step=lambda s: console.print(f"[dim]bench:[/] {s}"))
    click.echo((out / "report.md").read_text())
