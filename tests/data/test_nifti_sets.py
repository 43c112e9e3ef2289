import nibabel as nib
import numpy as np
import pytest
from liverrt_test_helpers import SHARED_DATA

from liverrt.data.io import read_nifti_volume
from liverrt.data.nifti_sets import detect_nifti_set, find_lits, find_msd
from liverrt.errors import InputError

RAS = np.diag([0.8, 0.8, 2.5, 1.0])  # x to the patient's right, y anterior: not liverrt's LPS


def labels_lps() -> np.ndarray:
    """(D, H, W) labels in liverrt's order: liver (1) on the image left, a tumour (2) inside it."""
    lab = np.zeros((4, 12, 10), np.uint8)
    lab[:, 3:9, 1:5] = 1
    lab[1:3, 5:7, 2:4] = 2
    return lab


def write_ras(array_dhw: np.ndarray, path) -> None:
    """Store a (D, H, W) LPS array as a RAS NIfTI (columns and rows flipped)."""
    data = array_dhw.transpose(2, 1, 0)[::-1, ::-1, :]
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.ascontiguousarray(data), RAS), str(path))


def write_pair(image_path, label_path) -> None:
    lab = labels_lps()
    write_ras(np.where(lab > 0, 100, -50).astype(np.int16), image_path)
    if label_path is not None:
        write_ras(lab, label_path)


def test_lits_pairs_by_number_in_natural_order(tmp_path):
    root = tmp_path / "lits"
    write_pair(root / "Training Batch 1" / "volume-10.nii", root / "Training Batch 1" / "segmentation-10.nii")
    write_pair(root / "Training Batch 1" / "volume-2.nii.gz", root / "Training Batch 2" / "segmentation-2.nii.gz")
    write_pair(root / "Training Batch 2" / "volume-3.nii", None)  # no label
    write_pair(root / "test" / "test-volume-0.nii", None)
    (root / "Training Batch 1" / "._volume-4.nii").write_bytes(b"\x00\x05\x16\x07junk")
    (root / "notes.txt").write_text("x")
    pairs = find_lits(root)
    assert [c for c, _, _ in pairs] == ["volume-2", "volume-3", "volume-10", "test-volume-0"]
    by_id = {c: (img, lab) for c, img, lab in pairs}
    assert by_id["volume-2"][1].name == "segmentation-2.nii.gz"
    assert by_id["volume-10"][1].name == "segmentation-10.nii"
    assert by_id["volume-3"][1] is None and by_id["test-volume-0"][1] is None
    assert detect_nifti_set(root) == "lits"


def test_lits_liver_mask_includes_tumour_and_is_reoriented(tmp_path):
    write_pair(tmp_path / "volume-0.nii", tmp_path / "segmentation-0.nii")
    [(case_id, image, label)] = find_lits(tmp_path)
    vol = read_nifti_volume(image, label, case_id=case_id)
    lab = labels_lps()
    assert vol.case_id == "volume-0"
    assert np.array_equal(vol.mask, lab > 0)  # liver = 1 or 2
    assert np.array_equal(vol.image, np.where(lab > 0, 100, -50))
    assert vol.spacing == pytest.approx((2.5, 0.8, 0.8))


def test_msd_pairs_ignore_macos_junk_and_keep_test_images(tmp_path):
    task = tmp_path / "Task03_Liver"
    for n in (10, 2):
        write_pair(task / "imagesTr" / f"liver_{n}.nii.gz", task / "labelsTr" / f"liver_{n}.nii.gz")
    write_pair(task / "imagesTr" / "liver_5.nii.gz", None)  # label missing
    write_pair(task / "imagesTs" / "liver_132.nii.gz", None)
    for folder in ("imagesTr", "labelsTr", "imagesTs"):
        (task / folder / "._liver_2.nii.gz").write_bytes(b"\x00\x05\x16\x07junk")
    (task / "dataset.json").write_text("{}")
    for root in (task, tmp_path):  # the task folder or its parent
        pairs = find_msd(root)
        assert [c for c, _, _ in pairs] == ["liver_2", "liver_5", "liver_10", "liver_132"]
        by_id = {c: lab for c, _, lab in pairs}
        assert by_id["liver_2"] == task / "labelsTr" / "liver_2.nii.gz"
        assert by_id["liver_5"] is None and by_id["liver_132"] is None
        assert detect_nifti_set(root) == "msd"
    case_id, image, label = pairs[0]
    vol = read_nifti_volume(image, label, case_id=case_id)
    assert np.array_equal(vol.mask, labels_lps() > 0)


def test_msd_nnunet_channel_suffix(tmp_path):
    write_pair(tmp_path / "imagesTr" / "liver_001_0000.nii.gz", tmp_path / "labelsTr" / "liver_001.nii.gz")
    assert find_msd(tmp_path) == [
        ("liver_001", tmp_path / "imagesTr" / "liver_001_0000.nii.gz", tmp_path / "labelsTr" / "liver_001.nii.gz")
    ]


def test_detect_and_empty_roots(tmp_path):
    assert detect_nifti_set(tmp_path) is None
    assert detect_nifti_set(tmp_path / "missing") is None
    assert find_lits(tmp_path) == [] and find_msd(tmp_path) == []
    write_pair(tmp_path / "ct.nii.gz", None)
    assert detect_nifti_set(tmp_path) is None
    with pytest.raises(InputError, match="not a folder"):
        find_lits(tmp_path / "ct.nii.gz")
    with pytest.raises(InputError, match="not a folder"):
        find_msd(tmp_path / "missing")


@pytest.mark.skipif(not (SHARED_DATA / "ircad01" / "ct.nii.gz").is_file(), reason="shared IRCAD sample missing")
def test_real_ircad_sample_as_lits(tmp_path):
    (tmp_path / "volume-0.nii.gz").symlink_to(SHARED_DATA / "ircad01" / "ct.nii.gz")
    (tmp_path / "segmentation-0.nii.gz").symlink_to(SHARED_DATA / "ircad01" / "liver.nii.gz")
    assert detect_nifti_set(tmp_path) == "lits"
    [(case_id, image, label)] = find_lits(tmp_path)
    vol = read_nifti_volume(image, label, case_id=case_id)
    assert vol.mask.any()
    assert 40 <= float(np.median(vol.image[vol.mask])) <= 200
    centroid_col = np.nonzero(vol.mask)[2].mean()
    assert centroid_col < vol.shape[2] / 2  # patient's right on the image left (LPS display)


def test_lits_and_msd_roots_are_found_by_the_sources_layer(tmp_path):
    from liverrt.data.sources import find_cases, load_cases

    write_pair(tmp_path / "lits" / "volume-2.nii.gz", tmp_path / "lits" / "segmentation-2.nii.gz")
    write_pair(tmp_path / "lits" / "volume-10.nii.gz", tmp_path / "lits" / "segmentation-10.nii.gz")
    assert [r.case_id for r in find_cases(tmp_path / "lits")] == ["volume-2", "volume-10"]
    write_pair(tmp_path / "msd" / "imagesTr" / "liver_3.nii.gz", tmp_path / "msd" / "labelsTr" / "liver_3.nii.gz")
    vols = load_cases(tmp_path / "msd", require_mask=True).volumes
    assert [v.case_id for v in vols] == ["liver_3"] and vols[0].mask.any()
