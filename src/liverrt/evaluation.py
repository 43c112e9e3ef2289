"""Compare predicted liver masks with the ground truth, case by case (``liverrt eval``).

Predictions and ground truth are NIfTI, NRRD or MetaImage masks (label > 0 is
liver), DICOM SEG files (the liver segment), PNG/JPG mask folders (natural sort
order; one folder is one volume), case folders holding either, or roots of such
case folders; cases are matched by name.

A DICOM SEG stores frames, not a voxel grid (empty slices are usually left
out): paired with a mask that has a grid (NIfTI, NRRD, MetaImage, a DICOM case)
it is put on that grid, and the case is refused when its frames do not lie on
it (another series); two SEGs share the grid their frames span; against PNG
masks it keeps its own grid (:func:`liverrt.data.sources.on_one_grid`).

Distances need the voxel spacing in mm, taken from, in this order: an explicit
``spacing``; the geometry of ``like`` (a NIfTI, NRRD or MetaImage file, or a
DICOM series folder); the ground truth's header; the prediction's header. PNG
masks have no geometry: without ``spacing``/``like`` their distances are in
pixels, and the report says so.

JSON layout (see :class:`liverrt.metrics.MetricAccumulator` for definitions)::

    {"spacing_source": ..., "cases": [{"id", "pred", "gt", "spacing_mm",
       "volume": {dice, mask_iou, ravd, assd, mssd, hd95},
       "slices": {mask_iou, dice, f_measure, boundary_iou, trimap_iou, boundary_f, n}}],
     "mean": {"volume": {...}, "slices": {...}}, "excluded": {...}, "unmatched": {...}}

Slice metrics are averaged over slices where prediction or truth is non-empty.

``multi_region`` reports separately on the slices whose true liver has two or
more separate regions (8-connected, each at least ``min_region_area`` pixels):
the study's hardest case. It holds their slice-pooled scores and
``separated``, the share of those slices where every true region is matched
one-to-one by a predicted region (connected component of the prediction)
with IoU >= 0.5, so a mask that bridges or misses a region does not count.
Infinite distances (exactly one mask empty) are written as ``null`` and listed
with their reason in ``excluded``; means leave them out.
"""

from __future__ import annotations

import csv
import logging
import math
import re
from pathlib import Path

import numpy as np

from liverrt.atomic import atomic_path
from liverrt.data.dicom import series_spacing
from liverrt.data.io import is_volume_file, natural_key, nifti_spacing
from liverrt.data.layouts import layout_of
from liverrt.data.nifti_sets import detect_nifti_set
from liverrt.data.sources import (
    LABELLED_CASE_KINDS,
    CaseRef,
    MaskVolume,
    find_cases,
    find_masks,
    load_case,
    on_one_grid,
    read_mask,
    single_mask,
)
from liverrt.errors import InputError
from liverrt.metrics import SLICE_SCORES, VOLUME_METRICS, MetricAccumulator, label
from liverrt.metrics.instances import match_instances

log = logging.getLogger(__name__)

Spacing = tuple[float, float, float]


def spacing_like(ref: Path) -> Spacing:
    """``(dz, dy, dx)`` of a NIfTI, NRRD or MetaImage file or a DICOM series folder."""
    ref = Path(ref)
    if is_volume_file(ref):
        return nifti_spacing(ref)
    if ref.is_dir():
        return series_spacing(ref)
    raise InputError(f"--like {ref}: expected a NIfTI, NRRD or MetaImage file or a DICOM series folder.")


def check_spacing(spacing: tuple[float, ...]) -> Spacing:
    values = tuple(float(s) for s in spacing)
    if len(values) != 3 or not all(math.isfinite(s) and s > 0 for s in values):
        raise InputError(f"spacing: got {spacing}, expected three positive numbers Z,Y,X in mm.")
    return values  # type: ignore[return-value]


MISSING_POLICIES = ("error", "skip", "empty")


def _labelled_cases(gt: Path) -> dict[str, Path | CaseRef]:
    """The labelled cases of ``gt`` by id: NIfTI cases as their mask file, other layouts as CaseRefs."""
    return {ref.case_id: ref.mask if layout_of(ref).mask_is_label_map else ref
            for ref in find_cases(gt) if ref.mask is not None}


