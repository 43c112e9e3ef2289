"""Readers: damaged DICOM, NIfTI, PNG/JPG, KITTI, CHAOS, LiTS/MSD and 3D-IRCADb inputs.

Batches hold a good case beside the damaged one: the good case must still be written whole and nothing
may be left of the damaged one. Audit findings are marked ``# audit (N)``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from liverrt_test_helpers import SHARED_DATA
from PIL import Image

from .builders import (
    chaos_case,
    converted_case_complete,
    ct_volume,
    dicom_series,
    edit_dicom,
    float_ct,
    grey_slices,
    infer_case_complete,
    ircad_case,
    json_file,
    kitti_case,
    mask_pngs,
    nifti_array,
    nifti_file,
    patch_nifti_header,
    png_folder,
    raw_nifti,
    truncate,
)
from .harness import Case, Scenario, params, run_case

N = 6  # DICOM slices per series


def infer_args(model, src, out, *extra):
    return ["infer", "--model", model, "--input", src, "--out", out, *extra]


def convert_args(src, out, to="nifti"):
    return ["data", "convert", src, "--out", out, "--to", to]


# ----------------------------------------------------------------------------- DICOM


def dicom_batch(damage, command: str = "convert"):
    """``in/good`` and ``in/bad`` (6 slices each, ``s000.dcm``..); ``damage(files of bad)``."""

    def build(tmp, art):
        root, out = tmp / "in", tmp / "out"
        dicom_series(root / "good", N)
        damage(dicom_series(root / "bad", N))
        if command == "inspect":  # the damaged case alone: nothing else readable
            import shutil

            shutil.rmtree(root / "good")
            return Scenario(["data", "inspect", root], inputs=[root])
        if command == "infer":
            return Scenario(infer_args(art.tiny_onnx, root, out), inputs=[root, art.tiny_onnx], outs=[out],
                            good=[infer_case_complete(out, "good", shape=(32, 32, N))], absent=[out / "bad"])
        return Scenario(convert_args(root, out), inputs=[root], outs=[out],
                        good=[converted_case_complete(out, "good", shape=(32, 32, N))], absent=[out / "bad"])

    return build


def each(edit):
    def damage(files):
        for f in files:
            edit_dicom(f, edit)

    return damage


def one(index, edit):
    def damage(files):
        edit_dicom(files[index], edit)

    return damage


def cut(index, keep):
    def damage(files):
        truncate(files[index], keep)

    return damage


def _del(name):
    return lambda ds: delattr(ds, name)


def _set(name, value):
    return lambda ds: setattr(ds, name, value)


def mixed_series(files):
    folder = files[0].parent
    for f in files[3:]:
        f.unlink()
    dicom_series(folder, 3, prefix="v", z0=100.0, description="venous")


def real_dicom_truncated(tmp, art):
    """The real GE slices of ../shared/data/dcmqi_ct3slice (copied), the middle one cut in its header."""
    src = SHARED_DATA / "dcmqi_ct3slice"
    if not src.is_dir():
        pytest.skip(f"{src} is not here")
    root, out = tmp / "in", tmp / "out"
    (root / "ge").mkdir(parents=True)
    for name in ("01.dcm", "02.dcm", "03.dcm"):
        (root / "ge" / name).write_bytes((src / name).read_bytes())
    truncate(root / "ge" / "02.dcm", 400)
    return Scenario(convert_args(root, out), inputs=[root], outs=[out], absent=[out / "ge"])


DICOM = [
    # audit (3): data convert traceback on malformed DICOM headers
    Case("dicom-no-rows-convert", dicom_batch(one(2, _del("Rows"))), 2, ("s002.dcm", "Rows"), finding=3),
    # audit (3)
    Case("dicom-no-rows-infer", dicom_batch(one(2, _del("Rows")), "infer"), 2, ("s002.dcm", "Rows"), finding=3),
    # audit (3)
    Case("dicom-no-rows-inspect", dicom_batch(one(2, _del("Rows")), "inspect"), 2, ("s002.dcm", "Rows"),
         finding=3),
    # audit (3)
    Case("dicom-ipp-two-values-convert", dicom_batch(one(2, _set("ImagePositionPatient", [0.0, 0.0]))), 2,
         ("s002.dcm", "ImagePositionPatient"), finding=3),
    # audit (3)
    Case("dicom-pixelspacing-zero-convert", dicom_batch(each(_set("PixelSpacing", [0, 0]))), 2,
         ("PixelSpacing",), finding=3),
    # audit (3)
    Case("dicom-pixelspacing-zero-infer", dicom_batch(each(_set("PixelSpacing", [0, 0])), "infer"), 2,
         ("PixelSpacing",), finding=3),
    # audit (4): a corrupt DICOM slice dropped silently
    Case("dicom-truncated-first-infer", dicom_batch(cut(0, 400), "infer"), 2, ("s000.dcm",), finding=4),
    # audit (4)
    Case("dicom-truncated-last-infer", dicom_batch(cut(N - 1, 400), "infer"), 2, ("s005.dcm",), finding=4),
    # audit (4)
    Case("dicom-truncated-middle-convert", dicom_batch(cut(3, 400)), 2, ("s003.dcm",), finding=4),
    # audit (4): cut inside the pixel data
    Case("dicom-truncated-pixels-convert", dicom_batch(cut(3, -700)), 2, ("s003.dcm",), finding=4),
    # audit (10): the message must say the pixel data is missing, not that the slices have no position
    Case("dicom-no-pixeldata-infer", dicom_batch(each(_del("PixelData")), "infer"), 2, ("PixelData",),
         forbid=("without a slice position",), finding=10),
    # audit (4): one slice without pixel data is a hole in the volume, not a file to skip quietly
    Case("dicom-one-slice-no-pixeldata-convert", dicom_batch(one(3, _del("PixelData"))), 2, ("s003.dcm",),
         finding=4),
    Case("dicom-mixed-series-convert", dicom_batch(mixed_series), 2, ("series",)),
    # audit (4): real data
    Case("dicom-real-ge-truncated-convert", real_dicom_truncated, 2, ("02.dcm",), finding=4),
]


# ----------------------------------------------------------------------------- NIfTI


def nifti_batch(make_bad, name: str):
    """``in/good.nii.gz`` + ``in/<name>.nii.gz`` made by ``make_bad(path)``; infer both."""

    def build(tmp, art):
        root, out = tmp / "in", tmp / "out"
        nifti_file(root / "good.nii.gz")
        make_bad(root / f"{name}.nii.gz")
        return Scenario(infer_args(art.tiny_onnx, root, out), inputs=[root, art.tiny_onnx], outs=[out],
                        good=[infer_case_complete(out, "good", shape=(32, 32, 4))], absent=[out / name])

    return build


def nifti_alone(make, name: str):
    """``in/<name>.nii.gz`` alone: a case that must still be segmented (exit 0), with finite output."""

    def build(tmp, art):
        root, out = tmp / "in", tmp / "out"
        make(root / f"{name}.nii.gz")

        def finite_summary(o):
            summary = json_file(out / "summary.json")
            for c in summary["cases"]:
                assert c["liver_ml"] is None or math.isfinite(c["liver_ml"]), f"liver_ml {c['liver_ml']}"

        return Scenario(infer_args(art.tiny_onnx, root, out), inputs=[root, art.tiny_onnx], outs=[out],
                        good=[infer_case_complete(out, name, shape=(32, 32, 4))], after=finite_summary)

    return build


def truncated_gz(p):
    nifti_file(p)
    truncate(p, 200)


def not_gzip(p):
    p.write_bytes(b"this is a text file, not gzip\n" * 20)


def four_d(p):
    raw_nifti(p, np.zeros((32, 32, 4, 3), np.int16))


def rgb(p):
    data = np.zeros((32, 32, 4), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    raw_nifti(p, data)


def with_values(values, where=(slice(10, 14), slice(10, 14), 1)):
    def make(p):
        data = float_ct()
        data[where] = values
        raw_nifti(p, data, np.diag([-0.8, -0.8, 2.5, 1.0]))

    return make


def all_nan(p):
    raw_nifti(p, np.full((32, 32, 4), np.nan, np.float32))


def nan_affine(p):
    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    affine[0, 3] = np.nan
    raw_nifti(p, float_ct(), affine)


def singular_affine(p):
    raw_nifti(p, float_ct(), np.diag([0.8, 0.8, 2.5, 1.0]))
    patch_nifti_header(p, qform_code=0, sform_code=1, srow_z=[0.0, 0.0, 0.0, 0.0])


def inf_values(p):
    data = float_ct()
    data[10:12, 10:12, 1] = np.inf
    data[20:22, 20:22, 2] = -np.inf
    raw_nifti(p, data, np.diag([-0.8, -0.8, 2.5, 1.0]))


NIFTI = [
    Case("nifti-truncated-gz-infer", nifti_batch(truncated_gz, "broken"), 2, ("broken.nii.gz",)),
    Case("nifti-not-gzip-infer", nifti_batch(not_gzip, "plain"), 2, ("plain.nii.gz",)),
    Case("nifti-4d-infer", nifti_batch(four_d, "fourd"), 2, ("fourd.nii.gz",)),
    Case("nifti-rgb-dtype-infer", nifti_batch(rgb, "colour"), 2, ("colour.nii.gz",)),
    # audit (6): non-finite data: segmented, with a warning naming the file
    Case("nifti-nan-voxels-infer", nifti_alone(with_values(np.nan), "nanvox"), 0, ("nanvox.nii.gz", "NaN"),
         finding=6),
    # audit (6)
    Case("nifti-all-nan-infer", nifti_batch(all_nan, "allnan"), 2, ("allnan.nii.gz",), finding=6),
    # audit (6): +-inf voxels are as damaged as NaN ones: segmented, with a warning naming the file
    Case("nifti-inf-voxels-infer", nifti_alone(inf_values, "infvox"), 0, ("infvox.nii.gz",), finding=6),
    # audit (6)
    Case("nifti-nan-affine-infer", nifti_batch(nan_affine, "nanaff"), 2, ("nanaff.nii.gz",), finding=6),
    Case("nifti-singular-affine-infer", nifti_batch(singular_affine, "flat"), 2, ("flat.nii.gz",)),
]


# ----------------------------------------------------------------------------- PNG/JPG


def png_corrupt(tmp, art):
    root, out = tmp / "in", tmp / "out"
    good = png_folder(root / "goodpng")
    png_folder(root / "badpng")
    (root / "badpng" / "slice2.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 40)
    return Scenario(infer_args(art.tiny_onnx_8bit, root, out), inputs=[root, art.tiny_onnx_8bit], outs=[out],
                    good=[infer_case_complete(out, "goodpng", png=good)], absent=[out / "badpng"])


def png_empty(tmp, art):
    (tmp / "emptyct").mkdir()
    out = tmp / "out"
    return Scenario(infer_args(art.tiny_onnx, tmp / "emptyct", out), inputs=[tmp / "emptyct"], outs=[out])


def png_mixed_shapes(tmp, art):
    root, out = tmp / "in", tmp / "out"
    png_folder(root / "goodpng")
    png_folder(root / "mixed")
    Image.fromarray(grey_slices(1, 40)[0]).save(root / "mixed" / "slice3.png")
    return Scenario(convert_args(root, out), inputs=[root], outs=[out],
                    good=[converted_case_complete(out, "goodpng", shape=(32, 32, 4))], absent=[out / "mixed"])


def png_palette(tmp, art):
    """Palette PNGs whose palette maps index i to grey 255 - i: the image is the palette's greys."""
    root, out = tmp / "in", tmp / "out"
    grey = grey_slices(4, 32)
    (root / "pal").mkdir(parents=True)
    palette = [v for i in range(256) for v in (255 - i,) * 3]
    for k in range(4):
        im = Image.frombytes("P", (32, 32), (255 - grey[k]).astype(np.uint8).tobytes())  # index = 255 - grey
        im.putpalette(palette)
        im.save(root / "pal" / f"slice{k + 1}.png")
        with Image.open(root / "pal" / f"slice{k + 1}.png") as check:
            assert check.mode == "P"

    def read_through_palette(o):
        got = nifti_array(out / "pal" / "image.nii.gz").transpose(2, 1, 0)
        assert np.array_equal(got, grey), (f"palette PNG read as its indices, not its colours "
                                           f"(mean {got.mean():.1f}, expected {grey.mean():.1f})")

    return Scenario(convert_args(root, out), inputs=[root], outs=[out], after=read_through_palette,
                    good=[converted_case_complete(out, "pal", shape=(32, 32, 4))])


