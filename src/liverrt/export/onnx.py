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

import onnx
import torch

import liverrt
from liverrt.artifact import ONNX_FORMAT, sha256_file
from liverrt.data.io import atomic_path
from liverrt.data.volume import Volume
from liverrt.errors import ExportError, InputError
from liverrt.export.verify import ParityReport, parity_check, sample_inputs
from liverrt.training.checkpoint import load_model

log = logging.getLogger(__name__)

MIN_OPSET = 17
DEFAULT_OPSET = 18
INPUT_NAME = "image"
EXPORTERS = ("dynamo", "torchscript")


class _Probabilities(torch.nn.Module):
    """The graph we export: (N, 1, S, S) float32 in [0, 1] -> sigmoid probabilities."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.model(image))


@dataclass(frozen=True)
class OnnxExport:
    path: Path
    opset: int
    exporter: str
    seconds: float
    size_bytes: int
    parity: ParityReport


def _export_graph(wrapper: torch.nn.Module, example: torch.Tensor, path: Path, opset: int, exporter: str) -> None:
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            batch = torch.export.Dim("batch", min=1, max=4096)
            torch.onnx.export(
                wrapper, (example,), str(path), input_names=[INPUT_NAME], output_names=["prob"],
                opset_version=opset, dynamo=True, dynamic_shapes={"image": {0: batch}}, external_data=False,
            )
        else:
            torch.onnx.export(
                wrapper, (example,), str(path), input_names=[INPUT_NAME], output_names=["prob"],
                opset_version=opset, dynamo=False,
                dynamic_axes={INPUT_NAME: {0: "batch"}, "prob": {0: "batch"}},
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
) -> OnnxExport:
    """Export a checkpoint to ONNX (dynamic batch axis) and verify it.

    The graph takes ``image`` (N, 1, S, S) float32 and returns ``prob`` (N, 1, S, S)
    float32. PreprocessSpec, model info and validation metrics are stored in
    ``metadata_props``. Before the file is kept, PyTorch and onnxruntime run
    the same preprocessed slices (from ``verify_volumes`` or, without them,
    phantom slices); the export fails with :class:`ExportError`, and nothing is
    written, if probabilities differ by more than ``atol`` or the thresholded
    masks' Dice differs by more than ``max_dice_delta``.
    """
    if opset < MIN_OPSET:
        raise InputError(f"opset {opset} is too old; expected >= {MIN_OPSET}.")
    if exporter not in EXPORTERS:
        raise InputError(f"exporter {exporter!r}: expected one of {EXPORTERS}.")
    out = Path(out)
    if out.suffix.lower() != ".onnx":
        raise InputError(f"Output {out} should end in .onnx.")
    model, spec, ckpt = load_model(checkpoint)
    if not getattr(model, "onnx_exportable", False) or tuple(getattr(model, "output_names", ("prob",))) != ("prob",):
        raise InputError(f"Model kind {ckpt['kind']!r} cannot be exported to ONNX by this version of liverrt "
                         "(only segmentation models with a 'prob' output, e.g. the U-Net).")
    wrapper = _Probabilities(model).eval()
    inputs = sample_inputs(spec, verify_volumes, samples=samples)
    t0 = time.perf_counter()
    with atomic_path(out, suffix=".onnx", protect=(Path(checkpoint),)) as tmp:
        _export_graph(wrapper, torch.from_numpy(inputs[:2]), tmp, opset, exporter)
        graph = onnx.load(str(tmp))
        meta = {
            "liverrt.format": ONNX_FORMAT,
            "liverrt.version": liverrt.__version__,
            "liverrt.model": json.dumps(
                {"kind": ckpt["kind"], "name": ckpt["model_name"], "config": ckpt["model_config"],
                 "input_divisor": getattr(model, "input_divisor", 1)}, sort_keys=True),
            "liverrt.preprocess": spec.to_json(),
            "liverrt.threshold": str(float(ckpt.get("train_config", {}).get("threshold", 0.5))),
            "liverrt.precision": "fp32",
            "liverrt.outputs": json.dumps({"prob": "sigmoid liver probability, (N, 1, S, S) float32"}),
            "liverrt.metrics": json.dumps(ckpt.get("metrics", {}), sort_keys=True),
            "liverrt.checkpoint_sha256": sha256_file(Path(checkpoint)),
        }
        onnx.helper.set_model_props(graph, meta)
        graph.producer_name = "liverrt"
        graph.producer_version = liverrt.__version__
        try:
            onnx.checker.check_model(graph, full_check=True)
        except onnx.checker.ValidationError as exc:
            raise ExportError(f"onnx.checker rejected the exported graph: {str(exc)[:300]}") from exc
        onnx.save(graph, str(tmp))
        seconds = time.perf_counter() - t0
        report = parity_check(model, tmp, inputs, threshold=float(meta["liverrt.threshold"]), atol=atol,
                              max_dice_delta=max_dice_delta)
        if not report.passed:
            raise ExportError(
                f"ONNX parity check failed: {report.summary()}; expected max |Δprob| <= {atol} and "
                f"max |ΔDice| <= {max_dice_delta}. Nothing was written to {out}."
            )
    log.info("exported %s in %.1fs (%s)", out, seconds, report.summary())
    return OnnxExport(out, opset, exporter, seconds, out.stat().st_size, report)