def _ground_truth(gt: Path) -> dict[str, Path | CaseRef]:
    """Ground-truth masks by case: NIfTI/NRRD/MetaImage/DICOM SEG/PNG masks, or the labelled cases of any
    readable layout (the study's KITTI release, CHAOS, 3D-IRCADb, LiTS, MSD).

    ``gt`` may be one case or a root of cases. KITTI, CHAOS and 3D-IRCADb case
    folders are always read as cases (a KITTI case is scored on its annotated
    slices), never as folders of mask images, also beside mask folders in one
    root; LiTS and MSD roots are read as image/label pairs.
    """
    gt = Path(gt)
    if detect_nifti_set(gt) is not None:  # volume-N + segmentation-N, imagesTr + labelsTr: not a folder of masks
        labelled = _labelled_cases(gt)
        if labelled:
            return labelled
    try:
        masks = find_masks(gt)  # leaves KITTI/CHAOS/3D-IRCADb case folders out
    except InputError:
        labelled = _labelled_cases(gt)
        if not labelled:
            raise
        return labelled
    if gt.is_file():
        return masks
    try:
        refs = find_cases(gt)
    except InputError:
        refs = []
    cases = {r.case_id: r for r in refs if r.kind in LABELLED_CASE_KINDS and r.mask is not None and r.case_id not in masks}
    if not cases:
        return masks
    merged = {**masks, **cases}
    return {cid: merged[cid] for cid in sorted(merged, key=natural_key)}


def _read_truth(where: Path | CaseRef, cid: str) -> MaskVolume:
    if not isinstance(where, CaseRef):
        return read_mask(where, cid)
    volume = load_case(where)
    spacing = volume.spacing if volume.has_geometry else None
    return MaskVolume(cid, volume.mask, spacing, Path(where.image), affine=volume.affine if spacing else None,
                      slice_names=volume.slice_names or None)


def _pairs(pred: Path, gt: Path, missing: str) -> tuple[list[tuple[str, Path | None, Path]], dict[str, list[str]]]:
    """Match prediction and ground-truth volumes by case name.

    Two single volumes (NIfTI files or mask slice folders) are compared whatever
    their names; so are one prediction volume and a ground truth that is one
    case folder (e.g. a KITTI case), or a root that holds one case (a prediction folder from
    ``liverrt infer``); two roots of case folders are matched by name, whatever their count.
    A ground-truth case without a prediction is an error
    (``missing="error"``), left out (``"skip"``, listed in ``unmatched``) or
    scored as an empty prediction (``"empty"``, the challenge convention).
    """
    if missing not in MISSING_POLICIES:
        raise InputError(f"missing: got {missing!r}, expected one of {MISSING_POLICIES}.")
    single_p, single_g = single_mask(pred), single_mask(gt)
    if single_p is not None and single_g is not None:
        name = next(iter(find_masks(gt)))
        return [(name, single_p, single_g)], {"pred": [], "gt": []}
    preds, gts = find_masks(pred), _ground_truth(gt)
    if single_p is not None and len(gts) == 1 and Path(gt).is_dir() and next(iter(gts)) == Path(gt).name:
        name, where = next(iter(gts.items()))  # the ground truth is this one case folder
        return [(name, single_p, where)], {"pred": [], "gt": []}
    if (single_p is not None or single_g is not None) and len(preds) == 1 and len(gts) == 1:
        # one volume given as itself, one case on the other side (`infer -i case/ -o out` against case/liver.nii.gz);
        # two roots of case folders are still matched by name
        (gid, gpath), ppath = next(iter(gts.items())), next(iter(preds.values()))
        return [(gid, ppath, gpath)], {"pred": [], "gt": []}
    if not set(gts) & set(preds):  # nothing to pair: --missing skip/empty would only hide that
        raise InputError(
            f"No case names match between {pred} ({sorted(preds)[:5]}) and {gt} ({sorted(gts)[:5]}); expected the "
            "same case folder or file names, or one volume on each side (--pred FILE --gt FILE)."
        )
    absent = [cid for cid in gts if cid not in preds]
    if absent and missing == "error":
        raise InputError(
            f"{len(absent)} ground-truth case(s) have no prediction in {pred}: {absent[:5]}; expected one per case "
            "(use --missing skip to leave them out, --missing empty to score them as empty predictions)."
        )
    pairs = [(cid, preds.get(cid), gpath) for cid, gpath in gts.items() if cid in preds or missing == "empty"]
    left_out = sorted(absent) if missing == "skip" else []  # with "empty" they are scored, not left out
    return pairs, {"pred": sorted(set(preds) - set(gts)), "gt": left_out}


