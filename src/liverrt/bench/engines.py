"""Engine latency per slice for every engine and precision available here, measured in one run.

The network is what :mod:`liverrt.bench.subject` resolves: the bundled default model unless told
otherwise, a bundled model by name, a checkpoint or ONNX file (U-Net, Mask R-CNN, DnCNN-SR), or a
registered network with seeded random weights. Variants: torch eager (fp32, from the checkpoint when
there is one), onnxruntime fp32 (the model's fp32 ONNX), fp16 and int8 (Q/DQ from phantom
calibration slices), both built from that graph, int8 by quantization-aware fine-tuning on the same
phantoms for networks that support it (full run only), and TensorRT when it is installed with a GPU
(otherwise listed as skipped, with the reason; the split Mask R-CNN has no plan). For each: network
only (``engine.infer``; for Mask R-CNN the three graphs and the NumPy/Numba steps between them) and
end to end at batch 1 and 8, and the verification gate of each variant against the checkpoint on
torch (ΔDice; for DnCNN-SR the PSNR of its output against PyTorch's). End to end is the Segmenter
(preprocess, network, restore to the source grid, threshold) for the segmentation networks, and
preprocess + network for DnCNN-SR, whose output is an image.

A variant is not gated, and its gate column says why, when the verdict could not mean anything:
random weights, no checkpoint to compare against, or quick's int8 ranges (:data:`QUICK_SKIPS`).

Every number is measured here, on the same preprocessed phantom slices (not random tensors), after
warm-up: median and p95 over repeats, per batch and per slice, slices/s, and the onnxruntime/torch
speed ratio, plus the machine and library versions. The results are not assertions; they are
reported.
"""

from __future__ import annotations

import json
import logging
import statistics
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np

from liverrt.artifacts import ArtifactInfo, artifact_info, onnx_metadata
from liverrt.artifacts.metadata import PRECISIONS
from liverrt.bench.subject import RandomWeights, Subject, prepare_subject
from liverrt.bench.timing import time_call
from liverrt.data.phantom import PhantomConfig, synth_case
from liverrt.data.preprocess import PreprocessSpec, to_input
from liverrt.data.volume import Volume
from liverrt.export import precision as prec
from liverrt.export.gate import default_volumes, verify_artifact
from liverrt.export.pipeline import default_calib_method
from liverrt.export.qat import QatOptions, qat_to_int8
from liverrt.export.roi_heads import heads_to_int8
from liverrt.machine import machine_info
from liverrt.models import model_class
from liverrt.runtime import open_engine
from liverrt.runtime.segmenter import Segmenter
from liverrt.runtime.tensorrt_loader import current_machine

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Budget:
    """How much the engines section measures: :data:`FULL`, or :data:`QUICK` (CI's run)."""

    repeats_batch1: int
    repeats_batched: int  # at every batch size above 1
    calib_slices: int
    int8_search: bool  # calibrate int8 as `liverrt export` does even where that is the range search
    qat: bool  # add int8 by quantization-aware fine-tuning where the model class supports it

    def repeats(self, batch: int) -> int:
        return self.repeats_batch1 if batch == 1 else self.repeats_batched


FULL = Budget(repeats_batch1=30, repeats_batched=10, calib_slices=32, int8_search=True, qat=True)
QUICK = Budget(repeats_batch1=10, repeats_batched=3, calib_slices=16, int8_search=False, qat=False)

#: what ``--quick`` leaves out of this section (the report lists it)
QUICK_SKIPS = (
    f"engines: {QUICK.repeats_batch1} repeats at batch 1 and {QUICK.repeats_batched} at batch 8 "
    f"(full: {FULL.repeats_batch1} and {FULL.repeats_batched})",
    f"engines: int8 calibrates on {QUICK.calib_slices} phantom slices (full: {FULL.calib_slices}) and, where the "
    "model's `liverrt export` default is the range search (many minutes on 2 cores), takes one-pass percentile "
    "ranges instead: timed, not gated",
    "engines: no int8 by quantization-aware fine-tuning (minutes: a range search, then training; the full run "
    "fine-tunes on the calibration phantoms)",
)