def jpg_cmyk(tmp, art):
    root, out = tmp / "in", tmp / "out"
    grey = grey_slices(4, 32)
    (root / "cmyk").mkdir(parents=True)
    for k in range(4):
        Image.fromarray(grey[k]).convert("CMYK").save(root / "cmyk" / f"slice{k + 1}.jpg", quality=95)
        with Image.open(root / "cmyk" / f"slice{k + 1}.jpg") as check:
            assert check.mode == "CMYK"

    def converted(o):
        got = nifti_array(out / "cmyk" / "image.nii.gz").transpose(2, 1, 0).astype(float)
        err = float(np.abs(got - grey).mean())
        assert err < 8, f"CMYK JPEG converted to grey values {err:.1f} away from the image on average"

    return Scenario(convert_args(root, out), inputs=[root], outs=[out], after=converted,
                    good=[converted_case_complete(out, "cmyk", shape=(32, 32, 4))])


PNG = [
    Case("png-corrupt-bytes-infer", png_corrupt, 2, ("badpng", "slice2.png")),
    Case("png-empty-folder-infer", png_empty, 2, ("emptyct",)),
    Case("png-mixed-shapes-convert", png_mixed_shapes, 2, ("slice3.png",)),
    # audit (6): palette PNGs are read through their palette
    Case("png-palette-convert", png_palette, 0, finding=6),
    # audit (6): CMYK JPEGs are converted, with a warning
    Case("jpg-cmyk-convert", jpg_cmyk, 0, ("CMYK",), finding=6),
]


