"""``liverrt train unet|maskrcnn|dncnn-sr``: one set of training options, one loop.

Multi-GPU / multi-node: start the same command under ``torchrun``, e.g.
``torchrun --nproc-per-node 4 -m liverrt train maskrcnn --data D --out O``;
rank 0 validates, logs and writes the checkpoints.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import click

from liverrt.atomic import check_outputs, overwriting, refuse_output_in_input
from liverrt.cli.common import (
    SummaryGroup,
    TimeBudget,
    console,
    existing_path,
    kitti_options,
    layout_option,
    out_dir,
    overwrite_option,
    progress_bar,
    seed_option,
)
from liverrt.data.preprocess import MAX_CONTEXT, PreprocessSpec
from liverrt.data.sources import ReadOptions, load_cases
from liverrt.errors import InputError
from liverrt.evaluation import json_safe
from liverrt.models.maskrcnn import load_backbone_weights
from liverrt.training.augment import AugmentConfig
from liverrt.training.degrade import DegradeConfig
from liverrt.training.dncnn import DnCNNTask, grid_pixel_mm
from liverrt.training.loop import TrainConfig, fit
from liverrt.training.maskrcnn import MaskRCNNTask
from liverrt.training.unet import UNetTask, split_volumes, stored_split

#: what a run writes into --out
RUN_FILES = ("best.pt", "last.pt", "train_log.csv", "curves.png")


@click.group(cls=SummaryGroup)
def train() -> None:
    """Train a network (U-Net, Mask R-CNN or DnCNN-SR) on labelled cases."""


def training_options(default_size: int = 512, default_batch: int = 8, default_lr: float = 1e-3,
                     default_epochs: int = 30):
    """Options every ``liverrt train`` command shares."""

    def wrap(f):
        options = [
            click.option("--data", "data_path", type=existing_path, required=True,
                         help="Cases to train on (any layout `liverrt data inspect` reads)."),
            click.option("-o", "--out", type=out_dir, required=True,
                         help="Run folder: best.pt, last.pt, train_log.csv, curves.png."),
            click.option("--epochs", type=click.IntRange(1), default=default_epochs, show_default=True),
            click.option("--batch-size", type=click.IntRange(1), default=default_batch, show_default=True,
                         help="Slices per micro-batch and process."),
            click.option("--grad-accum", type=click.IntRange(1), default=1, show_default=True,
                         help="Micro-batches per optimiser step (effective batch = batch x accum x processes)."),
            click.option("--lr", type=float, default=default_lr, show_default=True),
            click.option("--optimizer", type=click.Choice(["adam", "adamw", "sgd"]), default=None,
                         help="Default: adam (U-Net, DnCNN-SR), adamw (Mask R-CNN)."),
            click.option("--weight-decay", type=click.FloatRange(0), default=None),
            click.option("--warmup-steps", type=click.IntRange(0), default=50, show_default=True),
            click.option("--steps-per-epoch", type=click.IntRange(1), default=None,
                         help="Optimiser steps per epoch (default: one pass over the training slices)."),
            click.option("--size", type=click.IntRange(16), default=default_size, show_default=True,
                         help="Network input size (the study used 512)."),
            click.option("--resize", type=click.Choice(["letterbox", "resize", "pad"]), default="letterbox",
                         show_default=True, help="How a slice's field of view becomes --size pixels."),
            click.option("--window", type=(float, float), default=(50.0, 400.0), show_default=True,
                         metavar="CENTER WIDTH", help="HU window for HU inputs."),
            click.option("--val-fraction", type=float, default=0.2, show_default=True,
                         help="Share of cases for validation (split by case)."),
            click.option("--val-data", "val_path", type=existing_path, default=None,
                         help="Validate on these cases instead of a share of --data (e.g. other patients "
                              "than the ones --data's cases were made from)."),
            click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N."),
            click.option("--amp", type=click.Choice(["auto", "off", "bf16", "fp16"]), default="auto",
                         show_default=True, help="Mixed precision; auto = bf16 (or fp16) on CUDA, off on CPU."),
            click.option("--channels-last/--no-channels-last", default=None,
                         help="Default: on for CUDA convolutional nets."),
            click.option("--patience", type=click.IntRange(1), default=None,
                         help="Stop after this many epochs without validation improvement."),
            click.option("--min-delta", type=click.FloatRange(0), default=0.0, show_default=True),
            click.option("--max-minutes", type=float, default=None,
                         help="Stop after the epoch that passes this time budget."),
            click.option("--resume", is_flag=True, help="Continue the run in --out from its last.pt."),
            click.option("--init", "init", type=existing_path, default=None,
                         help="Start from this checkpoint's weights (same network; fine-tuning). A new run: the "
                              "optimiser, schedule and epochs start afresh."),
            overwrite_option(help="Start a new run in --out even if it holds one (its files are replaced), "
                                  "or replace files liverrt did not write."),
            click.option("--ema", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=None,
                         metavar="DECAY",
                         help="Keep a moving average of the weights (decay per optimiser step, e.g. 0.99: about "
                              "the last 100 steps); validation, best.pt and last.pt use it."),
            click.option("--no-augment", is_flag=True, help="Disable augmentations."),
            click.option("--flip-p", type=click.FloatRange(0, 1), default=0.0, show_default=True,
                         help="Left-right flip probability (off: volumes are reoriented so the liver is on "
                              "the image left)."),
            layout_option,
            kitti_options,
            seed_option,
        ]
        for option in reversed(options):
            f = option(f)
        return f

    return wrap


def _common(kw: dict, *, model: str, optimizer: str, weight_decay: float, model_options: dict | None = None,
            require_mask: bool = True):
    """Load the data, build the PreprocessSpec and TrainConfig from the shared options."""

    out: Path = kw["out"]
    refuse_output_in_input(out, [kw["data_path"]])
    if kw["init"] is not None and kw["resume"]:
        raise click.UsageError("--init starts a new run from a checkpoint's weights; --resume continues this run")
    if not kw["resume"] and (out / "last.pt").exists() and not overwriting():
        raise InputError(f"{out} already holds a training run (last.pt); pass --resume to continue it, "
                         "--overwrite to start it again, or choose another --out.")
    # before any work (a resumed run too): the run's files are replaced only if this command wrote them
    # (a run copied with new file times, or made before liverrt kept its list: --resume --overwrite)
    check_outputs(out / name for name in RUN_FILES)
    options = ReadOptions(label=kw["label"], unannotated=kw["unannotated"])
    loaded = load_cases(kw["data_path"], require_mask=require_mask, layout=kw["layout"], options=options)
    kw["val_volumes"] = None
    if kw["val_path"] is not None:
        refuse_output_in_input(out, [kw["val_path"]])
        kw["val_volumes"] = load_cases(kw["val_path"], require_mask=require_mask, layout=kw["layout"],
                                       options=options).volumes
    if _is_main():
        for source, reason in loaded.skipped:
            console.print(f"[yellow]skipped[/] {source}: {reason}")
    domain = "8bit" if all(v.intensity == "8bit" for v in loaded.volumes) else "hu"
    spec = PreprocessSpec(window_center=kw["window"][0], window_width=kw["window"][1], size=kw["size"],
                          resize=kw["resize"], input_domain=domain)
    cfg = TrainConfig(
        model=model, epochs=kw["epochs"], batch_size=kw["batch_size"], lr=kw["lr"],
        optimizer=kw["optimizer"] or optimizer,
        weight_decay=weight_decay if kw["weight_decay"] is None else kw["weight_decay"],
        warmup_steps=kw["warmup_steps"], grad_accum=kw["grad_accum"], amp=kw["amp"],
        channels_last=kw["channels_last"], patience=kw["patience"], min_delta=kw["min_delta"],
        val_fraction=kw["val_fraction"], seed=kw["seed"], device=kw["device"], max_minutes=kw["max_minutes"],
        steps_per_epoch=kw["steps_per_epoch"],
        augment=AugmentConfig(enabled=not kw["no_augment"], flip_p=kw["flip_p"]),
        model_options=model_options or {}, init=str(kw["init"]) if kw["init"] else None, ema=kw["ema"],
    )
    return loaded.volumes, spec, cfg


def _is_main() -> bool:
    return os.environ.get("RANK", "0") == "0"


def _run(task_factory, volumes, spec, cfg, kw: dict, label: str) -> None:
    split = stored_split(kw["out"]) if kw["resume"] else None
    if split:  # resuming: the stored split names cases of --data and --val-data
        train_vols, val_vols, split = split_volumes([*volumes, *(kw["val_volumes"] or [])], None, cfg, split)
    else:
        train_vols, val_vols, split = split_volumes(volumes, kw["val_volumes"], cfg)
    if not train_vols or not val_vols:
        raise InputError(f"{len(volumes)} case(s) give {len(train_vols)} training and {len(val_vols)} validation "
                         "case(s); expected at least one of each (add cases or change --val-fraction).")
    task = task_factory(train_vols, val_vols, spec, split, cfg)
    if _is_main():
        # fit stops after the epoch that passes --max-minutes: the ETA says which one that will be
        budget = TimeBudget(60.0 * cfg.max_minutes, cfg.epochs) if cfg.max_minutes is not None else None
        with progress_bar(f"training {label}", budget=budget) as update:
            def on_progress(stage: str, done: int, total: int, info: dict) -> None:
                if stage == "train":  # the loop logs each epoch's validation scores itself
                    update(done, total, f"epoch {info['epoch']}/{cfg.epochs} loss {info['loss']:.3f}")

            result = fit(task, kw["out"], cfg, resume=kw["resume"], progress=on_progress)
    else:
        result = fit(task, kw["out"], cfg, resume=kw["resume"])
    if not _is_main():
        return
    best = result.best_metrics
    note = " (stopped early)" if result.stopped_early else ""
    console.print(f"best checkpoint: {result.best_checkpoint} ({task.monitor} {best.get(task.monitor, float('nan')):.4f}, "
                  f"epoch {best.get('epoch')}); {len(result.history)} epochs{note} on {result.world_size} "
                  f"process(es) in {result.seconds:.0f}s")

    click.echo(json.dumps({"best": str(result.best_checkpoint), "metrics": json_safe(best), "split": result.split,
                           "world_size": result.world_size, "stopped_early": result.stopped_early}))


@train.command()
@training_options()
@click.option("--width-scale", type=click.FloatRange(0.05), default=None,
              help="Scale every layer's channels (1.0 = the study's 16-32-64-128-256).")
@click.option("--pixel-mm", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Resample every slice to this many mm per pixel instead (from its own spacing), then "
                   "centre-pad or crop to --size: anatomy keeps its size across scanners. Replaces --resize.")
@click.option("--context", type=click.IntRange(0, MAX_CONTEXT), default=0, show_default=True,
              help="2.5-D: give the network this many adjacent slices on each side as extra input channels "
                   "(a deviation from the study's one-channel U-Net; 0 = the study's).")
def unet(width_scale: float | None, pixel_mm: float | None, context: int, **kw) -> None:
    """Train the study's U-Net (Dice + BCE, Adam, augmentations, case-level split)."""

    volumes, spec, cfg = _common(kw, model="unet_paper", optimizer="adam", weight_decay=0.0)
    spec = replace(spec, context=context, **({"resize": "spacing", "pixel_mm": pixel_mm} if pixel_mm else {}))
    if width_scale is not None:
        cfg = replace(cfg, width_scale=width_scale)
    _run(UNetTask, volumes, spec, cfg, kw, "U-Net")


