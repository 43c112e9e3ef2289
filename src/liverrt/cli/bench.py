"""``liverrt bench``."""

from __future__ import annotations

from pathlib import Path

import click

from liverrt.bench import SECTIONS, run_bench
from liverrt.cli.common import console, existing_path, out_dir, overwrite_option


@click.command()
@click.option("--quick", is_flag=True, help="Fewer repeats (CI).")
@click.option("--out", type=out_dir, default=Path("bench_out"), show_default=True)
@click.option("--model", type=existing_path, default=None,
              help="A checkpoint to time: U-Net, Mask R-CNN or DnCNN-SR (default: the study's U-Net with "
                   "random weights).")
@click.option("--only", type=click.Choice(["engines", "metrics"]), multiple=True,
              help="Run only these sections (repeatable; default: all).")
@overwrite_option
def bench(quick: bool, out: Path, model: Path | None, only: tuple[str, ...]) -> None:
    """Measure the engines of a network (torch vs onnxruntime fp32/fp16/int8, batch 1 and 8) and the
    metric kernels (vs SciPy references); prints a Markdown report and writes report.md and results.json."""

    run_bench(out, quick=quick, model=model, sections=tuple(only) or SECTIONS,
              on_step=lambda s: console.print(f"[dim]bench:[/] {s}"))
    click.echo((out / "report.md").read_text())