RANDOM = "not gated: random weights"
NO_CHECKPOINT = "not gated: no checkpoint"
QUICK_INT8 = "not gated: quick int8 ranges"
#: why a variant is not gated, one line each (the report prints those that occur)
NOT_GATED_WHY = {
    RANDOM: "the network has random weights, so its masks mean nothing and neither would the gate's verdict on "
            "them; time a trained model (the default, or --model) to gate it",
    NO_CHECKPOINT: "the gate compares each variant with the PyTorch checkpoint it came from, and {reason}",
    QUICK_INT8: "quick calibrates int8 with percentile ranges instead of the range search `liverrt export` uses, "
                "and such ranges can cost a trained model its masks; the row times the same Q/DQ graph, and only "
                "the full bench gates it",
}


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def _slices(size: int, n: int) -> np.ndarray:
    vol = synth_case(0, PhantomConfig(size=size, slices=max(n, 8)))
    idx = np.linspace(0, vol.shape[0] - 1, n).round().astype(int)
    x, _ = to_input(vol.image[idx], vol.intensity, PreprocessSpec(size=size))
    return x


def _prepare_model(work: Path, size: int, model: Path | None) -> tuple[Path | None, Path]:
    """``(checkpoint, fp32 ONNX)`` of ``model``, or of the study's U-Net with seeded random weights at ``size``
    (``benchmarks/int8_variants.py`` uses this)."""
    subject = prepare_subject(work, model=model, random_weights=None if model else RandomWeights(size=size))
    return subject.checkpoint, subject.onnx


@dataclass(frozen=True)
class _Variant:
    engine: str
    precision: str  # fp32, fp16, int8, or int8-qat (the same int8 graph, its weights and ranges fine-tuned)
    path: Path
    not_gated: str | None = None  # the gate column's text when it is not run


def _int8_method(kind: str, budget: Budget) -> tuple[str, bool]:
    """The int8 calibration method and whether it is the one `liverrt export` uses for ``kind``."""
    default = default_calib_method(kind)
    if default == "search" and not budget.int8_search:
        return "percentile", False
    return default, True


def _variants(work: Path, subject: Subject, info: ArtifactInfo, step: Callable[[str], None],
              budget: Budget) -> tuple[list[_Variant], list[dict]]:
    """The variants that can run here, and the ones skipped with their reason."""
    not_gated = RANDOM if subject.random_weights else NO_CHECKPOINT if subject.checkpoint is None else None
    variants, skipped = [], []
    if subject.checkpoint is not None:
        variants.append(_Variant("torch", "fp32", subject.checkpoint))
    else:
        skipped.append({"variant": "torch fp32", "reason": subject.no_checkpoint})
    variants.append(_Variant("onnxruntime", "fp32", subject.onnx, not_gated))
    stem = subject.onnx.stem
    step("fp16 and int8 graphs")
    try:  # fp16 of a split Mask R-CNN converts its rpn graph; the box/mask graphs beside it stay fp32
        prec.to_fp16(subject.onnx, work / f"{stem}.fp16.onnx")
        variants.append(_Variant("onnxruntime", "fp16", work / f"{stem}.fp16.onnx", not_gated))
    except Exception as exc:  # reported, not fatal: the other variants still run
        skipped.append({"variant": "onnxruntime fp16", "reason": str(exc)[:200]})
    method, as_export = _int8_method(info.kind, budget)
    calib = None
    calib_volumes = default_volumes(info.spec.size, cases=2, seed=2000)
    try:
        calib = prec.calibration_slices(calib_volumes, info.spec, n=budget.calib_slices)
        prec.to_int8(subject.onnx, work / f"{stem}.int8.onnx", calib, calibration_source="phantoms (bench)",
                     method=method)
        if model_class(info.kind).split_export:  # int8 RoI heads, as `liverrt export` makes them
            heads_to_int8(subject.onnx, work / f"{stem}.int8.onnx", calib, method=method)
        variants.append(_Variant("onnxruntime", "int8", work / f"{stem}.int8.onnx",
                                 not_gated or (None if as_export else QUICK_INT8)))
    except Exception as exc:
        skipped.append({"variant": "onnxruntime int8", "reason": str(exc)[:200]})
    if budget.qat and model_class(info.kind).qat_supported and subject.checkpoint is not None:
        step("int8 by quantization-aware fine-tuning")
        try:
            qat_to_int8(subject.onnx, work / f"{stem}.int8-qat.onnx", calib_volumes, options=QatOptions(device="cpu"),
                        calib_slices=budget.calib_slices, calibration_source="phantoms (bench)")
            variants.append(_Variant("onnxruntime", "int8-qat", work / f"{stem}.int8-qat.onnx", not_gated))
        except Exception as exc:
            skipped.append({"variant": "onnxruntime int8-qat", "reason": str(exc)[:200]})
    skipped += _tensorrt_variants(work, subject, info, calib, method, variants)
    return variants, skipped