# ----------------------------------------------------------------------------- KITTI, CHAOS, LiTS, MSD, IRCADb


def kitti_no_label_colors(tmp, art):
    root, out = tmp / "in", tmp / "out"
    _, stems = kitti_case(root / "case1", label_colors=False)
    return Scenario(infer_args(art.tiny_onnx_8bit, root, out), inputs=[root, art.tiny_onnx_8bit], outs=[out],
                    good=[infer_case_complete(out, "case1", png=stems)])


def kitti_eval_one_case(tmp, art):
    """``eval --gt`` given ONE KITTI case folder: scored from its KITTI masks (annotated slices)."""
    vol, stems = kitti_case(tmp / "gt" / "case1")
    mask_pngs(tmp / "pred" / "case1" / "masks", vol.mask, stems)  # the truth on every slice
    out = tmp / "m.json"

    def perfect(o):
        result = json_file(out)
        assert [c["id"] for c in result["cases"]] == ["case1"], f"cases {[c['id'] for c in result['cases']]}"
        assert result["mean"]["volume"]["mask_iou"] == 1.0, f"mask IoU {result['mean']['volume']['mask_iou']}"

    return Scenario(["eval", "--pred", tmp / "pred", "--gt", tmp / "gt" / "case1", "--json", out],
                    inputs=[tmp / "gt", tmp / "pred"], outs=[out], after=perfect)


