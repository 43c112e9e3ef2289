"""``liverrt demo``."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import click

from liverrt.cli.common import console, out_dir, overwrite_option, progress_bar, seed_option
from liverrt.demo import DemoConfig, run_demo
from liverrt.errors import LiverrtError


@click.command()
@click.option("-o", "--out", type=out_dir, default=Path("demo_out"), show_default=True)
@click.option("--epochs", type=click.IntRange(1), default=None, help="Training epochs (default: the demo's budget).")
@click.option("--cases", type=click.IntRange(4), default=None, help="Phantom cases to synthesise.")
@seed_option
@overwrite_option
def demo(out: Path, epochs: int | None, cases: int | None, seed: int) -> None:
    """Run the whole pipeline on built-in phantoms: synth -> train -> ONNX -> onnxruntime -> eval -> report."""


    cfg = DemoConfig(seed=seed)
    if epochs is not None:
        cfg = replace(cfg, epochs=epochs)
    if cases is not None:
        cfg = replace(cfg, cases=cases)
    with progress_bar("demo") as update:
        last = {"stage": None}

        def on_step(stage: str, done: int, total: int, info: str) -> None:
            if stage == "epoch":  # the training loop logs each epoch's scores
                return
            if stage != last["stage"]:
                console.print(f"[bold]{stage}[/]")
                last["stage"] = stage
            update(done, total, f"{stage} {info}")

        result = run_demo(out, cfg, on_step=on_step)
    click.echo((out / "report.md").read_text())
    console.print(f"demo finished in {result.seconds:.0f}s; report: {out / 'report.md'}")
    if not result.passed:
        raise LiverrtError(
            f"held-out Mask IoU {result.metrics['mean_volume_mask_iou']:.4f} is below the demo's "
            f"{cfg.min_iou:.2f} target; see {out / 'report.md'}."
        )
