"""``liverrt data inspect``: what a source holds, case by case, before anything is trained on it."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from liverrt.data.layouts import layout_named, layout_of
from liverrt.data.sources import DEFAULT_OPTIONS, CaseRef, ReadOptions, find_cases, load_case
from liverrt.errors import InputError
from liverrt.metrics import label

log = logging.getLogger(__name__)


class _Collect(logging.Handler):
    """Catches the readers' warnings so they land in the report, not only in the log."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def two_region_slices(mask: np.ndarray) -> list[int]:
    """Indices of slices whose liver has two or more 8-connected regions (the study's hard case)."""
    if mask is None or not mask.any():
        return []
    _, counts = label(mask, connectivity=8, per_slice=True)
    return [int(i) for i in np.flatnonzero(np.asarray(counts) >= 2)]


def _summary(ref: CaseRef, options: ReadOptions) -> dict:
    volume = load_case(ref, with_mask=ref.mask is not None, options=options)
    names = volume.names
    notes = layout_of(ref).annotations(ref, volume)
    info = {
        "id": ref.case_id,
        "layout": ref.kind,
        "source": str(ref.image),
        "mask": None if ref.mask is None else str(ref.mask),
        "n_images": notes.n_images,
        "n_annotated": len(notes.annotated),
        "first_annotated": notes.annotated[0] if notes.annotated else None,
        "last_annotated": notes.annotated[-1] if notes.annotated else None,
        "shape": list(volume.shape),
        "spacing": list(volume.spacing) if volume.has_geometry else None,
        "intensity": volume.intensity,
        "orphan_masks": notes.orphan_masks,
        "unannotated": notes.unannotated,
        "two_region_slices": [],
    }
    if volume.mask is not None:
        info["liver_slices"] = int(volume.mask.reshape(volume.shape[0], -1).any(axis=1).sum())
        info["two_region_slices"] = [names[i] for i in two_region_slices(volume.mask)]
    return info


def inspect_source(src: Path, *, layout: str | None = None, options: ReadOptions = DEFAULT_OPTIONS) -> dict:
    """``{"cases": [...], "warnings": [...]}``; raises :class:`InputError` when nothing is readable."""
    refs = find_cases(src, layout=layout)
    cases, warnings = [], []
    collector = _Collect()
    root = logging.getLogger("liverrt")
    root.addHandler(collector)
    try:
        for ref in refs:
            collector.messages.clear()
            try:
                cases.append(_summary(ref, options))
            except InputError as exc:
                warnings.append(f"{ref.case_id}: skipped: {exc}")
            warnings += collector.messages
    finally:
        root.removeHandler(collector)
    if not cases:
        raise InputError(f"Nothing readable in {src}: " + "; ".join(warnings[:3]))
    return {"cases": cases, "warnings": warnings}


def text_report(report: dict) -> str:
    lines = []
    for c in report["cases"]:
        spacing = "x".join(f"{s:g}" for s in c["spacing"]) + " mm" if c["spacing"] else "no geometry"
        rng = f", annotated {c['first_annotated']}..{c['last_annotated']}" if c["first_annotated"] else ""
        pair = f": {Path(c['source']).name} + {Path(c['mask']).name}" if c.get("mask") else ""  # how it paired them
        lines.append(
            f"{c['id']} [{c['layout']}{pair}] {c['n_images']} images, {c['n_annotated']} annotated{rng}; "
            f"shape {'x'.join(map(str, c['shape']))}, {spacing}, {c['intensity']}; "
            f"{len(c['two_region_slices'])} two-region slices"
            + (f"; {len(c['unannotated'])} unannotated" if c["unannotated"] else "")
            + (f"; {len(c['orphan_masks'])} orphan masks" if c["orphan_masks"] else "")
        )
    seen = dict.fromkeys(c["layout"] for c in report["cases"])
    lines += [f"[{name}] {layout_named(name).description}" for name in seen]
    lines += [f"warning: {w}" for w in report["warnings"]]
    return "\n".join(lines)
