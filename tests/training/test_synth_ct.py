"""CT synthesised from label maps: the expert liver kept, intensities drawn per phase, organs placed only
where the map says "body", reproducible per seed, and the command's bad-input promises."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from click.testing import CliRunner

from liverrt.cli import cli
from liverrt.data.io import read_nifti, write_nifti
from liverrt.data.sources import load_cases
from liverrt.data.volume import default_affine
from liverrt.errors import InputError
from liverrt.training import synth_ct
from liverrt.training.synth_ct import PHASES, LabelMap, SynthConfig, synth_from_labels, synth_sample

SPACING = (2.0, 3.5, 3.5)  # 96 px: a 336 mm field of view, an adult abdomen
QUIET = SynthConfig(size=48, photons=(1e12, 1e12), psf_px=(0.0, 0.0), thickness_mm=(2.0, 2.0), lesion_p=0.0,
                    hard_p=0.0)


def _label_map(d: int = 10, n: int = 96, *, organs: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """A small abdomen: body ellipse, a vertebra (ring, posterior), the liver on the image left with a
    portal vein and a lesion; optionally a labelled spleen (so that it is not placed)."""
    yy, xx = np.mgrid[:n, :n]
    body = ((yy - n / 2) / (0.42 * n)) ** 2 + ((xx - n / 2) / (0.46 * n)) ** 2 <= 1
    vertebra = (np.hypot(yy - 0.72 * n, xx - n / 2) <= 0.09 * n) & (np.hypot(yy - 0.72 * n, xx - n / 2) >= 0.05 * n)
    liver = ((yy - 0.45 * n) / (0.2 * n)) ** 2 + ((xx - 0.32 * n) / (0.18 * n)) ** 2 <= 1
    labels = np.zeros((d, n, n), np.uint8)
    labels[:] = np.where(body, 1, 0)
    labels[:, vertebra] = 2
    liver3 = np.zeros((d, n, n), bool)
    liver3[2:d - 2] = liver  # liver-free slices at both ends
    labels[liver3] = 11
    labels[2:d - 2][:, np.hypot(yy - 0.45 * n, xx - 0.32 * n) <= 0.03 * n] = 12
    labels[4:6][:, np.hypot(yy - 0.4 * n, xx - 0.25 * n) <= 0.04 * n] = 15
    if organs:
        spleen = ((yy - 0.55 * n) / (0.1 * n)) ** 2 + ((xx - 0.78 * n) / (0.06 * n)) ** 2 <= 1
        labels[3:7][:, spleen & body] = 5
    return labels, liver3


def _write_map(folder, labels, liver):
    folder.mkdir(parents=True)
    write_nifti(labels, default_affine(SPACING), folder / "labels.nii.gz")
    write_nifti(liver.astype(np.uint8), default_affine(SPACING), folder / "liver.nii.gz")
    return folder


@pytest.fixture
def maps(tmp_path):
    root = tmp_path / "maps"
    for i, organs in enumerate((False, True)):
        _write_map(root / f"map{i}", *_label_map(organs=organs))
    return root


def test_the_liver_mask_is_the_maps_expert_liver(maps):
    lm = LabelMap.read(maps / "map0")
    volume, _ = synth_sample(lm, 1, replace(QUIET, size=96))
    assert volume.image.dtype == np.int16 and volume.image.shape == lm.labels.shape
    assert np.array_equal(volume.mask, lm.liver)
    assert volume.spacing == pytest.approx(SPACING)
    small, _ = synth_sample(lm, 1, QUIET)  # averaged down 2x: the liver is the voxels at least half liver
    assert small.mask.shape == (10, 48, 48) and small.spacing == pytest.approx((2.0, 7.0, 7.0))
    expected = lm.liver.reshape(10, 48, 2, 48, 2).mean(axis=(2, 4)) >= 0.5
    assert np.array_equal(small.mask, expected)


def test_tissue_means_come_from_the_drawn_phase(maps):
    lm = LabelMap.read(maps / "map0")
    for seed in range(6):
        volume, drawn = synth_sample(lm, seed, replace(QUIET, size=96))
        liver_hu = volume.image[lm.labels == 11].mean()
        lo, hi = PHASES[drawn["phase"]]["liver"]
        assert lo - 25 <= liver_hu <= hi + 25, (drawn["phase"], liver_hu)  # texture and bias: within a margin
        assert abs(liver_hu - drawn["means"]["liver"]) < 20
        assert volume.image[lm.labels == 0].mean() < -900  # air stays air
        assert volume.image[lm.labels == 2].mean() > 250  # bone stays bright


def test_the_hard_case_puts_the_liver_next_to_a_neighbours_hu(maps):
    lm = LabelMap.read(maps / "map0")
    hard = replace(QUIET, hard_p=1.0, size=96)
    for seed in range(4):
        _, drawn = synth_sample(lm, seed, hard)
        neighbour = drawn["hard"]
        assert neighbour in synth_ct.HARD_NEIGHBOURS
        assert abs(drawn["means"]["liver"] - drawn["means"][neighbour]) <= 12.0 + 1e-9


@pytest.fixture
def seen(monkeypatch):
    """``seen["tissue"]``: the tissue map of the last sample synthesised (what ``_intensities`` was given)."""
    seen = {}
    real_intensities = synth_ct._intensities

    def keep(tissue, *args):
        seen["tissue"] = tissue.copy()
        return real_intensities(tissue, *args)

    monkeypatch.setattr(synth_ct, "_intensities", keep)
    return seen


def test_missing_organs_are_placed_over_body_voxels_only(maps, seen):
    for name, expect_spleen_placed in (("map0", True), ("map1", False)):
        lm = LabelMap.read(maps / name)
        _, drawn = synth_sample(lm, 3, replace(QUIET, missing_organ_p=1.0, size=96))
        tissue = seen["tissue"]
        assert ("spleen" in drawn["placed"]) is expect_spleen_placed
        kept = lm.labels != 1  # every labelled voxel (and air) keeps its label
        assert np.array_equal(tissue[kept], lm.labels[kept])
        if expect_spleen_placed:
            placed = tissue == synth_ct._ID["spleen"]
            assert placed.any() and (lm.labels[placed] == 1).all()
            assert placed.nonzero()[2].mean() > 48  # patient's left: the image right


def _chest_map(lung: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """A taller map (36 slices of 2 mm): the liver a dome in slices 2-16, with 19 liver-free slices of
    "body" above it (or lung at the back, ``lung``: a map that labels it)."""
    labels, _ = _label_map(d=36)
    n = labels.shape[1]
    zz, yy, xx = np.mgrid[:36, :n, :n]
    r = np.sqrt(((yy - 0.45 * n) / (0.2 * n)) ** 2 + ((xx - 0.32 * n) / (0.18 * n)) ** 2)
    liver = (zz >= 2) & (r <= 1) & (zz <= 2 + 14 * np.sqrt(np.clip(1 - r ** 2, 0, 1)))  # highest in the middle
    labels[(labels == 11) | (labels == 12) | (labels == 15)] = 1
    labels[liver] = 11
    if lung:
        labels[(zz > 20) & (labels == 1) & (yy > 0.5 * n) & (np.abs(xx - n / 2) > 0.15 * n)] = 3
    return labels, liver


def test_the_thorax_puts_lung_and_heart_above_the_liver_dome(tmp_path, seen):
    labels, liver = _chest_map()
    lm = LabelMap.read(_write_map(tmp_path / "chest", labels, liver))
    n = labels.shape[1]
    dome = 16 * SPACING[0]  # mm
    for seed in range(3):
        volume, drawn = synth_sample(lm, seed, replace(QUIET, size=96, thorax_p=1.0))
        tissue = seen["tissue"]
        assert {"lung", "heart"} <= set(drawn["placed"]), drawn["placed"]
        kept = labels != 1
        assert np.array_equal(tissue[kept], labels[kept])  # the expert's labels stay
        lung, heart = tissue == synth_ct._ID["lung"], tissue == synth_ct._ID["heart"]
        for organ in (lung, heart):
            z = organ.nonzero()[0] * SPACING[0]
            assert (labels[organ] == 1).all() and z.min() > dome - 90 and z.mean() > dome - 10
        _, hy, hx = heart.nonzero()
        assert hx.mean() > n / 2 and hy.mean() < n / 2  # the patient's left (image right), in front
        lo, hi = PHASES[drawn["phase"]]["heart"]
        assert lo - 25 <= volume.image[heart].mean() <= hi + 25
        assert volume.image[lung].mean() < -700
        spleen = tissue == synth_ct._ID["spleen"]  # organs placed after the thorax stay below it
        assert not (spleen & (lung | heart)).any()
    _, drawn = synth_sample(lm, 0, replace(QUIET, size=96))
    assert not {"lung", "heart"} & set(drawn["placed"]) and "heart" not in drawn["means"]  # thorax_p 0: none
    labels, liver = _chest_map(lung=True)
    lm = LabelMap.read(_write_map(tmp_path / "with_lung", labels, liver))
    _, drawn = synth_sample(lm, 1, replace(QUIET, size=96, thorax_p=1.0))
    assert "lung" not in drawn["placed"] and "heart" in drawn["placed"]  # its own lungs, no others added
    tissue = seen["tissue"]
    assert np.array_equal(tissue == 3, labels == 3)


def _hilum_map(*, pancreas: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """A taller map (30 slices of 2 mm) whose portal venous system leaves the liver: a trunk below and
    beside it, right of the midline in front of the spine, and a splenic vein running to the patient's left (the
    image right); optionally a labelled pancreas along the splenic vein."""
    labels, liver = _label_map(d=30)
    n = labels.shape[1]
    yy, xx = np.mgrid[:n, :n]
    trunk = np.hypot(yy - 0.5 * n, xx - 0.62 * n) <= 0.025 * n
    labels[0:21][:, trunk] = 12
    splenic = (np.abs(yy - 0.5 * n) <= 0.02 * n) & (xx >= 0.62 * n) & (xx <= 0.85 * n)
    labels[14:17][:, splenic] = 12
    if pancreas:
        labels[17:19][:, splenic] = 7
    return labels, liver


def test_the_hilum_puts_a_pancreas_around_the_extrahepatic_veins_and_a_duodenum_beside_its_head(tmp_path, seen,
                                                                                              maps):
    labels, liver = _hilum_map()
    lm = LabelMap.read(_write_map(tmp_path / "hilum", labels, liver))
    dz, dy, dx = SPACING
    veins = np.argwhere((labels == 12) & ~liver) * np.array(SPACING)
    for seed in range(3):
        _, without = synth_sample(lm, seed, replace(QUIET, size=96))
        before = seen["tissue"]
        _, drawn = synth_sample(lm, seed, replace(QUIET, size=96, hilum_p=1.0))
        tissue = seen["tissue"]
        assert {"pancreas", "duodenum"} <= set(drawn["placed"]) and not {"pancreas", "duodenum"} & set(
            without["placed"])
        kept = labels != 1  # the expert's labels stay
        assert np.array_equal(tissue[kept], labels[kept])
        changed = tissue != before  # what the hilum placed, and nothing else
        gland = changed & (tissue == synth_ct._ID["pancreas"])
        duodenum = changed & (tissue == synth_ct._ID["bowel"])
        assert gland.sum() >= 50 and duodenum.sum() >= 50 and not (changed & ~gland & ~duodenum).any()
        assert (labels[changed] == 1).all()
        gap = np.sqrt(((np.argwhere(gland)[:, None] * np.array(SPACING) - veins[None]) ** 2).sum(-1)).min(1)
        assert gap.max() <= 14.0 + 1e-6  # a sleeve about the veins, at most 14 mm thick
        assert np.nonzero(duodenum)[2].mean() < np.nonzero(gland)[2].mean()  # the patient's right of the gland
    labels, liver = _hilum_map(pancreas=True)
    lm = LabelMap.read(_write_map(tmp_path / "own_pancreas", labels, liver))
    _, drawn = synth_sample(lm, 0, replace(QUIET, size=96, hilum_p=1.0))
    assert "pancreas" not in drawn["placed"]  # the map's own pancreas, none added
    assert np.array_equal(seen["tissue"] == 7, labels == 7)
    _, drawn = synth_sample(LabelMap.read(maps / "map0"), 0, replace(QUIET, size=96, hilum_p=1.0))
    assert not {"pancreas", "duodenum"} & set(drawn["placed"])  # no vein outside the liver: nothing to place by


def test_a_seed_gives_the_same_ct_and_another_seed_another(maps):
    lm = LabelMap.read(maps / "map0")
    config = replace(QUIET, photons=(1e5, 1e5), psf_px=(0.5, 1.0), lesion_p=1.0)
    a, da = synth_sample(lm, 7, config)
    b, _ = synth_sample(lm, 7, config)
    c, _ = synth_sample(lm, 8, config)
    assert np.array_equal(a.image, b.image) and not np.array_equal(a.image, c.image)
    assert da["lesions"] >= 1


def test_noise_grows_as_the_dose_falls(maps):
    lm = LabelMap.read(maps / "map0")
    liver = LabelMap.read(maps / "map0").labels == 11
    spread = []
    for photons in (1e6, 2e4):
        volume, _ = synth_sample(lm, 2, replace(QUIET, size=96, photons=(photons, photons)))
        spread.append(volume.image[liver].std())
    assert spread[1] > 1.5 * spread[0]


def test_the_command_writes_readable_cases_a_manifest_and_a_sheet(maps, tmp_path):
    out = tmp_path / "synth"
    r = CliRunner().invoke(cli, ["data", "synth", "--from-labels", str(maps), "--out", str(out), "--samples", "2",
                                 "--size", "48", "--seed", "3", "--sheet", str(tmp_path / "sheet.png"),
                                 "--thorax-p", "0.5", "--hilum-p", "0.5"])
    assert r.exit_code == 0, r.output
    cases = load_cases(out).volumes
    assert sorted(v.case_id for v in cases) == ["map0_s00", "map0_s01", "map1_s00", "map1_s01"]
    assert all(v.mask is not None and v.mask.any() and v.intensity == "hu" for v in cases)
    manifest = json.loads((out / "synth.json").read_text())
    assert manifest["samples_per_map"] == 2 and len(manifest["cases"]) == 4
    assert manifest["config"]["thorax_p"] == manifest["config"]["hilum_p"] == 0.5 and manifest["version"] == synth_ct.VERSION
    assert {c["drawn"]["phase"] for c in manifest["cases"]} <= set(PHASES)
    assert "CC BY-NC-ND" in manifest["note"]
    assert (tmp_path / "sheet.png").stat().st_size > 0
    image, _, spacing = read_nifti(out / "map0_s00" / "image.nii.gz")
    assert image.shape == (10, 48, 48) and spacing == pytest.approx((2.0, 7.0, 7.0))


@pytest.mark.parametrize("case", ["no liver file", "foreign labels", "empty liver", "phantom option",
                                  "sheet inside the output", "thorax share", "hilum share"])
def test_bad_label_maps_and_options_exit_2_without_output(maps, tmp_path, case):
    src = maps
    extra = []
    if case == "no liver file":
        (maps / "map1" / "liver.nii.gz").unlink()
    elif case == "foreign labels":
        labels, liver = _label_map()
        labels[0, 0, 0] = 40
        src = _write_map(tmp_path / "bad" / "m", labels, liver).parent
    elif case == "empty liver":
        labels, liver = _label_map()
        src = _write_map(tmp_path / "bad" / "m", labels, np.zeros_like(liver)).parent
    elif case == "phantom option":
        extra = ["--cases", "3"]
    elif case == "thorax share":
        extra = ["--thorax-p", "1.5"]
    elif case == "hilum share":
        extra = ["--hilum-p", "-0.1"]
    else:
        extra = ["--sheet", str(tmp_path / "out" / "sheet.png")]
    out = tmp_path / "out"
    r = CliRunner().invoke(cli, ["data", "synth", "--from-labels", str(src), "--out", str(out), "--size", "48",
                                 *extra])
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output and r.output.count("Error:") == 1
    assert not (out / "synth.json").exists()


def test_config_ranges_are_checked():
    with pytest.raises(InputError, match="thickness_mm"):
        SynthConfig(thickness_mm=(3.0, 1.0))
    with pytest.raises(InputError, match="photons"):
        SynthConfig(photons=(0.0, 1.0))
    with pytest.raises(InputError, match="thorax_p"):
        SynthConfig(thorax_p=1.5)
    with pytest.raises(InputError, match="hilum_p"):
        SynthConfig(hilum_p=1.5)


def test_no_label_maps_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="no label maps"):
        synth_from_labels(tmp_path, tmp_path / "out")
