"""``liverrt train``."""

from __future__ import annotations

import json
from pathlib import Path

import click

from liverrt.cli.common import (
    console,
    existing_path,
    kitti_options,
    layout_option,
    out_dir,
    progress_bar,
    seed_option,
)


@click.group()
def train() -> None:
    """Train a network."""


@train.command()
@click.option("--data", "data_path", type=existing_path, required=True, help="Labelled cases (see `liverrt data`).")
@click.option("--out", type=out_dir, required=True, help="Output folder for best.pt, last.pt and train_log.csv.")
@click.option("--epochs", type=click.IntRange(1), default=30, show_default=True)
@click.option("--batch-size", type=click.IntRange(1), default=8, show_default=True)
@click.option("--lr", type=float, default=1e-3, show_default=True)
@click.option("--size", type=click.IntRange(16), default=512, show_default=True,
              help="Network input size (multiple of 16; the study used 512).")
@click.option("--resize", type=click.Choice(["letterbox", "resize", "pad"]), default="letterbox", show_default=True)
@click.option("--window", type=(float, float), default=(50.0, 400.0), show_default=True,
              metavar="CENTER WIDTH", help="HU window for HU inputs.")
@click.option("--val-fraction", type=float, default=0.2, show_default=True, help="Share of cases for validation.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--no-augment", is_flag=True, help="Disable augmentations.")
@click.option("--flip-p", type=click.FloatRange(0, 1), default=0.0, show_default=True,
              help="Left-right flip probability (off: volumes are reoriented so the liver is on the image left).")
@click.option("--max-minutes", type=float, default=None, help="Stop after the epoch that passes this time budget.")
@layout_option
@kitti_options
@seed_option
def unet(data_path: Path, out: Path, epochs: int, batch_size: int, lr: float, size: int, resize: str,
         window: tuple[float, float], val_fraction: float, device: str, no_augment: bool, flip_p: float,
         max_minutes: float | None, layout: str | None, label: str, unannotated: str, seed: int) -> None:
    """Train the study's U-Net (Dice + BCE, Adam, augmentations, case-level split)."""
    from liverrt.data.preprocess import PreprocessSpec
    from liverrt.data.sources import ReadOptions, load_cases
    from liverrt.training.augment import AugmentConfig
    from liverrt.training.unet import TrainConfig, train_unet

    loaded = load_cases(data_path, require_mask=True, layout=layout,
                        options=ReadOptions(label=label, unannotated=unannotated))
    for source, reason in loaded.skipped:
        console.print(f"[yellow]skipped[/] {source}: {reason}")
    domain = "8bit" if all(v.intensity == "8bit" for v in loaded.volumes) else "hu"
    spec = PreprocessSpec(window_center=window[0], window_width=window[1], size=size, resize=resize,
                          input_domain=domain)
    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, val_fraction=val_fraction, seed=seed,
                      device=device, max_minutes=max_minutes, augment=AugmentConfig(enabled=not no_augment, flip_p=flip_p))
    with progress_bar("training") as update:
        def on_progress(stage: str, done: int, total: int, info: dict) -> None:
            if stage == "train":  # the training loop logs each epoch's scores itself
                update(done, total, f"epoch {info['epoch']} loss {info['loss']:.3f}")

        result = train_unet(loaded.volumes, out, spec=spec, config=cfg, progress=on_progress)
    console.print(f"best checkpoint: {result.best_checkpoint} (val Mask IoU {result.best_metrics['mask_iou']:.4f}, "
                  f"epoch {result.best_metrics['epoch']}); {result.seconds:.0f}s")
    click.echo(json.dumps({"best": str(result.best_checkpoint), "metrics": result.best_metrics, "split": result.split}))