def _aligned(cid: str, p: MaskVolume, g: MaskVolume) -> tuple[np.ndarray, list[str]]:
    """The prediction's mask in the ground truth's slice order, and warnings about the pair."""
    warnings = []
    pm = p.mask
    if p.slice_names is not None and g.slice_names is not None and p.slice_names != g.slice_names:
        index = {name: i for i, name in enumerate(p.slice_names)}
        if set(g.slice_names) <= set(p.slice_names):
            pm = pm[[index[name] for name in g.slice_names]]
            if len(g.slice_names) < len(p.slice_names):
                warnings.append(f"scored on the {len(g.slice_names)} annotated of {len(p.slice_names)} predicted slices")
        else:
            partner = _pair_by_trailing_number(cid, p.slice_names, g.slice_names)  # ground-truth stem -> prediction's
            pm = pm[[index[partner[name]] for name in g.slice_names]]
            first = g.slice_names[0]
            note = f"paired {len(g.slice_names)} slices by their trailing numbers ({partner[first]} <-> {first})"
            log.warning("Case %s: %s", cid, note)
            warnings.append(note)
    if pm.shape != g.mask.shape:
        raise InputError(
            f"Case {cid}: prediction {p.source} has shape {pm.shape}, ground truth {g.source} has "
            f"{g.mask.shape}; expected equal shapes (D, H, W), i.e. the same slice count and size."
        )
    if p.affine is not None and g.affine is not None and not np.allclose(p.affine, g.affine, atol=1e-3):
        warnings.append("prediction and ground-truth affines differ: are they on the same grid?")
    return pm, warnings


_TRAILING_NUMBER = re.compile(r"(\d+)$")


def _by_trailing_number(names: tuple[str, ...], side: str) -> tuple[dict[int, str], str]:
    """``{number: stem}`` of slice stems by their trailing number, and why not ("" when they can be)."""
    found: dict[int, str] = {}
    for name in names:
        m = _TRAILING_NUMBER.search(name)
        if m is None:
            return {}, f"{side} stem {name!r} has no trailing number"
        n = int(m.group(1))
        if n in found:
            return {}, f"{side} stems {found[n]!r} and {name!r} share the trailing number {n}"
        found[n] = name
    return found, ""


def _pair_by_trailing_number(cid: str, pred: tuple[str, ...], truth: tuple[str, ...]) -> dict[str, str]:
    """Ground-truth stem -> prediction stem when the stems differ but their trailing slice numbers
    match one to one (``results001`` <-> ``liver_GT_001``, as the CHAOS evaluator pairs them).

    Never by sort order: otherwise an :class:`InputError` says what differs.
    """
    p_num, why = _by_trailing_number(pred, "prediction")
    g_num, why_g = _by_trailing_number(truth, "ground-truth")
    why = why or why_g
    if not why and set(p_num) != set(g_num):
        why = (f"trailing numbers only in prediction: {sorted(set(p_num) - set(g_num))[:3]}, "
               f"only in ground truth: {sorted(set(g_num) - set(p_num))[:3]}")
    if why:
        only_p = sorted(set(pred) - set(truth), key=natural_key)[:3]
        only_g = sorted(set(truth) - set(pred), key=natural_key)[:3]
        raise InputError(
            f"Case {cid}: prediction and ground-truth slice files differ (only in prediction: {only_p}, "
            f"only in ground truth: {only_g}) and cannot be paired by trailing slice number ({why}); expected "
            "the same file stems, or stems whose trailing numbers match one to one."
        )
    return {g_num[n]: p_num[n] for n in g_num}


