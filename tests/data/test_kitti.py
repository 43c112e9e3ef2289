import numpy as np
import pytest
from PIL import Image

from liverrt.data.kitti import (
    find_kitti_cases,
    is_kitti_case,
    read_kitti_case,
    read_label_names,
    scan_kitti_case,
)
from liverrt.data.phantom import PhantomConfig, synth_case, window_to_uint8
from liverrt.errors import InputError

LABEL_COLORS = "0 0 0 background\n12 200 3 kidney\n250 50 83 liver\n"
LIVER_ID = 2
KIDNEY_ID = 1
ANNOTATED = range(2, 11)  # 0-based slices with masks: image3..image11 (seed 0 has liver in 2..11)


@pytest.fixture(scope="module")
def phantom():
    return synth_case(0, PhantomConfig(size=64, slices=12))


def write_kitti_case(folder, vol, *, annotated=ANNOTATED, instance=True, orphan=True):
    """A CVAT KITTI 1.0 case: images/image1..N.png + masks/{label_colors.txt, default/...}."""
    images = folder / "images"
    export = folder / "masks"
    sem_dir = export / "default" / "semantic"
    inst_dir = export / "default" / "instance"
    rgb_dir = export / "default" / "semantic_rgb"
    for d in (images, sem_dir, inst_dir, rgb_dir):
        d.mkdir(parents=True)
    (export / "label_colors.txt").write_text(LABEL_COLORS)
    img8 = window_to_uint8(vol.image)
    for d in range(vol.shape[0]):
        stem = f"image{d + 1}"
        Image.fromarray(img8[d]).save(images / f"{stem}.png")
        if d not in annotated:
            continue
        sem = np.where(vol.mask[d], LIVER_ID, 0).astype(np.uint8)
        sem[:3, :3] = KIDNEY_ID  # another label, never liver
        Image.fromarray(sem).save(sem_dir / f"{stem}.png")
        colors = np.array([[0, 0, 0], [12, 200, 3], [250, 50, 83]], np.uint8)
        Image.fromarray(colors[sem]).save(rgb_dir / f"{stem}.png")
        if instance:
            inst = np.where(vol.mask[d], (LIVER_ID << 8) | vol.instances[d].astype(np.uint16), 0)
            inst[:3, :3] = (KIDNEY_ID << 8) | 1
            Image.fromarray(inst.astype(np.uint16)).save(inst_dir / f"{stem}.png")
    if orphan:
        Image.fromarray(np.zeros(vol.shape[1:], np.uint8)).save(sem_dir / "image99.png")
    return folder


@pytest.fixture
def case(tmp_path, phantom):
    return write_kitti_case(tmp_path / "case1", phantom)


def test_scan_pairs_by_stem_in_natural_order(case):
    found = scan_kitti_case(case)
    stems = [p.stem for p in found.images]
    assert stems == [f"image{i}" for i in range(1, 13)]  # image2 before image10
    assert found.label_names == ["background", "kidney", "liver"]
    assert list(found.masks) == [f"image{d + 1}" for d in ANNOTATED]
    assert set(found.instances) == set(found.masks)
    assert found.unannotated == ["image1", "image2", "image12"]
    assert found.orphan_masks == ["image99"]
    assert all(found.masks[s].stem == s for s in found.masks)


def test_read_excludes_unannotated_and_matches_phantom(case, phantom):
    vol, warnings = read_kitti_case(case)
    idx = list(ANNOTATED)
    assert vol.slice_names == tuple(f"image{d + 1}" for d in idx)
    assert vol.intensity == "8bit" and vol.image.dtype == np.uint8
    assert vol.spacing == (1.0, 1.0, 1.0)
    assert np.array_equal(vol.image, window_to_uint8(phantom.image)[idx])
    assert np.array_equal(vol.mask, phantom.mask[idx])  # kidney pixels are not liver
    assert np.array_equal(vol.instances, phantom.instances[idx])
    assert vol.instances.max() == 2  # a slice where the liver is two regions
    assert vol.case_id == "case1"
    text = " | ".join(warnings)
    assert "image3..image11" in text
    assert "3 images have no mask" in text
    assert "1 masks have no image" in text and "image99" in text


def test_negative_mode_keeps_all_images_with_empty_masks(case, phantom):
    vol, warnings = read_kitti_case(case, unannotated="negative")
    assert vol.shape[0] == 12
    assert vol.slice_names[:3] == ("image1", "image2", "image3")
    expected = phantom.mask.copy()
    expected[[d for d in range(12) if d not in ANNOTATED]] = False
    assert np.array_equal(vol.mask, expected)
    assert not vol.mask[11].any() and phantom.mask[11].any()  # unannotated slice: empty, not the truth
    assert any("kept with an empty mask" in w for w in warnings)


def test_label_looked_up_by_name_case_insensitive(case, phantom):
    vol, _ = read_kitti_case(case, label="KIDNEY")
    assert vol.mask[:, :3, :3].all() and vol.mask.sum() == 9 * len(ANNOTATED)
    with pytest.raises(InputError, match="background, kidney, liver"):
        read_kitti_case(case, label="spleen")


def test_missing_instance_png_falls_back_to_connected_regions(tmp_path, phantom):
    folder = write_kitti_case(tmp_path / "c", phantom, instance=False, orphan=False)
    vol, warnings = read_kitti_case(folder)
    idx = list(ANNOTATED)
    assert np.array_equal(vol.instances, phantom.instances[idx])  # largest region first, like the phantom
    assert any("no instance PNG" in w for w in warnings)
    assert not any("no image" in w for w in warnings)


