"""The layout registry: its order, each layout against every layout's example, ``--layout`` and the names cases carry.

Parametrised over :data:`liverrt.data.layouts.REGISTRY`: a new layout is tested here as soon as it is
registered, and fails until :data:`EXAMPLES` has a tiny example of it.
"""

import json

import numpy as np
import pytest
from liverrt_test_helpers import make_volume, stored_pixels, write_ct_series
from PIL import Image

from liverrt.data.io import write_nifti, write_png_slices
from liverrt.data.layouts import LAYOUTS, REGISTRY, layout_named, layout_of, markdown_table
from liverrt.data.sources import LABELLED_CASE_KINDS, find_cases, load_case, load_cases
from liverrt.errors import InputError

# ----------------------------------------------------------------------------- one tiny example per layout


def _nifti_pair(image_path, mask_path):
    vol = make_volume(shape=(3, 16, 16))
    write_nifti(vol.image, vol.affine, image_path)
    write_nifti(vol.mask.astype(np.uint8), vol.affine, mask_path)


def _uint8(hu):
    return np.clip(hu + 1000, 0, 255).astype(np.uint8)


def msd_example(root):
    _nifti_pair(root / "imagesTr" / "liver_1.nii.gz", root / "labelsTr" / "liver_1.nii.gz")
    return root


def lits_example(root):
    _nifti_pair(root / "volume-1.nii.gz", root / "segmentation-1.nii.gz")
    return root


def kitti_example(case):
    """Slices in ``images/``, a CVAT KITTI 1.0 export in ``masks/`` (label 1 is liver)."""
    semantic = case / "masks" / "default" / "semantic"
    semantic.mkdir(parents=True)
    (case / "masks" / "label_colors.txt").write_text("0 0 0 background\n250 50 83 liver\n")
    vol = make_volume(shape=(3, 16, 16))
    write_png_slices(_uint8(vol.image), case / "images", ("image1", "image2", "image3"))
    for k in (1, 2):
        Image.fromarray(vol.mask[k].astype(np.uint8)).save(semantic / f"image{k + 1}.png")
    return case


def _series(folder, **kw):
    write_ct_series(folder, [(0.0, 0.0, z) for z in (0.0, 2.0, 4.0)], ["a", "b", "c"], **kw)


def ircad_example(case):
    _series(case / "PATIENT_DICOM")
    liver = [np.where(stored_pixels(i, 5, 6) % 2 == 0, 255, 0).astype(np.uint16) for i in range(3)]
    _series(case / "MASKS_DICOM" / "liver", pixels=liver, slope=1.0, intercept=0.0)
    return case


def chaos_example(case):
    _series(case / "DICOM_anon")
    (case / "Ground").mkdir()
    for i in range(3):
        Image.fromarray(np.where(stored_pixels(i, 5, 6) % 2 == 0, 255, 0).astype(np.uint8)).save(
            case / "Ground" / f"liver_GT_{i:03d}.png")
    return case


def nifti_example(case):
    _nifti_pair(case / "image.nii.gz", case / "mask.nii.gz")
    return case


def slices_example(case):
    vol = make_volume(shape=(3, 16, 16))
    names = ("s1", "s2", "s3")
    write_png_slices(_uint8(vol.image), case / "images", names)
    write_png_slices(vol.mask, case / "masks", names)
    return case


def dicom_example(folder):
    _series(folder)
    return folder


EXAMPLES = {
    "msd": msd_example, "lits": lits_example, "kitti": kitti_example, "ircad": ircad_example,
    "chaos": chaos_example, "nifti": nifti_example, "slices": slices_example, "dicom": dicom_example,
}
#: (layout, example) pairs where a layout also recognises another's example; detection tries the
#: example's own layout first (a KITTI case holds images/ + masks/, but masks/ is a CVAT export)
SHADOWED = {("slices", "kitti")}


def build(name, folder):
    assert name in EXAMPLES, f"layout {name!r} has no example in tests/data/test_layouts.py"
    return EXAMPLES[name](folder)


def example(tmp_path, name):
    return build(name, tmp_path / "examples" / name)


@pytest.fixture(scope="module")
def every_case(tmp_path_factory):
    """A root holding one case of every case layout (the dataset layouts are roots themselves)."""
    root = tmp_path_factory.mktemp("every") / "root"
    for layout in REGISTRY:
        if not layout.dataset:
            build(layout.name, root / layout.name)
    return root


# ----------------------------------------------------------------------------- the registry


def test_registry_order_is_the_detection_order():
    assert LAYOUTS == ("msd", "lits", "kitti", "ircad", "chaos", "nifti", "slices", "dicom")
    datasets = [layout.dataset for layout in REGISTRY]
    assert datasets == sorted(datasets, reverse=True)  # dataset roots are tried before case folders
    assert len(set(LAYOUTS)) == len(LAYOUTS)
    assert LABELLED_CASE_KINDS == ("kitti", "ircad", "chaos")


@pytest.mark.parametrize("layout", REGISTRY, ids=LAYOUTS)
def test_every_layout_describes_itself(layout):
    assert layout_named(layout.name) is layout
    assert layout.description and "\n" not in layout.description
    assert f"| `{layout.name}` | {layout.description} |" in markdown_table().splitlines()