@train.command()
@training_options(default_batch=2, default_lr=2e-4, default_epochs=24)
@click.option("--depth", type=click.Choice(["18", "34", "50", "101"]), default="101", show_default=True,
              help="ResNet depth (the study used 101).")
@click.option("--norm", type=click.Choice(["gn", "bn", "frozen_bn"]), default=None,
              help="Backbone normalisation; default gn from scratch, frozen_bn with --backbone-weights.")
@click.option("--backbone-weights", type=existing_path, default=None,
              help="A local torchvision ImageNet ResNet state dict (.pth), loaded with weights_only=True.")
@click.option("--min-instance-area", type=click.IntRange(1), default=32, show_default=True,
              help="Liver regions smaller than this many pixels (network grid) are not instances.")
@click.option("--score-threshold", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.5,
              show_default=True, help="Instances scoring below this are left out of the liver mask.")
def maskrcnn(depth: str, norm: str | None, backbone_weights: Path | None, min_instance_area: int,
             score_threshold: float, **kw) -> None:
    """Train the study's Mask R-CNN (ResNet-FPN, one instance per liver region)."""

    if norm is None:
        norm = "frozen_bn" if backbone_weights else "gn"
    options = {"depth": int(depth), "norm": norm, "score_threshold": score_threshold}
    volumes, spec, cfg = _common(kw, model="maskrcnn_r101_fpn", optimizer="adamw", weight_decay=1e-4,
                                 model_options=options)

    class Task(MaskRCNNTask):
        def build_model(self, config):
            model = super().build_model(config)
            if backbone_weights is not None and not kw["resume"]:
                load_backbone_weights(model, backbone_weights)
            return model

    def factory(train_vols, val_vols, spec_, split, cfg_):
        return Task(train_vols, val_vols, spec_, split, cfg_, min_instance_area=min_instance_area)

    _run(factory, volumes, spec, cfg, kw, "Mask R-CNN")