def chaos_mask_count(tmp, art):
    root, out = tmp / "in", tmp / "out"
    chaos_case(root / "c0")
    chaos_case(root / "c1", masks=N - 1)
    return Scenario(convert_args(root, out), inputs=[root], outs=[out], absent=[out / "c1"],
                    good=[converted_case_complete(out, "c0", shape=(32, 32, N), mask=True)])


def chaos_pairing(tmp, art):
    """CHAOS submissions: ``results001.png..`` against ``Ground/liver_GT_001.png..``, paired by number."""
    masks = ct_volume(shape=(N, 32, 32)).mask
    mask_pngs(tmp / "chaos" / "1" / "Ground", masks, [f"liver_GT_{k + 1:03d}" for k in range(N)])
    mask_pngs(tmp / "results" / "1", masks, [f"results{k + 1:03d}" for k in range(N)])
    out = tmp / "m.json"

    def paired(o):
        result = json_file(out)
        assert result["mean"]["volume"]["mask_iou"] == 1.0, f"mask IoU {result['mean']['volume']['mask_iou']}"
        text = " ".join(o.output.split()).lower()
        assert "pair" in text or "slice number" in text, "no note that slices were paired by number"

    return Scenario(["eval", "--pred", tmp / "results" / "1", "--gt", tmp / "chaos" / "1" / "Ground",
                     "--json", out], inputs=[tmp / "chaos", tmp / "results"], outs=[out], after=paired)