def _tensorrt_variants(work: Path, subject: Subject, info: ArtifactInfo, calib: np.ndarray | None, method: str,
                       variants: list[_Variant]) -> list[dict]:
    """Append the TensorRT variants that can run here; return the skipped ones with their reason."""
    no_plan = model_class(info.kind).unsupported_formats.get("tensorrt")
    if no_plan:
        return [{"variant": "tensorrt", "reason": no_plan}]
    by_precision = {v.precision: v for v in variants if v.engine == "onnxruntime"}
    try:
        current_machine()
        for precision in PRECISIONS:
            if precision not in by_precision:
                continue
            v = by_precision[precision]
            path = v.path
            if precision == "int8":  # the onnxruntime graph's zero points -128: TensorRT refuses
                path = prec.to_int8(subject.onnx, work / f"{subject.onnx.stem}.int8.tensorrt.onnx", calib,
                                    calibration_source="phantoms (bench)", method=method, target="tensorrt")
            variants.append(_Variant("tensorrt", precision, path, v.not_gated))
    except Exception as exc:
        return [{"variant": "tensorrt", "reason": str(exc).split(";")[0][:200]}]
    return []


def run_engines(*, quick: bool = True, model: str | Path | None = None, random_weights: RandomWeights | None = None,
                batch_sizes: tuple[int, ...] = (1, 8), on_step: Callable[[str], None] | None = None) -> dict:
    """Measure the engines of ``model`` (default: the bundled default model) or of a network with
    ``random_weights``; returns the results dict (see :func:`liverrt.bench.engines_report.markdown_report`)."""
    step = on_step or (lambda _: None)
    budget = QUICK if quick else FULL
    with tempfile.TemporaryDirectory(prefix="liverrt-bench-") as tmp:
        work = Path(tmp)
        subject = prepare_subject(work, model=model, random_weights=random_weights, on_step=step)
        info = artifact_info(subject.onnx)
        variants, skipped = _variants(work, subject, info, step, budget)
        int8_calibration = _calibration_meta(work / f"{subject.onnx.stem}.int8.onnx")
        inputs = _BenchInputs.make(info, batch_sizes)
        rows, gates = [], []
        for v in variants:
            with open_engine(v.engine, v.path) as engine:
                for bs in batch_sizes:
                    step(f"{v.engine} {v.precision} batch {bs}")
                    rows.append(_time_engine(engine, v.precision, bs, inputs, budget.repeats(bs)))
            if v.engine != "torch":
                if v.not_gated is None:
                    step(f"verification gate {v.engine} {v.precision}")
                gates.append(_gate_row(subject, v, info))
    speedups, int8 = _ratios(rows, batch_sizes)
    return {
        "benchmark": f"{info.kind}_engines",
        "kind": info.kind,
        "model": subject.name,
        "subject": subject.describe(),
        "input": "(N, {}, {}, {}) float32, preprocessed phantom slices".format(*info.spec.input_shape(1)[1:]),
        "quick": quick,
        "export_seconds": subject.export_seconds,
        "rows": rows,
        "gates": gates,
        "not_gated_why": _not_gated_why(gates, subject),
        "skipped": skipped,
        "speedup_onnxruntime_over_torch": speedups,
        "int8": int8,
        "int8_calibration": int8_calibration,
        "machine": machine_info(),
    }


def _not_gated_why(gates: list[dict], subject: Subject) -> dict[str, str]:
    """One line per reason a variant was not gated, for those that occur."""
    verdicts = dict.fromkeys(g["verdict"] for g in gates if g["passed"] is None)
    return {v: NOT_GATED_WHY[v].format(reason=subject.no_checkpoint) for v in verdicts}


@dataclass(frozen=True)
class _BenchInputs:
    """What every engine is timed on: preprocessed slices (network only) and a phantom volume (end to end)."""

    info: ArtifactInfo
    slices: np.ndarray
    volume: Volume

    @classmethod
    def make(cls, info: ArtifactInfo, batch_sizes: tuple[int, ...]) -> _BenchInputs:
        size = info.spec.size
        volume = synth_case(1, PhantomConfig(size=max(64, min(size, 512)), slices=max(batch_sizes)))
        return cls(info, _slices(size, max(batch_sizes)), volume)