@train.command("dncnn-sr")
@training_options(default_batch=8, default_lr=1e-3, default_epochs=20)
@click.option("--scale", type=click.Choice(["1", "2"]), default="1", show_default=True,
              help="1: denoise; 2: denoise and super-resolve 2x.")
@click.option("--channels", type=click.IntRange(1), default=64, show_default=True)
@click.option("--noise", type=click.Choice(["projection", "image", "none"]), default="projection",
              show_default=True, help="Simulated low-dose noise: in the projections (Poisson) or image domain.")
@click.option("--photons", type=click.FloatRange(0, min_open=True), default=1e5, show_default=True,
              help="Projection noise: incident photons per detector bin and view (lower = noisier).")
@click.option("--n-angles", type=click.IntRange(2), default=360, show_default=True)
@click.option("--pixel-mm", type=click.FloatRange(0, min_open=True), default=None,
              help="Projection noise: pixel size of the network grid in mm (default: from the cases' spacing).")
@click.option("--image-sigma", type=click.FloatRange(0), default=30.0, show_default=True,
              help="Image noise: standard deviation in HU.")
@click.option("--blur-sigma", type=click.FloatRange(0), default=1.0, show_default=True,
              help="Scale 2: Gaussian blur (high-resolution pixels) before 2x downsampling.")
