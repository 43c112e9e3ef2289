"""``liverrt export``."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path

import click

from liverrt.artifacts import artifact_info
from liverrt.artifacts.metadata import PRECISIONS
from liverrt.cli.common import (
    any_path,
    console,
    existing_path,
    given,
    layout_option,
    overwrite_option,
    progress_bar,
)
from liverrt.data.sources import load_cases
from liverrt.export.gate import LIMITS
from liverrt.export.pipeline import FORMATS, ExportOptions, default_calib_method, run_export
from liverrt.export.qat import STARTS, QatOptions
from liverrt.export.triton import TritonOptions
from liverrt.runtime.tensorrt_loader import DEFAULT_BATCH, DEFAULT_WORKSPACE_MB


@click.command()
@click.argument("checkpoint", type=existing_path)
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="onnx", show_default=True,
              help="onnx: a .onnx file; tensorrt: a plan + sidecar in a folder (needs liverrt[trt] and a GPU); "
                   "triton: a model repository.")
@click.option("-o", "--out", type=any_path, required=True, help="The .onnx file, or the folder for tensorrt/triton.")
@click.option("--precision", type=click.Choice(PRECISIONS), default="fp32", show_default=True,
              help="Precision in the graph: fp16 tensors, or INT8 Q/DQ from static calibration.")
@click.option("--calib", "calib", type=existing_path, default=None,
              help="Cases to calibrate INT8 on (a case-level calibration split, not your test cases).")
@click.option("--calib-slices", type=click.IntRange(1), default=64, show_default=True)
@click.option("--int8-target", type=click.Choice(["onnxruntime", "tensorrt"]), default=None,
              help="INT8 graph for onnxruntime (Relu outputs with zero point -128: twice the levels, Relus fused "
                   "away) or for TensorRT (zero points 0 only). Default: tensorrt for --format tensorrt, else "
                   "onnxruntime.")
@click.option("--calib-method", type=click.Choice(["search", "percentile", "minmax"]), default=None,
              help="INT8 activation ranges: search = each tensor's clip chosen by the error it causes at the "
                   "output, with up to 4 activation scales left float if needed (minutes; the default for U-Net and "
                   "DnCNN-SR); percentile = every tensor at its 99.99th percentile (one pass); minmax = largest "
                   "value (one pass; the default for Mask R-CNN; broke both trained U-Nets).")
@click.option("--qat", is_flag=True,
              help="INT8 by quantization-aware fine-tuning on the --calib cases (the same Q/DQ graph, its weights "
                   "and activation ranges trained to reproduce the fp32 network under int8 rounding; minutes), "
                   "then the gate.")
@click.option("--qat-epochs", type=click.IntRange(1), default=QatOptions.epochs, show_default=True,
              help="--qat: fine-tuning epochs.")
@click.option("--qat-steps", type=click.IntRange(1), default=None,
              help="--qat: optimiser steps per epoch (default: one pass over the --calib cases' slices).")
@click.option("--qat-lr", type=click.FloatRange(0, min_open=True), default=QatOptions.lr, show_default=True,
              help="--qat: Adam learning rate of the weights (cosine decay).")
@click.option("--qat-distill", type=click.FloatRange(0), default=QatOptions.distill, show_default=True,
              help="--qat: weight of the loss that keeps the int8 output near the fp32 network's (what the gate "
                   "compares).")
@click.option("--qat-masks", type=click.FloatRange(0), default=QatOptions.masks, show_default=True,
              help="--qat: weight of the network's own loss on the --calib cases' liver masks (needs masks); "
                   "0: distillation alone.")
@click.option("--qat-start", type=click.Choice(list(STARTS)), default=QatOptions.start, show_default=True,
              help="--qat: where the activation ranges start: the range search of post-training INT8 without "
                   "float scales (minutes), or its first step (the best single percentile for all tensors).")
@click.option("--verify", "--verify-data", "verify_data", type=existing_path, default=None,
              help="Cases the verification gate runs on (default: phantoms).")
@click.option("--no-verify", is_flag=True, help="Skip the dataset verification gate (the parity check still runs).")
@click.option("--max-mean-delta-dice", type=click.FloatRange(0), default=None,
              help="Gate limit on the mean per-slice ΔDice (default by precision: 1e-4 / 1e-3 / 5e-3).")
@click.option("--max-worst-delta-dice", type=click.FloatRange(0), default=None,
              help="Gate limit on the worst slice's ΔDice (default by precision: 2e-3 / 1e-2 / 2e-2).")
@click.option("--opset", type=click.IntRange(17), default=18, show_default=True)
@click.option("--exporter", type=click.Choice(["dynamo", "torchscript"]), default="dynamo", show_default=True)
@click.option("--atol", type=float, default=1e-4, show_default=True, help="Max |Δoutput| torch vs onnxruntime.")
@click.option("--batch", default=":".join(map(str, DEFAULT_BATCH)), show_default=True,
              help="TensorRT profile MIN:OPT:MAX batch.")
@click.option("--workspace-mb", type=click.IntRange(64), default=DEFAULT_WORKSPACE_MB, show_default=True)
@click.option("--name", default=None, help="Triton model name (default: the checkpoint's stem).")
@click.option("--max-batch-size", type=click.IntRange(1), default=None, help="Triton max_batch_size.")
@click.option("--instances", type=click.IntRange(1), default=1, show_default=True, help="Triton instance count.")
@click.option("--kind", type=click.Choice(["KIND_GPU", "KIND_CPU", "KIND_AUTO"]), default="KIND_GPU",
              show_default=True, help="Triton instance kind.")
@click.option("--maskrcnn-graph", type=click.Choice(["split", "single"]), default="split", show_default=True,
              help="Mask R-CNN: three plain graphs + the liverrt runtime (any engine), or torchvision's whole "
                   "model as one graph (onnxruntime only, batch 1 per call).")
@click.option("--fp32-heads", is_flag=True,
              help="Mask R-CNN, --precision int8: keep the RoI heads (box and mask graphs) in fp32; by default they "
                   "are INT8 too, calibrated on the RoIs the split pipeline makes from the --calib slices.")
@overwrite_option(expose=True, help="Replace existing artifacts (and a Triton model version), even where liverrt "
                                    "did not write them (never the checkpoint).")
@layout_option
@click.pass_context
def export(ctx: click.Context, checkpoint: Path, fmt: str, out: Path, precision: str, calib: Path | None,
           calib_slices: int, calib_method: str | None, int8_target: str | None,
           verify_data: Path | None, no_verify: bool, max_mean_delta_dice: float | None,
           max_worst_delta_dice: float | None, opset: int, exporter: str, atol: float, batch: str,
           workspace_mb: int, name: str | None, max_batch_size: int | None, instances: int, kind: str,
           maskrcnn_graph: str, fp32_heads: bool, qat: bool, qat_epochs: int, qat_steps: int | None, qat_lr: float, qat_distill: float,
           qat_masks: float, qat_start: str, overwrite: bool,
           layout: str | None) -> None:
    """Export a checkpoint to ONNX, TensorRT or Triton, kept only if it passes the check against PyTorch.

    The verification gate segments whole cases with both and compares the masks (ΔDice, ΔIoU, ΔBoundary IoU,
    worst slices); it writes verify.json and verify.md next to the artifact.
    """

    for options, needs in ((("batch", "workspace_mb"), "tensorrt"),
                           (("name", "max_batch_size", "instances", "kind"), "triton")):
        used = [o for o in options if given(ctx, o)]
        if used and fmt != needs:
            raise click.UsageError(f"--{used[0].replace('_', '-')} is for --format {needs}")
    if no_verify and (verify_data or given(ctx, "max_mean_delta_dice") or given(ctx, "max_worst_delta_dice")):
        raise click.UsageError("--no-verify skips the gate; --verify and the gate limits would be ignored")

    qat_options = [o for o in ("qat_epochs", "qat_steps", "qat_lr", "qat_distill", "qat_masks", "qat_start")
                   if given(ctx, o)]
    if not qat and qat_options:
        raise click.UsageError(f"--{qat_options[0].replace('_', '-')} is for --qat")
    if qat and precision != "int8":  # before the cases load (ExportOptions says the same)
        raise click.UsageError(f"--qat fine-tunes for INT8: expected --precision int8, got {precision}")
    verify_volumes = load_cases(verify_data, layout=layout).volumes if verify_data else None
    calib_volumes = load_cases(calib, layout=layout).volumes if calib else None
    if precision != "int8" and any(given(ctx, o) for o in ("calib", "calib_method", "calib_slices", "int8_target",
                                                           "fp32_heads")):
        raise click.UsageError("--calib, --calib-method, --calib-slices, --int8-target and --fp32-heads are for "
                               "--precision int8")
    limits = {k: v for k, v in (("mean_delta_dice", max_mean_delta_dice), ("worst_delta_dice", max_worst_delta_dice))
              if v is not None}
    options = ExportOptions(
        fmt=fmt, precision=precision, opset=opset, exporter=exporter, atol=atol, verify=not no_verify,
        limits=replace(LIMITS[precision], **limits) if limits else None, calib_slices=calib_slices,
        calib_method=calib_method, int8_target=int8_target, maskrcnn_graph=maskrcnn_graph,
        int8_heads=not fp32_heads, batch=batch,
        workspace_mb=workspace_mb,
        triton=TritonOptions(name=name, max_batch_size=max_batch_size, instances=instances, kind=kind),
        qat=QatOptions(epochs=qat_epochs, steps_per_epoch=qat_steps, lr=qat_lr, distill=qat_distill,
                       masks=qat_masks, start=qat_start) if qat else None)
    searching = precision == "int8" and not qat and (
        calib_method or default_calib_method(artifact_info(checkpoint).kind)) == "search"
    bar = "QAT fine-tuning" if qat else "INT8 range search" if searching else None
    with progress_bar(bar) if bar else nullcontext() as progress:
        result = run_export(checkpoint, out, options, verify_volumes=verify_volumes, calib_volumes=calib_volumes,
                            progress=progress, overwrite=overwrite)
    click.echo(result.table())
    console.print(f"{fmt} export done: {result.rows[-1].path}")