def evaluate(pred: Path, gt: Path, *, spacing: tuple[float, ...] | None = None, like: Path | None = None,
             csv_path: Path | None = None, surface: bool = True, missing: str = "error",
             min_region_area: int = 32) -> dict:
    """Score every matched case; optionally write one CSV row per slice to ``csv_path``.

    A case that cannot be scored (unreadable mask, shape mismatch) is listed in
    ``skipped`` with its reason and the others are still scored.
    """
    if spacing is not None and like is not None:
        raise InputError("Give either spacing or like, not both.")
    fixed, source = None, None
    if spacing is not None:
        fixed, source = check_spacing(spacing), "given"
    elif like is not None:
        fixed, source = spacing_like(like), f"like {like}"
    pairs, unmatched = _pairs(pred, gt, missing)
    if min_region_area < 1:
        raise InputError(f"min_region_area: got {min_region_area}, expected >= 1 pixel.")
    acc = MetricAccumulator(surface=surface)
    cases, sources, skipped = [], set(), []
    regions: dict[str, dict[str, np.ndarray]] = {}
    for cid, ppath, gpath in pairs:
        try:
            g = _read_truth(gpath, cid)
            if ppath is None:  # --missing empty
                p = MaskVolume(cid, np.zeros_like(g.mask), None, Path("<missing: scored as empty>"),
                               slice_names=g.slice_names)
            else:
                p = read_mask(ppath, cid)
            p, g = on_one_grid(p, g)
            pmask, warnings = _aligned(cid, p, g)
        except InputError as exc:
            skipped.append({"id": cid, "reason": str(exc)})
            continue
        case_spacing, case_source = fixed, source
        if case_spacing is None:
            for name, header in (("ground-truth header", g.spacing), ("prediction header", p.spacing)):
                if header is not None:
                    case_spacing, case_source = header, name
                    break
            else:
                case_spacing, case_source = (1.0, 1.0, 1.0), "none: distances in pixels"
        sources.add(case_source)
        acc.update(cid, pmask, g.mask, case_spacing)
        regions[cid] = region_report(pmask, g.mask, min_region_area)
        cases.append({"id": cid, "pred": str(p.source), "gt": str(g.source), "spacing_mm": list(case_spacing),
                      "warnings": warnings})
    if not cases:
        raise InputError("No case could be scored: " + "; ".join(f"{s['id']}: {s['reason']}" for s in skipped))
    scores = acc.compute()
    for case in cases:
        case.update(scores["cases"][case["id"]])
    for row in scores["slices"]:
        r = regions[row["case_id"]]
        row["gt_regions"] = int(r["gt"][row["slice"]])
        row["pred_regions"] = int(r["pred"][row["slice"]])
        row["separated"] = bool(r["separated"][row["slice"]])
    if csv_path is not None:
        write_slice_csv(scores["slices"], csv_path, protect=(Path(pred), Path(gt)))
    return json_safe({
        "spacing_source": sorted(sources)[0] if len(sources) == 1 else sorted(sources),
        "cases": cases,
        "mean": {"volume": scores["mean"]["volume"], "slices": scores["mean"]["slices"]},
        "multi_region": _multi_region(scores["slices"], min_region_area),
        "excluded": scores["excluded"],
        "unmatched": unmatched,
        "skipped": skipped,
    })


def region_report(pred: np.ndarray, gt: np.ndarray, min_area: int) -> dict[str, np.ndarray]:
    """Per slice of ``(D, H, W)`` masks: true and predicted region counts (8-connected, at least
    ``min_area`` px), and whether every true region of a slice with two or more is matched
    one-to-one by a predicted region with IoU >= 0.5."""
    def regions(mask: np.ndarray) -> tuple[np.ndarray, list[list[int]]]:
        labels, counts = label(mask, 8, per_slice=True)
        kept = []
        for i in range(mask.shape[0]):
            areas = np.bincount(labels[i].ravel(), minlength=int(counts[i]) + 1)
            kept.append([k for k in range(1, int(counts[i]) + 1) if areas[k] >= min_area])
        return labels, kept

    g_lab, g_kept = regions(np.asarray(gt, bool))
    p_lab, p_kept = regions(np.asarray(pred, bool))
    separated = np.zeros(len(g_kept), bool)
    for i, ids in enumerate(g_kept):
        if len(ids) >= 2:
            truth = np.stack([g_lab[i] == k for k in ids])
            found = np.stack([p_lab[i] == k for k in p_kept[i]]) if p_kept[i] else truth[:0]
            separated[i] = match_instances(found, truth)["matched"] == len(ids)
    return {"gt": np.array([len(k) for k in g_kept]), "pred": np.array([len(k) for k in p_kept]),
            "separated": separated}


