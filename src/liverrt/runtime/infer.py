"""Segment every case of a source with one engine and write the results."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

from liverrt.atomic import (
    write_text_atomic,
    writes_outputs,
)
from liverrt.data.layouts import layout_of
from liverrt.data.sources import CaseRef, check_case_outputs, find_cases, load_case
from liverrt.errors import InputError, skipped_case
from liverrt.runtime import open_engine
from liverrt.runtime.base import require_task
from liverrt.runtime.outputs import FORMATS, case_summary, write_case
from liverrt.runtime.segmenter import Segmenter, check_denoiser
from liverrt.runtime.summary_html import CaseViews, case_views, render_page, thumb_px

log = logging.getLogger(__name__)

#: the run's files next to the case folders (a case may not be named like one of them)
SUMMARY_JSON, SUMMARY_HTML = "summary.json", "summary.html"


@dataclass
class InferReport:
    cases: list[dict] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)
    engine: str = ""
    model: str = ""
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {"engine": self.engine, "model": self.model, "seconds": round(self.seconds, 3),
                "cases": self.cases, "skipped": self.skipped}


def _load_for_inference(ref):
    """The case with its mask (drawn on overlays) when readable, else without it.

    A KITTI case read with masks holds only its annotated slices, so inference
    reads its images only: every image is segmented, and neither
    ``label_colors.txt`` nor a liver label is needed.
    """
    if layout_of(ref).masks_select_slices:
        return load_case(ref, with_mask=False)
    try:
        return load_case(ref)
    except InputError as exc:
        if ref.mask is None:
            raise
        log.warning("%s: ignoring its ground-truth mask (%s)", ref.case_id, exc)
        return load_case(ref, with_mask=False)


@writes_outputs("liverrt infer")
def run_inference(
    model: Path,
    src: Path,
    out: Path,
    *,
    engine: str = "onnxruntime",
    batch_size: int = 8,
    formats: tuple[str, ...] | None = None,
    overlays: int = 4,
    engine_options: dict | None = None,
    postprocess: dict | None = None,
    layout: str | None = None,
    denoise: Path | None = None,
    on_case: Callable[[str, int, int], None] | None = None,
    overwrite: bool = False,
) -> InferReport:
    """Segment each case under ``src`` into ``out/<case>/``; write ``out/summary.json`` and ``out/summary.html``.

    ``formats`` defaults per case: NIfTI for HU volumes, PNG masks for 8-bit slice folders.
    ``postprocess``: :class:`~liverrt.runtime.segmenter.Segmenter` keywords (``smooth_z_mm``, ``threshold``,
    ``fill_holes``, ``keep_largest``; none by default; a bundled model's:
    :func:`liverrt.models.bundled.postprocess_options`).
    ``denoise``: a DnCNN-SR artifact run on every preprocessed batch before the
    segmentation model (a ``.pt`` runs on torch, an ``.onnx`` on onnxruntime).
    ``overwrite``: replace outputs liverrt did not write (never an input); see :mod:`liverrt.atomic`.

    A case that cannot be read or segmented is reported in ``skipped`` and the
    others still run; nothing partial is left for it. The two summaries are written
    together, when at least one case was segmented (the page: :mod:`liverrt.runtime.summary_html`).
    """
    bad = [f for f in formats or () if f not in FORMATS]
    if bad:
        raise InputError(f"Output formats {bad}: expected a subset of {FORMATS}.")
    out = Path(out)
    refs = find_cases(src, layout=layout)
    _refuse_summary_names(refs)
    check_case_outputs(src, out, refs, also=(out / SUMMARY_JSON, out / SUMMARY_HTML))
    eng = open_engine(engine, model, **(engine_options or {}))
    # fail early, before any output: a damaged artifact or a model that does not segment (a DnCNN-SR)
    require_task(eng.info, "segmentation", role="--model")
    den = None
    if denoise is not None:  # on the segmentation engine's device: torch for .pt, onnxruntime for .onnx
        opts = engine_options or {}
        if Path(denoise).suffix.lower() == ".onnx":
            den = open_engine("onnxruntime", denoise, **({"providers": opts["providers"]} if "providers" in opts
                                                         else {}))
        else:
            device = opts.get("device", "cuda" if engine in ("tensorrt", "trt") else "auto")
            den = open_engine("torch", denoise, device=str(device))

        check_denoiser(den, eng)
    report = InferReport(engine=engine, model=str(model))
    views: dict[str, CaseViews] = {}
    t0 = time.perf_counter()
    with eng, (den if den is not None else nullcontext()):
        seg = Segmenter(eng, batch_size=batch_size, denoiser=den, **(postprocess or {}))
        for i, ref in enumerate(refs):
            if on_case:
                on_case(ref.case_id, i, len(refs))
            try:
                volume = _load_for_inference(ref)
                result = seg.segment(volume)
                pictures = case_views(volume, result, size=thumb_px(len(refs)))  # for the page, while in memory
                fmts = formats or (("nifti",) if volume.intensity == "hu" else ("png",))
                write_case(volume, result, out, formats=fmts, overlays=overlays)
            except Exception as exc:  # one case never stops the others; the reason is reported
                report.skipped.append(skipped := skipped_case(ref.case_id, ref.image, exc))
                log.warning("skipped %s: %s", ref.image, skipped["reason"])
                continue
            report.cases.append(case_summary(volume, result))
            views[ref.case_id] = pictures
    report.seconds = time.perf_counter() - t0
    if report.cases:
        summary = report.to_dict()
        write_text_atomic(json.dumps(summary, indent=2), out / SUMMARY_JSON)
        write_text_atomic(render_page(summary, views), out / SUMMARY_HTML)
    return report


def _refuse_summary_names(refs: list[CaseRef]) -> None:
    """A case named ``summary.json`` would be a folder where the run's summary goes: refused before any work."""
    for ref in refs:
        if ref.case_id in (SUMMARY_JSON, SUMMARY_HTML):
            raise InputError(f"{ref.image}: its case id {ref.case_id!r} is the name of the run's summary file in "
                             "the output folder; expected another name (rename it).")