def lits_shape(tmp, art):
    root, out = tmp / "lits", tmp / "out"
    nifti_file(root / "volume-0.nii.gz")
    nifti_file(root / "segmentation-0.nii.gz", shape=(5, 32, 32))
    nifti_file(root / "volume-1.nii.gz", with_mask=root / "segmentation-1.nii.gz")
    return Scenario(convert_args(root, out), inputs=[root], outs=[out], absent=[out / "volume-0"],
                    good=[converted_case_complete(out, "volume-1", shape=(32, 32, 4), mask=True)])


def msd_shape(tmp, art):
    root, out = tmp / "Task03_Liver", tmp / "out"
    nifti_file(root / "imagesTr" / "liver_0.nii.gz")
    nifti_file(root / "labelsTr" / "liver_0.nii.gz", shape=(4, 32, 40))
    nifti_file(root / "imagesTr" / "liver_1.nii.gz", with_mask=root / "labelsTr" / "liver_1.nii.gz")
    return Scenario(convert_args(root, out), inputs=[root], outs=[out], absent=[out / "liver_0"],
                    good=[converted_case_complete(out, "liver_1", shape=(32, 32, 4), mask=True)])


def ircad_geometry(tmp, art):
    root, out = tmp / "in", tmp / "out"
    ircad_case(root / "p0", mask_slices=N)
    ircad_case(root / "p1", mask_slices=N - 1)
    return Scenario(convert_args(root, out), inputs=[root], outs=[out], absent=[out / "p1"],
                    good=[converted_case_complete(out, "p0", shape=(32, 32, N), mask=True)])


LAYOUTS = [
    # audit (9): a KITTI case without label_colors.txt is still segmented
    Case("kitti-no-label-colors-infer", kitti_no_label_colors, 0, finding=9),
    # audit (9): eval --gt given one KITTI case scores it from its KITTI masks
    Case("kitti-eval-gt-one-case", kitti_eval_one_case, 0, finding=9),
    Case("chaos-mask-count-convert", chaos_mask_count, 2, ("Ground",)),
    # audit (11): CHAOS results NNN against liver_GT_NNN, paired by slice number
    Case("chaos-results-vs-liver-gt-eval", chaos_pairing, 0, finding=11),
    Case("lits-mask-shape-convert", lits_shape, 2, ("segmentation-0",)),
    Case("msd-mask-shape-convert", msd_shape, 2, ("liver_0",)),
    Case("ircad-mask-geometry-convert", ircad_geometry, 2, ("MASKS_DICOM",)),
]


@pytest.mark.parametrize("case", params(*DICOM, *NIFTI, *PNG, *LAYOUTS))
def test_reader(case, tmp_path, art):
    run_case(case, tmp_path, art)