def _multi_region(rows: list[dict], min_area: int) -> dict:
    hard = [r for r in rows if r["gt_regions"] >= 2]
    out: dict = {"min_region_area": min_area, "slices": len(hard),
                 "cases": sorted({r["case_id"] for r in hard})}
    if not hard:
        return out
    for k in SLICE_SCORES:
        out[k] = float(np.mean([r[k] for r in hard]))
    out["separated"] = float(np.mean([r["separated"] for r in hard]))
    return out


def write_slice_csv(rows: list[dict], path: Path, *, protect: tuple[Path, ...] = ()) -> Path:
    fields = ["case_id", "slice", "counted", *SLICE_SCORES, "gt_regions", "pred_regions", "separated"]
    with atomic_path(Path(path), suffix=".csv", protect=protect) as tmp, tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows({k: r[k] for k in fields} for r in rows)
    return Path(path)


def json_safe(obj):
    """inf/NaN -> None, recursively through dicts, lists and tuples (strict JSON has neither)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    return obj


_COLUMNS = (
    ("Dice", "volume", "dice", "{:.4f}"),
    ("Mask IoU", "volume", "mask_iou", "{:.4f}"),
    ("RAVD %", "volume", "ravd", "{:.2f}"),
    ("ASSD mm", "volume", "assd", "{:.2f}"),
    ("HD95 mm", "volume", "hd95", "{:.2f}"),
    ("Mask IoU (sl)", "slices", "mask_iou", "{:.4f}"),
    ("Trimap IoU (sl)", "slices", "trimap_iou", "{:.4f}"),
    ("Boundary IoU (sl)", "slices", "boundary_iou", "{:.4f}"),
    ("F-measure (sl)", "slices", "f_measure", "{:.4f}"),
    ("boundary F (sl)", "slices", "boundary_f", "{:.4f}"),
)


def _cell(value, fmt: str) -> str:
    return "inf/n.a." if value is None else fmt.format(value)


def markdown_table(result: dict) -> str:
    head = "| case | " + " | ".join(c[0] for c in _COLUMNS) + " | slices |"
    lines = [head, "|" + "---|" * (len(_COLUMNS) + 2)]
    for c in result["cases"]:
        cells = [_cell(c[group][key], fmt) for _, group, key, fmt in _COLUMNS]
        lines.append(f"| {c['id']} | " + " | ".join(cells) + f" | {c['slices']['n']} |")
    m = result["mean"]
    cells = [_cell(m[group][key], fmt) for _, group, key, fmt in _COLUMNS]
    lines.append("| **mean** | " + " | ".join(cells) + " | |")
    notes = [f"spacing: {result['spacing_source']}; (sl) = mean over slices where prediction or truth has liver; "
             "F-measure is pixel F1 (= Dice), boundary F the DAVIS contour F."]
    mr = result.get("multi_region") or {}
    if mr.get("slices"):
        notes.append(
            f"two or more liver regions (regions >= {mr['min_region_area']} px): {mr['slices']} slices; "
            f"Mask IoU {mr['mask_iou']:.4f}, Boundary IoU {mr['boundary_iou']:.4f}, "
            f"every region found separately (IoU >= 0.5) in {100 * mr['separated']:.1f} % of them.")
    elif mr:
        notes.append("no slice whose true liver has two or more separate regions.")
    for c in result["cases"]:
        notes += [f"warning, {c['id']}: {w}" for w in c.get("warnings", [])]
    if result["unmatched"]["gt"]:
        notes.append(f"ground-truth cases without a prediction, left out: {', '.join(result['unmatched']['gt'])}")
    for item in result.get("skipped", []):
        notes.append(f"skipped {item['id']}: {item['reason']}")
    for key, items in result["excluded"].items():
        notes.append(f"{key} left out of the mean for " + ", ".join(f"{e['case_id']} ({e['reason']})" for e in items))
    return "\n".join(lines + [""] + notes)


__all__ = ["VOLUME_METRICS", "evaluate", "json_safe", "markdown_table", "spacing_like", "write_slice_csv"]
