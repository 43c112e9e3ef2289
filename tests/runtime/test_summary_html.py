"""``OUT/summary.html`` (issue 18, item 7) and the incomplete-organ flag for cases without slice geometry (item 1)."""

import base64
import io
import json
from html.parser import HTMLParser

import numpy as np
import pytest
from click.testing import CliRunner
from liverrt_test_helpers import make_volume
from PIL import Image

from liverrt.data.io import read_nifti, write_nifti, write_png_slices
from liverrt.data.volume import Volume, default_affine
from liverrt.errors import InputError
from liverrt.runtime.infer import run_inference
from liverrt.runtime.outputs import case_summary
from liverrt.runtime.segmenter import Segmentation
from liverrt.runtime.summary_html import case_views, thumb_px
from liverrt.viz import BOTH_COLOUR, pick_slices

EVIL_ID = 'a<script>alert("x")<script>&b'  # a legal file name (no "/"), so a legal case id
VOID = {"meta", "img", "br", "hr", "link", "input", "source", "wbr"}


class Page(HTMLParser):
    """What a test needs from the page: tag balance, images, links, table rows and the text."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.tags: set[str] = set()
        self.images: list[dict] = []
        self.links: list[str] = []
        self.rows: list[list[str]] = []
        self.text: list[str] = []
        self._row: list[str] | None = None
        self._cell: list[str] | None = None
        self._section: str | None = None
        self.sections: dict[str, list[dict]] = {}
        self.feed(text)
        self.close()
        if self.stack:
            self.errors.append(f"unclosed {self.stack}")

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.add(tag)
        if tag not in VOID:
            self.stack.append(tag)
        if tag == "img":
            self.images.append(a)
            self.sections.setdefault(self._section, []).append(a)
        if "href" in a:
            self.links.append(a["href"])
        if tag == "section":
            self._section = a.get("id")
        if tag == "tr":
            self._row = []
        if tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
        else:
            self.stack.pop()
        if tag in ("td", "th") and self._row is not None:
            self._row.append("".join(self._cell or []).strip())
            self._cell = None
        if tag == "tr":
            self.rows.append(self._row or [])
            self._row = None

    def handle_data(self, data):
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)

    def table(self, first_header: str) -> list[dict]:
        """The rows of the table whose header row starts with ``first_header``, as header -> cell."""
        start = next(i for i, r in enumerate(self.rows) if r and r[0] == first_header and "Reason" not in r)
        header, out = self.rows[start], []
        for r in self.rows[start + 1:]:
            if len(r) != len(header) or r == header:
                break
            out.append(dict(zip(header, r, strict=True)))
        return out


def _png(src: str) -> Image.Image:
    prefix = "data:image/png;base64,"
    assert src.startswith(prefix)
    data = base64.b64decode(src[len(prefix):], validate=True)
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


@pytest.fixture(scope="module")
def run(tiny_onnx, tmp_path_factory):
    """Three HU cases (one with an id full of markup) and a broken one."""
    tmp = tmp_path_factory.mktemp("page")
    src = tmp / "in"
    for cid, shape in (("good", (6, 48, 40)), ("tall", (10, 48, 40)), (EVIL_ID, (6, 48, 40))):
        v = make_volume(shape=shape, case_id=cid, seed=len(cid))
        write_nifti(v.image, v.affine, src / f"{cid}.nii.gz")
    (src / "broken.nii.gz").write_bytes(b"garbage")
    report = run_inference(tiny_onnx, src, tmp / "out", overlays=2)
    text = (tmp / "out" / "summary.html").read_text(encoding="utf-8")
    return report, tmp / "out", text, Page(text)


def test_the_page_is_written_next_to_summary_json_and_is_well_formed(run):
    _, out, text, page = run
    assert (out / "summary.json").is_file()
    assert text.startswith("<!DOCTYPE html>")
    assert page.errors == []
    # offline: no script, no external resource, no link off the page but summary.json
    assert not page.tags & {"script", "link", "iframe", "object", "embed"}
    assert all(img["src"].startswith("data:image/png;base64,") for img in page.images)
    assert all(h.startswith("#case-") or h == "summary.json" for h in page.links), page.links
    assert "http" not in text


def test_the_page_names_every_case_with_the_volumes_of_summary_json(run):
    report, out, _, page = run
    summary = json.loads((out / "summary.json").read_text())
    rows = page.table("Case")
    assert [r["Case"] for r in rows] == [c["id"] for c in summary["cases"]] == [c["id"] for c in report.cases]
    assert sorted(r["Case"] for r in rows) == sorted(["good", "tall", EVIL_ID])
    for row, case in zip(rows, summary["cases"], strict=True):
        assert float(row["Liver (mL)"]) == case["liver_ml"]
        assert int(row["Slices with liver"]) == case["slices_with_liver"]
        assert row["Shape (D×H×W)"] == " × ".join(map(str, case["shape"]))
        assert float(row["engine (s)"]) == case["timings_s"]["engine"]
        assert row["Liver at first/last slice"] in ("no", "yes: incomplete, its mL a lower bound")


def test_one_png_per_picked_slice_and_a_coronal_view_for_volumes(run):
    report, out, _, page = run
    for n, case in enumerate(report.cases, 1):
        mask, _, _ = read_nifti(out / case["id"] / "mask.nii.gz")
        images = page.sections[f"case-{n}"]
        axial = [img for img in images if img["class"] == "axial"]
        assert [int(img["data-slice"]) for img in axial] == pick_slices(mask > 0, 5)
        (coronal,) = [img for img in images if img["class"] == "coronal"]
        for img in images:
            png = _png(img["src"])
            assert png.size == (int(img["width"]), int(img["height"]))
        # D slices of 2.5 mm over 40 columns of 0.8 mm: in true proportions
        assert (int(coronal["width"]), int(coronal["height"])) == (40, round(case["shape"][0] * 2.5 / 0.8))


def test_user_strings_are_escaped(run):
    _, _, text, page = run
    assert "<script" not in text and "script" not in page.tags
    assert EVIL_ID in "".join(page.text)  # shown as text
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;script&gt;&amp;b" in text


def test_skipped_cases_are_listed_with_their_reason(run):
    report, _, _, page = run
    (skipped,) = report.skipped
    row = next(r for r in page.rows if r and r[0] == "broken")
    assert row[-1] == skipped["reason"] and row[2] == "input"
    assert "3 segmented, 1 skipped" in "".join(page.text)


def test_a_page_for_three_512_cases_stays_small(tiny_onnx, tmp_path):
    """Embedded thumbnails, not the full-size overlays: a few tens of KB per case (noisy CT compresses worst)."""
    for cid in ("a", "b", "c"):
        v = make_volume(shape=(12, 512, 512), case_id=cid, spacing=(2.5, 0.7, 0.7))
        write_nifti(v.image, v.affine, tmp_path / "in" / f"{cid}.nii.gz")
    run_inference(tiny_onnx, tmp_path / "in", tmp_path / "out", overlays=0)
    size = (tmp_path / "out" / "summary.html").stat().st_size
    page = Page((tmp_path / "out" / "summary.html").read_text())
    assert len(page.images) == 3 * 5 and page.errors == []  # 12 slices of 2.5 mm: too thin for a coronal view
    assert max(_png(img["src"]).size[0] for img in page.images) == 160
    assert size < 400_000, size  # < 2 MB with a wide margin; measured 158 KB


def test_thumbnails_keep_their_contours_through_the_palette():
    """Contours are drawn after resizing and survive the 64-colour palette: prediction == truth shows yellow."""
    vol = make_volume(shape=(40, 400, 320))  # 100 mm tall for 256 mm wide: a coronal view too
    views = case_views(vol, Segmentation("vol", vol.mask))
    for p in (*views.axial, views.coronal):
        rgb = np.asarray(Image.open(io.BytesIO(p.png)).convert("RGB")).astype(int)
        assert max(p.width, p.height) <= 160
        assert (np.abs(rgb - BOTH_COLOUR).max(axis=2) <= 16).sum() >= 20, p.caption
    assert [p.slice_index for p in views.axial] == pick_slices(vol.mask, 5)


def test_large_runs_get_smaller_thumbnails():
    sizes = [thumb_px(n) for n in range(1, 200)]
    assert sizes[:20] == [160] * 20 and thumb_px(40) == 113 and thumb_px(1000) == 96
    assert sizes == sorted(sizes, reverse=True)


def test_no_page_without_a_segmented_case(tiny_onnx, tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "broken.nii.gz").write_bytes(b"garbage")
    report = run_inference(tiny_onnx, tmp_path / "in", tmp_path / "out")
    assert report.skipped and not (tmp_path / "out" / "summary.json").exists()
    assert not (tmp_path / "out" / "summary.html").exists()


def test_a_summary_html_liverrt_did_not_write_is_never_replaced(tiny_onnx, tmp_path):
    v = make_volume(case_id="v")
    write_nifti(v.image, v.affine, tmp_path / "in" / "v.nii.gz")
    out = tmp_path / "out"
    out.mkdir()
    (out / "summary.html").write_text("my notes")
    with pytest.raises(InputError, match=r"Refusing to replace .*summary\.html: liverrt did not write it"):
        run_inference(tiny_onnx, tmp_path / "in", out)
    assert (out / "summary.html").read_text() == "my notes" and not (out / "v").exists()  # refused before any work
    run_inference(tiny_onnx, tmp_path / "in", out, overwrite=True)
    assert "liverrt infer" in (out / "summary.html").read_text()
    run_inference(tiny_onnx, tmp_path / "in", out)  # its own page is replaced by the next run
    (out / "summary.html").write_text("edited")
    with pytest.raises(InputError, match="changed after liverrt wrote it"):
        run_inference(tiny_onnx, tmp_path / "in", out)


def test_a_case_named_like_a_summary_file_is_refused(tiny_onnx, tmp_path):
    v = make_volume(case_id="x")
    write_nifti(v.image, v.affine, tmp_path / "in" / "summary.html.nii.gz")
    with pytest.raises(InputError, match="summary file"):
        run_inference(tiny_onnx, tmp_path / "in", tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- the incomplete-organ flag


def _slices_8bit(d=4, h=32, w=32) -> Volume:
    image = np.random.default_rng(0).integers(0, 255, (d, h, w), dtype=np.uint8)
    return Volume(image=image, spacing=(1.0, 1.0, 1.0), affine=default_affine((1.0, 1.0, 1.0)), intensity="8bit",
                  case_id="pngs")


def _liver_on(shape, slices) -> np.ndarray:
    mask = np.zeros(shape, bool)
    for k in slices:
        mask[k, 10:20, 10:20] = True
    return mask


def test_the_incomplete_flag_needs_slice_geometry():
    pngs, hu = _slices_8bit(), make_volume(shape=(4, 32, 32))
    assert case_summary(pngs, Segmentation("pngs", _liver_on(pngs.shape, [0])))["touches_first_or_last_slice"] is None
    assert case_summary(hu, Segmentation("vol", _liver_on(hu.shape, [0])))["touches_first_or_last_slice"] is True
    assert case_summary(hu, Segmentation("vol", _liver_on(hu.shape, [3])))["touches_first_or_last_slice"] is True
    assert case_summary(hu, Segmentation("vol", _liver_on(hu.shape, [1, 2])))["touches_first_or_last_slice"] is False
    assert case_summary(hu, Segmentation("vol", np.zeros(hu.shape, bool)))["touches_first_or_last_slice"] is False


def test_infer_warns_of_an_incomplete_liver_only_for_volumes(tiny_onnx, tmp_path, monkeypatch):
    """The finding: a folder of 8-bit slices with liver on its first slice was told 'incomplete'."""
    from liverrt.cli import cli
    from liverrt.runtime import segmenter as seg_mod

    pngs, hu = _slices_8bit(), make_volume(shape=(4, 32, 32), case_id="hu")
    write_png_slices(pngs.image, tmp_path / "in" / "pngs", ("s0", "s1", "s2", "s3"))
    write_nifti(hu.image, hu.affine, tmp_path / "in" / "hu.nii.gz")

    def liver_on_slice_0(self, volume, on_batch=None):
        return Segmentation(volume.case_id, _liver_on(volume.shape, [0]), timings={"engine": 0.0})

    monkeypatch.setattr(seg_mod.Segmenter, "segment", liver_on_slice_0)
    r = CliRunner().invoke(cli, ["infer", "--model", str(tiny_onnx), "--input", str(tmp_path / "in"),
                                 "--out", str(tmp_path / "out")])
    assert r.exit_code == 0, r.output
    lines = {line.split(":")[0].strip(): line for line in r.output.splitlines() if line.startswith("  ")}
    assert set(lines) == {"hu", "pngs"}, r.output
    assert "first/last slice" in lines["hu"] and "first/last slice" not in lines["pngs"]  # (the console wraps)
    assert r.output.count("incomplete") == 1
    flags = {c["id"]: c["touches_first_or_last_slice"]
             for c in json.loads((tmp_path / "out" / "summary.json").read_text())["cases"]}
    assert flags == {"hu": True, "pngs": None}
    rows = {r["Case"]: r for r in Page((tmp_path / "out" / "summary.html").read_text()).table("Case")}
    assert rows["pngs"]["Liver at first/last slice"] == "n/a (no slice geometry)"
    assert rows["pngs"]["Liver (mL)"] == "n/a" and rows["hu"]["Liver at first/last slice"].startswith("yes")