def test_find_cases_under_root_and_case_itself(tmp_path, phantom):
    root = tmp_path / "release"
    for name in ("case10", "case2"):
        write_kitti_case(root / name, phantom, orphan=False)
    (root / "notes").mkdir()
    assert [p.name for p in find_kitti_cases(root)] == ["case2", "case10"]
    assert find_kitti_cases(root / "case2") == [root / "case2"]
    assert is_kitti_case(root / "case2") and not is_kitti_case(root) and not is_kitti_case(root / "notes")


def test_export_inline_in_case_folder(tmp_path, phantom):
    """label_colors.txt and default/ directly in the case folder, images/ beside them."""
    root = tmp_path / "release"
    for name in ("b", "a"):
        folder = write_kitti_case(root / name, phantom, orphan=False)
        for item in (folder / "masks").iterdir():
            item.rename(folder / item.name)
        (folder / "masks").rmdir()
    assert not is_kitti_case(root)
    assert [p.name for p in find_kitti_cases(root)] == ["a", "b"]
    vol, _ = read_kitti_case(root / "a")
    assert np.array_equal(vol.mask, phantom.mask[list(ANNOTATED)])


def test_mask_shape_mismatch_and_unreadable_png_name_the_file(case):
    sem = case / "masks" / "default" / "semantic" / "image5.png"
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(sem)
    with pytest.raises(InputError, match="image5.png"):
        read_kitti_case(case)
    sem.write_bytes(b"not a png")
    with pytest.raises(InputError, match="image5.png"):
        read_kitti_case(case)


def test_no_export_or_no_masks(tmp_path, phantom):
    plain = tmp_path / "plain" / "images"
    plain.mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(plain / "a.png")
    assert not is_kitti_case(tmp_path / "plain")
    with pytest.raises(InputError, match="KITTI export"):
        scan_kitti_case(tmp_path / "plain")
    folder = write_kitti_case(tmp_path / "empty", phantom, annotated=(), orphan=False)
    with pytest.raises(InputError, match="no image has a mask"):
        read_kitti_case(folder)
    vol, _ = read_kitti_case(folder, unannotated="negative")
    assert vol.shape[0] == 12 and not vol.mask.any()


def test_label_colors_parsing(tmp_path):
    p = tmp_path / "label_colors.txt"
    p.write_text("0 0 0 background\n\n250 50 83 Liver Margin\n")
    assert read_label_names(p) == ["background", "Liver Margin"]
    p.write_text("0 0 background\n")
    with pytest.raises(InputError, match="R G B name"):
        read_label_names(p)


def test_kitti_root_flows_through_sources_training_and_inference(tmp_path, phantom, tiny_onnx_8bit):
    from liverrt.data.sources import find_cases, load_case, load_cases
    from liverrt.runtime.infer import run_inference

    root = tmp_path / "release"
    write_kitti_case(root / "case2", phantom)
    write_kitti_case(root / "case10", phantom, orphan=False)
    refs = find_cases(root)
    assert [(r.case_id, r.kind) for r in refs] == [("case2", "kitti"), ("case10", "kitti")]
    labelled = load_cases(root, require_mask=True).volumes  # training view: annotated slices only
    assert labelled[0].shape[0] == len(ANNOTATED) and labelled[0].instances is not None
    unlabelled = load_case(refs[0], with_mask=False)  # inference view: every image
    assert unlabelled.shape[0] == phantom.shape[0] and unlabelled.mask is None
    report = run_inference(tiny_onnx_8bit, root, tmp_path / "out", overlays=0)
    assert [c["id"] for c in report.cases] == ["case2", "case10"] and not report.skipped
    stems = sorted(p.stem for p in (tmp_path / "out" / "case2" / "masks").glob("*.png"))
    assert len(stems) == phantom.shape[0] and "image12" in stems


def test_layout_and_read_options_reach_the_kitti_reader(tmp_path, phantom):
    from liverrt.data.sources import ReadOptions, find_cases, load_cases

    root = tmp_path / "release"
    write_kitti_case(root / "case1", phantom)
    assert [r.kind for r in find_cases(root, layout="kitti")] == ["kitti"]
    with pytest.raises(InputError, match="No dicom cases"):
        find_cases(root, layout="dicom")
    with pytest.raises(InputError, match="Unknown layout"):
        find_cases(root, layout="xml")
    every = load_cases(root, options=ReadOptions(unannotated="negative")).volumes[0]
    assert every.shape[0] == phantom.shape[0] and not every.mask[0].any()
    kidney = load_cases(root, options=ReadOptions(label="kidney")).volumes[0]
    assert kidney.mask[:, :3, :3].all() and kidney.mask.sum() == 9 * len(ANNOTATED)


def test_eval_scores_predictions_against_a_kitti_release_on_its_annotated_slices(tmp_path, phantom):
    from liverrt.data.io import write_png_slices
    from liverrt.evaluation import evaluate

    root = tmp_path / "release"
    write_kitti_case(root / "case1", phantom, orphan=False)
    stems = tuple(f"image{d + 1}" for d in range(phantom.shape[0]))
    write_png_slices(phantom.mask, tmp_path / "pred" / "case1" / "masks", stems)  # a perfect prediction, all slices
    result = evaluate(tmp_path / "pred", root)
    case = result["cases"][0]
    assert case["volume"]["dice"] == 1.0 and case["slices"]["n"] == int(phantom.mask[list(ANNOTATED)].any(axis=(1, 2)).sum())
    assert "annotated of 12 predicted slices" in case["warnings"][0]
