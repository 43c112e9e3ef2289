"""``kitti``: the study's release, case folders of CT slices plus a CVAT KITTI 1.0 export."""

from __future__ import annotations

from pathlib import Path

from liverrt.data.kitti import is_kitti_case, read_kitti_case, scan_kitti_case
from liverrt.data.layouts.base import Annotations, CaseRef, Layout, ReadOptions, log_warnings
from liverrt.data.volume import Volume


class Kitti(Layout):
    name = "kitti"
    description = (
        "the study's release: a case folder of CT slices (PNG/JPG) plus a CVAT KITTI 1.0 export "
        "(`label_colors.txt`, `default/semantic/`, `default/instance/`); liver found by name (`--label liver`); "
        "only annotated slices train unless `--unannotated negative`; inference segments every image"
    )
    labels_in_case = True
    masks_select_slices = True

    def detect(self, path: Path) -> CaseRef | None:
        return self.ref(path, path, path) if is_kitti_case(path) else None  # image and mask: the case folder

    def load(self, ref: CaseRef, *, with_mask: bool, options: ReadOptions) -> Volume:
        # without masks: the images only, no label_colors.txt or liver label needed
        volume, warnings = read_kitti_case(ref.image, label=options.label if with_mask else None,
                                           unannotated=options.unannotated)
        log_warnings(ref, warnings)
        return volume

    def annotations(self, ref: CaseRef, volume: Volume) -> Annotations:
        scan = scan_kitti_case(ref.image)
        return Annotations(len(scan.images), scan.annotated, scan.unannotated, scan.orphan_masks)