def _time_engine(engine, precision: str, bs: int, inputs: _BenchInputs, n_rep: int) -> dict:
    """One row: the network alone on a batch of ``bs`` slices, and the whole pipeline on a volume."""
    batch = np.ascontiguousarray(inputs.slices[:bs])
    times = time_call(lambda b=batch: engine.infer(b), warmup=2, repeats=n_rep)
    vol = inputs.volume if bs > 1 else _first_slices(inputs.volume, 1)
    if model_class(inputs.info.kind).task == "denoising":  # an image out: preprocess + network
        def whole(v=vol, e=engine, b=bs):
            x, _ = to_input(v.image, v.intensity, inputs.info.spec, v.spacing)
            for i in range(0, x.shape[0], b):
                e.infer(x[i:i + b])
    else:
        whole = partial(Segmenter(engine, batch_size=bs).segment, vol)
    e2e = time_call(whole, warmup=1, repeats=max(2, n_rep // 2))
    med, p95 = statistics.median(times), _percentile(times, 95)
    return {"engine": engine.name, "precision": precision, "batch": bs, "repeats": len(times),
            "batch_ms_median": med * 1e3, "batch_ms_p95": p95 * 1e3,
            "slice_ms_median": med * 1e3 / bs, "slice_ms_p95": p95 * 1e3 / bs, "slices_per_s": bs / med,
            "e2e_slice_ms_median": statistics.median(e2e) * 1e3 / vol.shape[0]}


def _gate_row(subject: Subject, v: _Variant, info: ArtifactInfo) -> dict:
    """The verification gate of one variant on phantoms, as the report shows it; a variant that is not
    gated has its reason as the verdict and no numbers."""
    gate = {"engine": v.engine, "precision": v.precision}
    if v.not_gated is not None:
        return {**gate, "passed": None, "verdict": v.not_gated}
    rep = verify_artifact(subject.checkpoint, v.path, default_volumes(info.spec.size, cases=2), engine=v.engine)
    gate.update(passed=rep.passed, verdict="passed" if rep.passed else "failed")
    if model_class(info.kind).gate == "psnr":
        gate.update(mean_psnr_db=rep.mean["psnr_db"], worst_psnr_db=rep.worst["psnr_db"])
    else:
        gate.update(mean_delta_dice=rep.mean["delta_dice"], worst_delta_dice=rep.worst["delta_dice"],
                    mean_delta_boundary_iou=rep.mean["delta_boundary_iou"])
    return gate


def _ratios(rows: list[dict], batch_sizes: tuple[int, ...]) -> tuple[dict, dict]:
    """Per batch size: onnxruntime fp32 over torch, and each int8 graph over both (ratios of one run's medians);
    the int8 ratios are keyed ``batch_<n>`` (post-training ranges) and ``int8-qat batch_<n>``."""
    by = {(r["engine"], r["precision"], r["batch"]): r["slice_ms_median"] for r in rows}
    speedups = {f"batch_{bs}": by[("torch", "fp32", bs)] / by[("onnxruntime", "fp32", bs)] for bs in batch_sizes
                if ("torch", "fp32", bs) in by}
    int8 = {}
    for precision, prefix in (("int8", ""), ("int8-qat", "int8-qat ")):
        for bs in batch_sizes:
            if ("onnxruntime", precision, bs) in by:
                q = by[("onnxruntime", precision, bs)]
                torch_ms = by.get(("torch", "fp32", bs))
                int8[f"{prefix}batch_{bs}"] = {"int8_ms_per_slice": q,
                                               "vs_onnxruntime_fp32": by[("onnxruntime", "fp32", bs)] / q,
                                               "vs_torch": None if torch_ms is None else torch_ms / q}
    return speedups, int8


def _calibration_meta(path: Path) -> dict | None:
    if not path.exists():
        return None
    meta = onnx_metadata(path)
    return json.loads(meta["liverrt.calibration"]) if "liverrt.calibration" in meta else None


def _first_slices(volume, n: int):
    return replace(volume, image=volume.image[:n], mask=None if volume.mask is None else volume.mask[:n],
                   instances=None, slice_names=volume.slice_names[:n] if volume.slice_names else volume.slice_names)