@pytest.mark.parametrize("layout", REGISTRY, ids=LAYOUTS)
def test_each_layout_finds_and_reads_its_own_example(tmp_path, layout):
    src = example(tmp_path, layout.name)
    refs = layout.find(src)
    assert refs and {r.kind for r in refs} == {layout.name}
    assert [r.kind for r in find_cases(src)] == [layout.name] * len(refs)  # no earlier layout takes it
    volume = load_case(refs[0])
    assert volume.image.ndim == 3 and volume.shape[0] >= 2
    if refs[0].mask is not None:
        assert volume.mask is not None and volume.mask.any()
        assert load_case(refs[0], with_mask=False).mask is None


@pytest.mark.parametrize(("layout", "other"), [
    pytest.param(layout, other, id=f"{layout.name}-on-{other}")
    for layout in REGISTRY for other in LAYOUTS if other != layout.name
])
def test_no_layout_claims_another_layouts_example(tmp_path, layout, other):
    claimed = layout.find(example(tmp_path, other)) is not None
    assert claimed == ((layout.name, other) in SHADOWED)
    if claimed:  # harmless only because the example's own layout is tried first
        assert LAYOUTS.index(other) < LAYOUTS.index(layout.name)


def test_a_root_of_cases_gets_each_case_its_own_layout(every_case):
    refs = find_cases(every_case)
    assert {r.case_id: r.kind for r in refs} == {name: name for name in LAYOUTS if not layout_named(name).dataset}


# ----------------------------------------------------------------------------- lits and msd, --layout


def test_lits_and_msd_cases_report_their_own_layout(tmp_path):
    lits, msd = example(tmp_path, "lits"), example(tmp_path, "msd")
    assert [(r.case_id, r.kind) for r in find_cases(lits)] == [("volume-1", "lits")]
    assert [(r.case_id, r.kind) for r in find_cases(msd)] == [("liver_1", "msd")]
    for ref in (*find_cases(lits), *find_cases(msd)):
        assert layout_of(ref).mask_is_label_map and ref.mask is not None
    assert [v.case_id for v in load_cases(lits, require_mask=True).volumes] == ["volume-1"]


@pytest.mark.parametrize("name", [layout.name for layout in REGISTRY if not layout.dataset])
def test_layout_option_keeps_only_that_layout(every_case, name):
    refs = find_cases(every_case, layout=name)
    assert [(r.case_id, r.kind) for r in refs] == [(name, name)]


def test_layout_option_reads_a_dataset_root_as_that_dataset(tmp_path):
    """A root that is both MSD and LiTS is detected as MSD (first in the registry); --layout lits reads LiTS."""
    root = lits_example(msd_example(tmp_path / "both"))
    assert [r.kind for r in find_cases(root)] == ["msd"]
    assert [(r.case_id, r.kind) for r in find_cases(root, layout="lits")] == [("volume-1", "lits")]
    assert [r.kind for r in find_cases(root, layout="msd")] == ["msd"]
    with pytest.raises(InputError, match="No lits cases"):
        find_cases(example(tmp_path, "nifti"), layout="lits")
    with pytest.raises(InputError, match="No msd cases"):
        find_cases(tmp_path / "missing", layout="msd")
    with pytest.raises(InputError, match="No nifti cases"):
        find_cases(root, layout="nifti")  # LiTS/MSD cases are no longer called nifti
    with pytest.raises(InputError, match="Unknown layout"):
        find_cases(root, layout="nrrd")


def test_inspect_names_the_layout_and_describes_it(tmp_path):
    from click.testing import CliRunner

    from liverrt.cli import cli

    lits = example(tmp_path, "lits")
    r = CliRunner().invoke(cli, ["data", "inspect", str(lits), "--layout", "lits", "--json"])
    assert r.exit_code == 0, r.output
    assert [c["layout"] for c in json.loads(r.output)["cases"]] == ["lits"]
    r = CliRunner().invoke(cli, ["data", "inspect", str(lits)])
    assert r.exit_code == 0, r.output
    assert "volume-1 [lits" in r.output and f"[lits] {layout_named('lits').description}" in r.output


def test_the_documented_layout_table_is_the_registrys():
    from pathlib import Path

    from liverrt.data.layouts import markdown_table

    page = (Path(__file__).resolve().parents[2] / "docs" / "data.md").read_text(encoding="utf-8")
    assert markdown_table().strip() in page  # regenerate docs/data.md's table from the registry when a layout changes


@pytest.mark.parametrize(("image", "mask"), [("ct.nii.gz", "liver.nii.gz"), ("volume.nii", "segmentation.nii.gz"),
                                             ("image.nii.gz", "label.nii")])
def test_a_case_folder_pairs_its_image_and_mask_by_common_names_and_inspect_says_how(tmp_path, image, mask):
    """A user's case folder (``ct`` + ``liver``, as in ../shared/data) is one labelled case, not two CTs."""
    from click.testing import CliRunner

    from liverrt.cli import cli

    vol = make_volume(shape=(4, 32, 32))
    write_nifti(vol.image, vol.affine, tmp_path / "case7" / image)
    write_nifti(vol.mask.astype(np.uint8), vol.affine, tmp_path / "case7" / mask)
    (ref,) = find_cases(tmp_path / "case7")
    assert (ref.case_id, ref.kind, ref.image.name, ref.mask.name) == ("case7", "nifti", image, mask)
    assert np.array_equal(load_case(ref, with_mask=True).mask, vol.mask)
    r = CliRunner().invoke(cli, ["data", "inspect", str(tmp_path)])
    assert r.exit_code == 0, r.output
    assert f"case7 [nifti: {image} + {mask}] 4 images, 4 annotated" in r.output
