"""``liverrt infer``."""

from __future__ import annotations

from pathlib import Path

import click

from liverrt.cli.common import (
    Eta,
    any_path,
    console,
    existing_path,
    fail_if_skipped,
    given,
    layout_option,
    out_dir,
    overwrite_option,
)
from liverrt.models.bundled import BundledModel, postprocess_options, resolve_model
from liverrt.runtime.infer import run_inference
from liverrt.runtime.tensorrt_loader import DEFAULT_BATCH


@click.command()
@click.option("-m", "--model", default=None,
              help=".pt checkpoint (torch) or .onnx file, or a bundled model's name (`liverrt models`); default: "
                   "the bundled default model.")
@click.option("--engine", type=click.Choice(["torch", "onnxruntime", "tensorrt", "trt"]), default="onnxruntime",
              show_default=True, help="trt/tensorrt: builds (or reuses from the engine cache) a plan for this GPU; "
                                      "needs liverrt[trt] on a CUDA machine.")
@click.option("--providers", default=None, metavar="P1,P2",
              help="onnxruntime providers in order, e.g. TensorrtExecutionProvider,CUDAExecutionProvider "
                   "(needs liverrt[gpu]); default CPU.")
@click.option("--device", default=None, help="torch engine: auto, cpu, cuda or cuda:N.")
@click.option("--trt-cache", type=any_path, default=None,
              help="TensorRT engine cache folder (default $LIVERRT_TRT_CACHE or ~/.cache/liverrt/trt).")
@click.option("--trt-batch", default=":".join(map(str, DEFAULT_BATCH)), show_default=True, help="TensorRT profile MIN:OPT:MAX batch.")
@click.option("--cuda-graph", is_flag=True, help="TensorRT: capture and replay CUDA graphs per batch size.")
@click.option("-i", "--input", "src", type=existing_path, required=True,
              help="NIfTI file, slice folder, case folder or folder of cases.")
@click.option("-o", "--out", type=out_dir, required=True, help="Output folder: <case>/mask.nii.gz, masks/, overlays/.")
@click.option("--batch-size", type=click.IntRange(1), default=8, show_default=True)
@click.option("--format", "formats", type=click.Choice(["nifti", "png", "dicom-seg"]), multiple=True,
              help="Mask formats to write (repeatable; default nifti for HU volumes, png for 8-bit slices; "
                   "dicom-seg for DICOM series inputs, needs liverrt[dicom]).")
@click.option("--overlays", type=click.IntRange(0), default=4, show_default=True, help="Overlay PNGs per case.")
@click.option("--smooth-z", "smooth_z_mm", type=click.FloatRange(min=0), default=None, metavar="MM",
              help="Smooth the probabilities across slices (Gaussian sigma in mm; 0 = off) before the threshold; "
                   "volumes with slice geometry only [default: the bundled model's card, else off].")
@click.option("--threshold", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=None,
              help="Probability threshold [default: the bundled model's card, else the model's own].")
@click.option("--fill-holes/--no-fill-holes", default=None,
              help="Fill holes inside the liver, slice by slice [default: on for bundled models, else off].")
@click.option("--keep-largest/--no-keep-largest", default=None,
              help="Keep only the largest 3D-connected liver component (contiguous volumes only) [default: on for "
                   "bundled models, else off].")
@click.option("--denoise", type=existing_path, default=None,
              help="A DnCNN-SR model (.pt or .onnx, scale 1) that cleans every slice before segmentation.")
@layout_option
@overwrite_option
@click.pass_context
def infer(ctx: click.Context, model: str | None, engine: str, providers: str | None, device: str | None, trt_cache: Path | None,
          trt_batch: str, cuda_graph: bool, src: Path, out: Path, batch_size: int, formats: tuple[str, ...],
          overlays: int, smooth_z_mm: float | None, threshold: float | None, fill_holes: bool | None,
          keep_largest: bool | None, denoise: Path | None, layout: str | None) -> None:
    """Segment the liver in every case of INPUT."""
    model_path, chosen = _model(model, engine)
    post = postprocess_options(chosen, smooth_z_mm=smooth_z_mm, threshold=threshold, fill_holes=fill_holes,
                               keep_largest=keep_largest)

    trt = engine in ("tensorrt", "trt")
    options: dict = {}
    if providers and engine != "onnxruntime":
        raise click.UsageError("--providers is for --engine onnxruntime")
    if device and engine == "onnxruntime":
        raise click.UsageError("--device is for --engine torch or trt; onnxruntime picks its device by --providers")
    used = [o for o in ("trt_cache", "trt_batch", "cuda_graph") if given(ctx, o)]
    if used and not trt:
        raise click.UsageError(f"--{used[0].replace('_', '-')} is for --engine trt")
    if providers:
        options["providers"] = [p.strip() for p in providers.split(",") if p.strip()]
    if device:
        options["device"] = device
    if trt:
        options.update(batch=trt_batch, cuda_graph=cuda_graph, **({"cache_dir": trt_cache} if trt_cache else {}))
    eta = Eta()  # on_case comes before each case: from the second on, the mean time per finished case

    def on_case(case_id: str, i: int, n: int) -> None:
        left = eta.left(i, n)
        console.print(f"[{i + 1}/{n}] {case_id}{f' ({left})' if left else ''}", markup=False, highlight=False)

    report = run_inference(model_path, src, out, engine=engine, engine_options=options, batch_size=batch_size, formats=tuple(formats) or None,
                           overlays=overlays, postprocess=post, layout=layout, denoise=denoise,
                           on_case=on_case)
    for c in report.cases:
        vol = f"{c['liver_ml']:.1f} mL" if c["liver_ml"] is not None else "volume n/a (no geometry)"
        warn = " [yellow](liver touches the first/last slice: incomplete)[/]" if c["touches_first_or_last_slice"] else ""
        console.print(f"  {c['id']}: {c['slices_with_liver']} slices with liver, {vol}{warn}")
    n = len(report.cases)
    if n:  # with none written, the error below says why and nothing points to an output that is not there
        console.print(f"{n} case{'s' if n != 1 else ''} in {report.seconds:.1f}s -> {out}; open "
                      f"{out / 'summary.html'} in a browser")
    fail_if_skipped(report.skipped, n)


def _model(model: str | None, engine: str) -> tuple[Path, BundledModel | None]:
    """The model file and, for a bundled model, which (its card's post-processing is on by default)."""
    path, chosen = resolve_model(model)
    if chosen is not None and engine == "torch":
        raise click.UsageError("the bundled models are ONNX files: use --engine onnxruntime (or trt), or pass a .pt "
                               "with --model")
    if chosen is not None:
        console.print(f"model: {chosen.name} (bundled; `liverrt models {chosen.name}` prints its card)")
    return path, chosen
