"""The verification gate: an exported artifact against its PyTorch source, on whole cases.

Both the source checkpoint (torch engine) and the artifact (any engine) run
the full pipeline — preprocess, network, restore to the source grid,
threshold — on every slice of a dataset, and their masks are compared with
segmentation metrics, per slice:

* ``ΔDice`` = 1 − Dice(reference mask, artifact mask), ``ΔIoU`` likewise,
  ``ΔBoundary IoU`` = 1 − Boundary IoU of the two masks; slices where both
  are empty count as 0;
* with ground truth, also each side's volume Dice against it and the
  difference.

The gate fails when the mean ΔDice or the worst slice's ΔDice passes the
limit of the artifact's precision (:data:`LIMITS`), or when the artifact
returns no liver at all where the reference finds some (the classic broken
fp16 engine). Limits, justified by what each precision changes:

* fp32: mean 1e-4, worst 2e-3 — the same arithmetic reordered; only pixels
  with a probability within float noise of the threshold may flip;
* fp16: mean 1e-3, worst 1e-2 — 10-bit mantissas move logits by ~1e-3
  relative, flipping a thin rim of boundary pixels;
* int8: mean 5e-3, worst 2e-2 — quantised weights and activations shift
  boundaries by about a pixel on a 512² liver (~1 % of its boundary).

For fp32 a pixel whose reference probability lies within ``undecided_band``
(1e-4) of the threshold takes the reference's label: there the two sides
differ by float noise only, and a barely trained network (p ≈ 0.5 everywhere)
would otherwise fail on noise. fp16 and int8 get no band: their boundary
shifts are what the gate is for.

A model whose class is gated by ``psnr`` (DnCNN-SR) is compared as images:
the mean PSNR of the artifact's output against the reference output must
reach 60 / 45 / 35 dB.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from liverrt.atomic import write_text_atomic
from liverrt.data.phantom import PhantomConfig, synth_case
from liverrt.data.preprocess import volume_input
from liverrt.data.volume import Volume
from liverrt.errors import InputError
from liverrt.evaluation import json_safe
from liverrt.metrics import dice_from_counts, overlap_counts
from liverrt.metrics.boundary import slice_metrics
from liverrt.models import model_class
from liverrt.runtime import open_engine
from liverrt.runtime.segmenter import Segmenter

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class GateLimits:
    """What the gate accepts: ΔDice limits for mask models, a PSNR floor for image models, and the fp32 band
    where a flipped pixel is float noise (module docstring). :data:`LIMITS` holds the defaults per precision;
    ``replace(LIMITS["int8"], mean_delta_dice=...)`` loosens or tightens one."""

    mean_delta_dice: float
    worst_delta_dice: float
    min_psnr_db: float
    undecided_band: float = 0.0


LIMITS = {
    "fp32": GateLimits(mean_delta_dice=1e-4, worst_delta_dice=2e-3, min_psnr_db=60.0, undecided_band=1e-4),
    "fp16": GateLimits(mean_delta_dice=1e-3, worst_delta_dice=1e-2, min_psnr_db=45.0),
    "int8": GateLimits(mean_delta_dice=5e-3, worst_delta_dice=2e-2, min_psnr_db=35.0),
}


@dataclass
class VerifyReport:
    artifact: str
    reference: str
    engine: str
    precision: str
    kind: str
    cases: int
    slices: int
    limits: GateLimits
    mean: dict = field(default_factory=dict)
    worst: dict = field(default_factory=dict)
    worst_slices: list[dict] = field(default_factory=list)
    vs_truth: dict = field(default_factory=dict)
    reference_liver_slices: int = 0
    artifact_liver_slices: int = 0
    seconds: float = 0.0
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def gated_by(self) -> str:
        """``masks`` or ``psnr``: how the model's class says its artifacts are compared."""
        return model_class(self.kind).gate

    def summary(self) -> str:
        if self.gated_by == "psnr":
            return f"{self.slices} slices, mean PSNR vs PyTorch {self.mean.get('psnr_db', float('nan')):.1f} dB"
        return (f"{self.cases} cases, {self.slices} slices: mean ΔDice {self.mean['delta_dice']:.2e}, worst "
                f"{self.worst['delta_dice']:.2e}; mean ΔBoundary IoU {self.mean['delta_boundary_iou']:.2e}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["passed"] = self.passed

        return json_safe(d)

    def markdown(self) -> str:
        status = "PASSED" if self.passed else "FAILED"
        lines = [f"# Verification: {status}", "",
                 f"`{self.artifact}` ({self.precision}, engine {self.engine}) against `{self.reference}` "
                 f"(PyTorch) on {self.cases} cases, {self.slices} slices.", ""]
        if self.gated_by == "psnr":
            lines += [f"mean PSNR of the artifact's output vs PyTorch's: {self.mean['psnr_db']:.2f} dB "
                      f"(limit {self.limits.min_psnr_db} dB); worst slice {self.worst['psnr_db']:.2f} dB"]
        else:
            lines += ["| metric | mean | worst slice | limit |", "|---|---|---|---|",
                      f"| ΔDice | {self.mean['delta_dice']:.2e} | {self.worst['delta_dice']:.2e} | "
                      f"mean ≤ {self.limits.mean_delta_dice:.2g}, worst ≤ {self.limits.worst_delta_dice:.2g} |",
                      f"| ΔMask IoU | {self.mean['delta_iou']:.2e} | {self.worst['delta_iou']:.2e} | |",
                      f"| ΔBoundary IoU | {self.mean['delta_boundary_iou']:.2e} | "
                      f"{self.worst['delta_boundary_iou']:.2e} | |", "",
                      f"slices with liver: reference {self.reference_liver_slices}, artifact "
                      f"{self.artifact_liver_slices}"]
            if self.vs_truth:
                t = self.vs_truth
                lines += ["", f"against the ground truth: volume Dice PyTorch {t['reference_dice']:.4f}, artifact "
                              f"{t['artifact_dice']:.4f} (Δ {t['delta_dice']:+.2e})"]
            if self.worst_slices:
                lines += ["", "worst slices:", "", "| case | slice | ΔDice | ΔBoundary IoU |", "|---|---|---|---|"]
                lines += [f"| {w['case_id']} | {w['slice']} | {w['delta_dice']:.2e} | {w['delta_boundary_iou']:.2e} |"
                          for w in self.worst_slices]
        if self.failures:
            lines += ["", "**failed:**", *[f"- {f}" for f in self.failures]]
        return "\n".join(lines) + "\n"

    def write(self, out_dir: Path, stem: str | None = None) -> tuple[Path, Path]:
        """``verify.json``/``verify.md`` in ``out_dir``, or ``<stem>.verify.json``/``.md`` next to an artifact."""

        out_dir = Path(out_dir)
        prefix = f"{stem}." if stem else ""
        j = write_text_atomic(json.dumps(self.to_dict(), indent=2), out_dir / f"{prefix}verify.json")
        m = write_text_atomic(self.markdown(), out_dir / f"{prefix}verify.md")
        return j, m


def default_volumes(size: int, cases: int = 2, seed: int = 1000) -> list[Volume]:
    """Phantom cases for the gate when the user names no dataset (seeds outside the demo's training range)."""

    cfg = PhantomConfig(size=max(64, min(size, 256)), slices=16)
    return [synth_case(seed + k, cfg, case_id=f"verify_{k:02d}") for k in range(cases)]


def verify_artifact(reference: Path, artifact: Path, volumes: list[Volume] | None = None, *,
                    engine: str = "onnxruntime", engine_options: dict | None = None,
                    limits: GateLimits | None = None, batch_size: int = 8, worst: int = 5) -> VerifyReport:
    """Run ``reference`` (a checkpoint, torch engine) and ``artifact`` (``engine``) on ``volumes``; compare.

    ``limits`` default to those of the artifact's precision (:data:`LIMITS`)."""

    t0 = time.perf_counter()
    ref_engine = open_engine("torch", reference, device="cpu")
    art_engine = open_engine(engine, artifact, **(engine_options or {}))
    info = art_engine.info
    if ref_engine.info.kind != info.kind or ref_engine.info.spec != info.spec:
        raise InputError(f"{artifact} ({info.kind}, {info.spec}) was not exported from {reference} "
                         f"({ref_engine.info.kind}, {ref_engine.info.spec}); expected the same model and spec.")
    precision = info.precision
    lim = limits if limits is not None else LIMITS[precision]
    volumes = volumes or default_volumes(info.spec.size)
    report = VerifyReport(str(artifact), str(reference), engine, precision, info.kind, len(volumes),
                          sum(v.shape[0] for v in volumes), lim)
    with ref_engine, art_engine:
        if report.gated_by == "psnr":
            _compare_images(ref_engine, art_engine, volumes, report, batch_size)
        else:
            _compare_masks(ref_engine, art_engine, volumes, report, batch_size, worst)
    report.seconds = time.perf_counter() - t0
    log.info("verify %s: %s (%s)", artifact, report.summary(), "passed" if report.passed else "FAILED")
    return report


def _compare_masks(ref_engine, art_engine, volumes, report: VerifyReport, batch_size: int, worst: int) -> None:
    rows, truth = [], {"ref": np.zeros(3), "art": np.zeros(3)}
    ref_seg = Segmenter(ref_engine, batch_size=batch_size, keep_prob=True)
    art_seg = Segmenter(art_engine, batch_size=batch_size)
    band = report.limits.undecided_band
    for vol in volumes:
        ref = ref_seg.segment(vol)
        a = ref.mask
        b = raw = art_seg.segment(vol).mask
        if band > 0 and not (ref_seg.fill_holes or ref_seg.keep_largest):
            undecided = np.abs(ref.prob - ref_seg.threshold) <= band
            b = np.where(undecided, a, b)
        m = slice_metrics(b, a)
        both_empty = ~m["nonempty"]
        for k in range(a.shape[0]):
            rows.append({"case_id": vol.case_id, "slice": k,
                         "delta_dice": 0.0 if both_empty[k] else 1.0 - float(m["dice"][k]),
                         "delta_iou": 0.0 if both_empty[k] else 1.0 - float(m["mask_iou"][k]),
                         "delta_boundary_iou": 0.0 if both_empty[k] else 1.0 - float(m["boundary_iou"][k])})
        report.reference_liver_slices += int(a.any(axis=(1, 2)).sum())
        report.artifact_liver_slices += int(raw.any(axis=(1, 2)).sum())
        if vol.mask is not None:
            truth["ref"] += overlap_counts(a, vol.mask)
            truth["art"] += overlap_counts(raw, vol.mask)
    keys = ("delta_dice", "delta_iou", "delta_boundary_iou")
    report.mean = {k: float(np.mean([r[k] for r in rows])) for k in keys}
    report.worst = {k: float(np.max([r[k] for r in rows])) for k in keys}
    report.worst_slices = sorted(rows, key=lambda r: -r["delta_dice"])[:worst]
    if any(v.mask is not None for v in volumes):
        rd, ad = dice_from_counts(*truth["ref"]), dice_from_counts(*truth["art"])
        report.vs_truth = {"reference_dice": rd, "artifact_dice": ad, "delta_dice": ad - rd}
    lim = report.limits
    if not report.reference_liver_slices:
        report.failures.append(f"inconclusive: the PyTorch model finds no liver in any of {report.slices} "
                               "verification slices, so an artifact that returns nothing would pass; expected "
                               "cases with liver (pass --verify with your own data)")
    elif not report.artifact_liver_slices:
        report.failures.append(f"the artifact finds no liver in any of {report.slices} slices, the reference in "
                               f"{report.reference_liver_slices} (an all-empty output, e.g. a broken fp16 engine)")
    if report.mean["delta_dice"] > lim.mean_delta_dice:
        report.failures.append(f"mean ΔDice {report.mean['delta_dice']:.2e} > {lim.mean_delta_dice:.2g}")
    if report.worst["delta_dice"] > lim.worst_delta_dice:
        w = report.worst_slices[0]
        report.failures.append(f"worst slice ΔDice {report.worst['delta_dice']:.2e} > {lim.worst_delta_dice:.2g} "
                               f"({w['case_id']} slice {w['slice']})")


def _compare_images(ref_engine, art_engine, volumes, report: VerifyReport, batch_size: int) -> None:
    psnrs, finite = [], True
    spec = ref_engine.info.spec
    (output,) = model_class(report.kind).output_names  # the image
    for vol in volumes:
        for start in range(0, vol.shape[0], batch_size):
            x, _ = volume_input(vol, slice(start, start + batch_size), spec)
            a = ref_engine.infer(x)[output].astype(np.float64)
            b = art_engine.infer(x)[output].astype(np.float64)
            finite = finite and bool(np.isfinite(b).all())
            mse = ((a - b) ** 2).reshape(len(a), -1).mean(axis=1)
            psnrs += [100.0 if e == 0 else 10 * np.log10(1.0 / e) for e in mse]
    report.mean = {"psnr_db": float(np.mean(psnrs))}
    report.worst = {"psnr_db": float(np.min(psnrs))}
    if not finite:
        report.failures.append("the artifact returned NaN or inf pixels")
    if not report.mean["psnr_db"] >= report.limits.min_psnr_db:  # NaN fails too
        report.failures.append(f"mean PSNR vs PyTorch {report.mean['psnr_db']:.1f} dB < "
                               f"{report.limits.min_psnr_db} dB")
