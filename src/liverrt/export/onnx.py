"""Checkpoint -> ONNX with liverrt metadata, verified against PyTorch before it is kept."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

import liverrt
from liverrt.artifacts import ONNX_FORMAT
from liverrt.artifacts.info import PART_KEY, SPLIT_KEY
from liverrt.artifacts.split import HEADS, SplitArtifact
from liverrt.atomic import atomic_path
from liverrt.data.volume import Volume
from liverrt.errors import ExportError, InputError
from liverrt.evaluation import json_safe
from liverrt.export.maskrcnn_split import export_parts
from liverrt.export.parity import ParityReport, compare_outputs, parity_check, sample_inputs
from liverrt.hashing import sha256_file
from liverrt.models import kinds, load_model, model_class
from liverrt.runtime.maskrcnn_split import SplitMaskRCNN
from liverrt.runtime.onnxruntime_loader import SingleGraphMaskRCNN, ort_split_runner

log = logging.getLogger(__name__)

MIN_OPSET = 17
DEFAULT_OPSET = 18
INPUT_NAME = "image"
EXPORTERS = ("dynamo", "torchscript")


@dataclass(frozen=True)
class OnnxExport:
    path: Path
    opset: int
    exporter: str
    seconds: float
    size_bytes: int
    parity: ParityReport


def _export_graph(wrapper: torch.nn.Module, example: torch.Tensor, path: Path, opset: int, exporter: str, *,
                  output: str = "prob", spatial: bool = False, divisor: int = 1) -> None:
    """Export ``wrapper`` with a dynamic batch axis (and dynamic H/W, multiples of ``divisor``, if ``spatial``)."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            dims = {0: torch.export.Dim("batch", min=1, max=4096)}
            if spatial:
                dims[2] = divisor * torch.export.Dim("h_blocks", min=1, max=8192 // divisor)
                dims[3] = divisor * torch.export.Dim("w_blocks", min=1, max=8192 // divisor)
            torch.onnx.export(
                wrapper, (example,), str(path), input_names=[INPUT_NAME], output_names=[output],
                opset_version=opset, dynamo=True, dynamic_shapes={"image": dims}, external_data=False,
            )
        else:
            axes = {0: "batch", 2: "height", 3: "width"} if spatial else {0: "batch"}
            out_axes = {0: "batch", 2: "out_height", 3: "out_width"} if spatial else {0: "batch"}
            torch.onnx.export(
                wrapper, (example,), str(path), input_names=[INPUT_NAME], output_names=[output],
                opset_version=opset, dynamo=False, dynamic_axes={INPUT_NAME: axes, output: out_axes},
            )


def export_onnx(
    checkpoint: Path,
    out: Path,
    *,
    opset: int = DEFAULT_OPSET,
    exporter: str = "dynamo",
    verify_volumes: list[Volume] | None = None,
    atol: float = 1e-4,
    max_dice_delta: float = 1e-3,
    samples: int = 8,
    maskrcnn_graph: str = "split",
) -> OnnxExport:
    """Export a checkpoint to ONNX (dynamic batch axis) and check it against PyTorch.

    The model's class says what is exported (:class:`liverrt.models.LiverrtModel`):
    * one graph, ``image`` (N, 1, S, S) float32 -> its one output, traced from
      ``model.onnx_wrapper()``: the U-Net's ``prob`` (N, 1, S, S), DnCNN-SR's
      ``restored`` (N, 1, scale*S, scale*S) in [0, 1] (``dynamic_spatial``: any
      H and W);
    * ``split_export`` (the Mask R-CNN): the split export (:mod:`liverrt.export.maskrcnn_split`):
      ``out`` holds the backbone/FPN/RPN graph and names its two siblings
      ``<stem>.box.onnx`` and ``<stem>.mask.onnx`` (``liverrt.split``
      metadata, with their sha256); the runtime runs proposals, NMS and mask
      pasting between them. The exporter is always the TorchScript-based one.
      ``maskrcnn_graph="single"`` exports the whole torchvision model as one
      graph instead (``onnx_wrapper()``: batch 1, NMS inside; onnxruntime only, run image by image).

    PreprocessSpec, model info and validation metrics go into ``metadata_props``.
    Before anything is kept, PyTorch and onnxruntime run the same preprocessed
    slices (from ``verify_volumes`` or, without them, phantom slices); the
    export fails with :class:`ExportError`, and nothing is written, if outputs
    differ by more than ``atol`` or, for a model gated by masks, thresholded
    masks' Dice by more than ``max_dice_delta`` (Mask R-CNN: the union mask
    only, its boxes pass through NMS, where float noise may reorder near-equal
    scores).
    """
    if opset < MIN_OPSET:
        raise InputError(f"opset {opset} is too old; expected >= {MIN_OPSET}.")
    if exporter not in EXPORTERS:
        raise InputError(f"exporter {exporter!r}: expected one of {EXPORTERS}.")
    out = Path(out)
    if out.suffix.lower() != ".onnx":
        raise InputError(f"Output {out} should end in .onnx.")
    model, spec, ckpt = load_model(checkpoint)
    kind = ckpt["kind"]
    described = model_class(kind)
    if not described.onnx_exportable:
        exportable = [k for k in kinds() if model_class(k).onnx_exportable]
        raise InputError(f"Model kind {kind!r} cannot be exported to ONNX; expected one of {exportable}.")
    inputs = sample_inputs(spec, verify_volumes, samples=samples)
    meta = _metadata(ckpt, spec, model, Path(checkpoint))
    t0 = time.perf_counter()
    if described.split_export:
        if maskrcnn_graph not in ("split", "single"):
            raise InputError(f"maskrcnn_graph {maskrcnn_graph!r}: expected 'split' or 'single'.")
        if maskrcnn_graph == "single":
            return _export_maskrcnn_single(model, Path(checkpoint), out, meta, inputs, opset, max_dice_delta, t0)
        return _export_maskrcnn(model, Path(checkpoint), out, meta, inputs, opset, atol, max_dice_delta, t0)
    wrapper = model.onnx_wrapper().eval()
    (output,) = described.graph_output_names
    with atomic_path(out, suffix=".onnx", protect=(Path(checkpoint),)) as tmp:
        _export_graph(wrapper, torch.from_numpy(inputs[:2]), tmp, opset, exporter, output=output,
                      spatial=described.dynamic_spatial, divisor=getattr(model, "input_divisor", 1))
        _finish(tmp, meta)
        seconds = time.perf_counter() - t0
        if described.gate == "masks":
            report = parity_check(model, tmp, inputs, threshold=float(meta["liverrt.threshold"]), atol=atol,
                                  max_dice_delta=max_dice_delta)
        else:  # an image out: outputs within atol, no masks to compare
            report = _image_parity(wrapper, tmp, inputs, atol=atol, output=output)
        if not report.passed:
            raise ExportError(
                f"ONNX parity check failed: {report.summary()}; expected max |Δ{output}| <= {atol} and "
                f"max |ΔDice| <= {max_dice_delta}. Nothing was written to {out}."
            )
    log.info("exported %s in %.1fs (%s)", out, seconds, report.summary())
    return OnnxExport(out, opset, exporter, seconds, out.stat().st_size, report)


def _metadata(ckpt: dict, spec, model, checkpoint: Path) -> dict[str, str]:
    kind = ckpt["kind"]
    threshold = ckpt["model_config"].get("mask_threshold", ckpt.get("train_config", {}).get("threshold", 0.5))
    return {
        "liverrt.format": ONNX_FORMAT,
        "liverrt.version": liverrt.__version__,
        "liverrt.model": json.dumps(
            {"kind": kind, "name": ckpt["model_name"], "config": ckpt["model_config"],
             "input_divisor": getattr(model, "input_divisor", 1)}, sort_keys=True),
        "liverrt.preprocess": spec.to_json(),
        "liverrt.threshold": str(float(threshold)),
        "liverrt.precision": "fp32",
        "liverrt.outputs": json.dumps(dict(model.output_descriptions)),
        "liverrt.metrics": json.dumps(json_safe(ckpt.get("metrics", {})), sort_keys=True),
        "liverrt.checkpoint_sha256": sha256_file(checkpoint),
    }


def _finish(path: Path, meta: dict[str, str]) -> None:
    """Attach metadata, run the full checker and save."""
    graph = onnx.load(str(path))
    onnx.helper.set_model_props(graph, meta)
    graph.producer_name = "liverrt"
    graph.producer_version = liverrt.__version__
    try:
        onnx.checker.check_model(graph, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"onnx.checker rejected the exported graph: {str(exc)[:300]}") from exc
    onnx.save(graph, str(path))


def _image_parity(wrapper: torch.nn.Module, path: Path, inputs, *, atol: float, output: str) -> ParityReport:
    with torch.no_grad():
        ref = wrapper(torch.from_numpy(inputs)).numpy()
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (cand,) = sess.run([output], {sess.get_inputs()[0].name: inputs})
    diff = np.abs(ref.astype(np.float64) - cand)
    finite = bool(np.isfinite(cand).all())
    max_abs = float(diff.max()) if finite else float("inf")
    return ParityReport(n_slices=int(inputs.shape[0]), max_abs_diff=max_abs, mean_abs_diff=float(diff.mean()),
                        max_dice_delta=0.0, mismatched_pixels=0, decisive_mismatches=0, atol=atol,
                        max_dice_delta_allowed=0.0, passed=finite and max_abs <= atol)


def _export_maskrcnn(model, checkpoint: Path, out: Path, meta: dict, inputs, opset: int, atol: float,
                     max_dice_delta: float, t0: float) -> OnnxExport:


    artifact = SplitArtifact(out)
    paths = artifact.paths
    with contextlib.ExitStack() as stack:
        tmps = {part: stack.enter_context(atomic_path(p, suffix=".onnx", protect=(checkpoint,)))
                for part, p in paths.items()}
        export_parts(model, {k: str(v) for k, v in tmps.items()}, opset)
        for part in HEADS:
            _finish(tmps[part], {**meta, PART_KEY: part})
        _finish(tmps["rpn"], {**meta, PART_KEY: "rpn", SPLIT_KEY: artifact.manifest(tmps)})
        seconds = time.perf_counter() - t0
        report = _maskrcnn_parity(model, tmps, inputs, atol=atol, max_dice_delta=max_dice_delta,
                                  threshold=float(meta["liverrt.threshold"]))
        if not report.passed:
            raise ExportError(f"ONNX parity check failed: {report.summary()}; expected max |Δprob| <= {atol} "
                              f"and max |ΔDice| <= {max_dice_delta}. Nothing was written to {out}.")
    size = sum(p.stat().st_size for p in paths.values())
    log.info("exported %s (+ box and mask graphs) in %.1fs (%s)", out, seconds, report.summary())
    return OnnxExport(out, opset, "torchscript", seconds, size, report)


def _maskrcnn_parity(model, paths: dict[str, Path], inputs, *, atol: float, max_dice_delta: float,
                     threshold: float) -> ParityReport:
    with torch.no_grad():
        ref = model.predict(torch.from_numpy(inputs))["prob"].numpy()
    run = ort_split_runner(paths, ["CPUExecutionProvider"])
    cand = SplitMaskRCNN(model.config, run, empty_levels=True).predict(inputs)["prob"]
    # instance masks are pasted from 28x28 logits: compare the masks, with probability noise bounded by atol
    # only where both sides kept the same instances (a reordered near-tie changes whole instances)
    return compare_outputs(ref, cand, threshold=threshold, atol=float("inf"), max_dice_delta=max_dice_delta)


def _export_maskrcnn_single(model, checkpoint: Path, out: Path, meta: dict, inputs, opset: int,
                            max_dice_delta: float, t0: float) -> OnnxExport:
    wrapper = model.eval().onnx_wrapper().eval()
    outputs = list(model.graph_output_names)
    with atomic_path(out, suffix=".onnx", protect=(checkpoint,)) as tmp:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(wrapper, (torch.from_numpy(inputs[:1]),), str(tmp), input_names=[INPUT_NAME],
                              output_names=outputs, opset_version=opset, dynamo=False,
                              dynamic_axes={n: {0: "detections"} for n in outputs})
        _finish(tmp, {**meta, "liverrt.graph": "single"})
        seconds = time.perf_counter() - t0
        sess = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        with torch.no_grad():
            ref = model.predict(torch.from_numpy(inputs))["prob"].numpy()
        cand = SingleGraphMaskRCNN(sess, model.config).predict(inputs)["prob"]
        report = compare_outputs(ref, cand, threshold=float(meta["liverrt.threshold"]), atol=float("inf"),
                                 max_dice_delta=max_dice_delta)
        if not report.passed:
            raise ExportError(f"ONNX parity check failed: {report.summary()}; expected max |ΔDice| <= "
                              f"{max_dice_delta}. Nothing was written to {out}.")
    log.info("exported %s (single graph) in %.1fs (%s)", out, seconds, report.summary())
    return OnnxExport(out, opset, "torchscript", seconds, out.stat().st_size, report)
