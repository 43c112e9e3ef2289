"""``OUT/summary.html``: one static page per ``liverrt infer`` run, next to ``summary.json``.

The page opens from disk in any browser, offline: inline CSS, no script, no network. It shows
the run (model, engine, cases, time), a table of the cases (the numbers of ``summary.json``),
the skipped cases with their reasons, and per case a strip of axial slices through the liver
with the predicted contour (plus a coronal plane for volumes with slice geometry).

The pictures are embedded as ``data:image/png;base64`` URIs, not linked to the case folders'
``overlays/*.png``: the page is what gets attached to a ticket or mailed to a colleague, so it
must survive being copied alone, and it must not depend on ``--overlays`` (0 writes none) or on
the case folders staying where they are. The cost is kept small by drawing the pictures as
thumbnails (:data:`THUMB_PX` pixels at most, contours drawn after resizing, 64-colour
palette): about 10 KB per 512² CT slice, 70-80 KB of page per case (measured: 200 KB for three
real CT volumes, LiTS 0, IRCADb 1.1 and TotalSegmentator's example). Runs of more than :data:`FULL_SIZE_CASES` cases
get smaller thumbnails (:func:`thumb_px`): a page stays under about 2 MB up to some 60 cases
and grows by about 30 KB per case beyond.

Every string that comes from the user's files (case ids, paths, slice names, skip reasons, the
model path) is escaped with :func:`html.escape`.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from liverrt import __version__
from liverrt.data.volume import Volume
from liverrt.runtime.outputs import grey01
from liverrt.runtime.segmenter import Segmentation
from liverrt.viz import BOTH_COLOUR, PRED_COLOUR, TRUE_COLOUR, pick_slices, png_bytes, thumbnail

#: axial slices shown per case, spread over the slices with liver (:func:`liverrt.viz.pick_slices`)
SLICES = 5
#: longest side of a picture, in pixels
THUMB_PX = 160
#: runs of up to this many cases get full-size thumbnails; larger ones, smaller (down to MIN_THUMB_PX)
FULL_SIZE_CASES = 20
MIN_THUMB_PX = 96
#: palette size of the embedded PNGs
COLOURS = 64
#: a coronal plane is drawn for volumes with geometry at least this tall (in mm) for their width: a few
#: slices would make a sliver
MIN_CORONAL_ASPECT = 0.25


@dataclass(frozen=True)
class Picture:
    """One embedded image: its PNG bytes, pixel size, caption, and its axial slice index (None: coronal)."""

    png: bytes
    width: int
    height: int
    caption: str
    slice_index: int | None = None


@dataclass(frozen=True)
class CaseViews:
    """A case's pictures, drawn while its volume is in memory and rendered into the page at the end."""

    axial: tuple[Picture, ...]
    coronal: Picture | None = None


def thumb_px(n_cases: int) -> int:
    """The thumbnail size for a run of ``n_cases``: :data:`THUMB_PX`, shrunk (by area) for large runs."""
    if n_cases <= FULL_SIZE_CASES:
        return THUMB_PX
    return max(MIN_THUMB_PX, round(THUMB_PX * (FULL_SIZE_CASES / n_cases) ** 0.5))


def _picture(rgb: np.ndarray, caption: str, slice_index: int | None = None) -> Picture:
    return Picture(png_bytes(rgb, colours=COLOURS), rgb.shape[1], rgb.shape[0], caption, slice_index)


def case_views(volume: Volume, seg: Segmentation, *, slices: int = SLICES, size: int = THUMB_PX) -> CaseViews:
    """Thumbnails of ``volume`` with ``seg.mask`` (red) and the source's own mask, if any (green)."""
    gt = volume.mask
    dz, dy, dx = volume.spacing
    geometry = volume.has_geometry
    axial = tuple(
        _picture(thumbnail(grey01(volume.image[i], volume.intensity), seg.mask[i], None if gt is None else gt[i],
                           size=size, row_scale=dy / dx if geometry else 1.0),
                 f"slice {i}" + (f": {volume.slice_names[i]}" if volume.slice_names else ""), i)
        for i in pick_slices(seg.mask, slices)
    )
    coronal = None
    if geometry and volume.shape[0] * dz >= MIN_CORONAL_ASPECT * volume.shape[2] * dx:
        # the row (front-to-back position) with the most liver; slices run to superior, so flip them to put it on top
        row = int(np.argmax(seg.mask.sum(axis=(0, 2)))) if seg.mask.any() else volume.shape[1] // 2
        plane = np.s_[::-1, row, :]
        rgb = thumbnail(grey01(volume.image[plane], volume.intensity), seg.mask[plane],
                        None if gt is None else gt[plane], size=size, row_scale=dz / dx)
        coronal = _picture(rgb, f"coronal, row {row}")
    return CaseViews(axial, coronal)


# ----------------------------------------------------------------------------- the page

_CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.6em; } h3 { font-size: 1em; margin: 1.2em 0 .3em; }
dl.run { display: grid; grid-template-columns: max-content auto; gap: .2em 1em; }
dl.run dt { font-weight: 600; } dl.run dd { margin: 0; word-break: break-all; }
table { border-collapse: collapse; } th, td { border: 1px solid #ccc; padding: .25em .5em; text-align: left; }
th { background: #f2f2f2; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.warn { color: #a15c00; font-weight: 600; }
.strip { display: flex; flex-wrap: wrap; gap: .5em; align-items: flex-end; }
figure { margin: 0; } figcaption { font-size: .8em; color: #555; max-width: 160px; word-break: break-all; }
img { display: block; background: #000; }
.legend span { display: inline-block; width: .9em; height: .9em; vertical-align: middle; margin: 0 .3em 0 .8em; }
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _seconds(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"  # as summary.json rounds them


def _flag(touches: bool | None) -> str:
    if touches is None:
        return "n/a (no slice geometry)"
    return '<span class="warn">yes: incomplete, its mL a lower bound</span>' if touches else "no"


def _stages(cases: list[dict]) -> list[str]:
    """Every timing stage of the run, in the order the cases first report them."""
    return list(dict.fromkeys(stage for c in cases for stage in c.get("timings_s", {})))


def _case_table(cases: list[dict]) -> str:
    stages = _stages(cases)
    head = ["Case", "Shape (D×H×W)", "Spacing (mm)", "Slices with liver", "Liver (mL)",
            *(f"{s} (s)" for s in stages), "Total (s)", "Liver at first/last slice"]
    rows = []
    for n, c in enumerate(cases, 1):
        t = c.get("timings_s", {})
        spacing = " × ".join(f"{s:.4g}" for s in c["spacing_mm"]) if c.get("spacing_mm") else "no geometry"
        ml = "n/a" if c.get("liver_ml") is None else f"{c['liver_ml']:.2f}"
        cells = [f'<td><a href="#case-{n}" title="{_e(c.get("source", ""))}">{_e(c["id"])}</a></td>',
                 f"<td>{_e(' × '.join(map(str, c['shape'])))}</td>", f"<td>{_e(spacing)}</td>",
                 f'<td class="num">{c["slices_with_liver"]}</td>', f'<td class="num">{ml}</td>',
                 *(f'<td class="num">{_seconds(t.get(s))}</td>' for s in stages),
                 f'<td class="num">{_seconds(sum(t.values()))}</td>',
                 f"<td>{_flag(c.get('touches_first_or_last_slice'))}</td>"]
        rows.append("<tr>" + "".join(cells) + "</tr>")
    header = "<tr>" + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr>"
    return f"<table>\n<thead>{header}</thead>\n<tbody>\n" + "\n".join(rows) + "\n</tbody>\n</table>"


def _skipped_table(skipped: list[dict]) -> str:
    if not skipped:
        return "<p>None.</p>"
    rows = [f"<tr><td>{_e(s['id'])}</td><td>{_e(s.get('source', ''))}</td><td>{_e(s.get('kind', ''))}</td>"
            f"<td>{_e(s['reason'])}</td></tr>" for s in skipped]
    return ("<table>\n<thead><tr><th>Case</th><th>Source</th><th>Kind</th><th>Reason</th></tr></thead>\n<tbody>\n"
            + "\n".join(rows) + "\n</tbody>\n</table>")


def _figure(p: Picture, case_id: str) -> str:
    uri = "data:image/png;base64," + base64.b64encode(p.png).decode("ascii")
    kind = "coronal" if p.slice_index is None else "axial"
    index = "" if p.slice_index is None else f' data-slice="{p.slice_index}"'
    return (f'<figure><img class="{kind}"{index} src="{uri}" width="{p.width}" height="{p.height}" '
            f'alt="{_e(case_id)}: {_e(p.caption)}"><figcaption>{_e(p.caption)}</figcaption></figure>')


def _strips(cases: list[dict], views: Mapping[str, CaseViews]) -> str:
    parts = []
    for n, c in enumerate(cases, 1):
        v = views.get(c["id"])
        pictures = () if v is None else (*v.axial, v.coronal) if v.coronal else v.axial
        body = "".join(_figure(p, c["id"]) for p in pictures) or "<p>No pictures.</p>"
        touches = c.get("touches_first_or_last_slice")
        note = ' <span class="warn">(liver touches the first/last slice)</span>' if touches else ""
        parts.append(f'<section id="case-{n}"><h3>{_e(c["id"])}{note}</h3>\n<div class="strip">{body}</div></section>')
    return "\n".join(parts)


def render_page(summary: Mapping, views: Mapping[str, CaseViews]) -> str:
    """The page for ``summary`` (``InferReport.to_dict()``, what ``summary.json`` holds) and each case's views."""
    cases, skipped = list(summary["cases"]), list(summary["skipped"])
    counts = f"{len(cases)} segmented" + (f", {len(skipped)} skipped" if skipped else "")
    legend = '<p class="legend">Contours:' + "".join(
        f'<span style="background:#{r:02x}{g:02x}{b:02x}"></span>{what}'
        for (r, g, b), what in ((PRED_COLOUR, "prediction"), (TRUE_COLOUR, "the source's own mask"),
                                (BOTH_COLOUR, "both"))) + "</p>"
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>liverrt infer: {_e(counts)}</title>
<style>{_CSS}</style>
</head>
<body>
<h1>liverrt infer</h1>
<dl class="run">
<dt>Model</dt><dd>{_e(summary.get("model", ""))}</dd>
<dt>Engine</dt><dd>{_e(summary.get("engine", ""))}</dd>
<dt>Cases</dt><dd>{_e(counts)}</dd>
<dt>Total time</dt><dd>{float(summary.get("seconds", 0.0)):.1f} s</dd>
</dl>
<h2>Cases</h2>
{_case_table(cases)}
<h2>Skipped</h2>
{_skipped_table(skipped)}
<h2>Overlays</h2>
{legend}
{_strips(cases, views)}
<p><small>Written by liverrt {_e(__version__)}; the same numbers are in <a href="summary.json">summary.json</a>.
</small></p>
</body>
</html>
"""