@click.option("--ssim-weight", type=click.FloatRange(0), default=1.0, show_default=True,
              help="Loss = MSE + weight * (1 - SSIM).")
def dncnn_sr(scale: str, channels: int, noise: str, photons: float, n_angles: int, pixel_mm: float | None,
             image_sigma: float, blur_sigma: float, ssim_weight: float, **kw) -> None:
    """Train DnCNN-SR on pairs degraded on the fly from clean slices (labels not needed)."""

    volumes, spec, cfg = _common(kw, model="dncnn_sr", optimizer="adam", weight_decay=0.0,
                                 model_options={"scale": int(scale), "channels": channels}, require_mask=False)
    if pixel_mm is None:
        pixel_mm = grid_pixel_mm(volumes, spec)
        if _is_main():
            console.print(f"projection noise on a {pixel_mm:.3f} mm grid (median of the cases' spacing)")
    degrade_cfg = DegradeConfig(noise=noise, photons=photons, n_angles=n_angles, pixel_mm=pixel_mm,
                                image_sigma=image_sigma, scale=int(scale), blur_sigma=blur_sigma,
                                window_center=spec.window_center, window_width=spec.window_width)

    def factory(train_vols, val_vols, spec_, split, cfg_):
        return DnCNNTask(train_vols, val_vols, spec_, split, cfg_, degrade_config=degrade_cfg,
                         ssim_weight=ssim_weight)

    _run(factory, volumes, spec, cfg, kw, "DnCNN-SR")
