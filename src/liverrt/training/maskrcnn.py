"""Training the study's Mask R-CNN: one instance per separate liver region.

Targets come from the data layer: the KITTI instance map when the case has
one (intersected with the liver mask), otherwise the 8-connected regions of
the liver mask in each slice. Regions smaller than ``min_instance_area``
pixels on the network grid are not instances (they are kept out of the
targets, not erased from the image). Slices without liver are negatives.

Validation reports the semantic scores of the U-Net (volume Mask IoU and
Dice of the union of kept instances) and, separately, the slices whose liver
has two or more regions — the study's hard case: their mean slice Mask IoU
and the share of them where every region was found as its own instance
(IoU >= 0.5, one-to-one).
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from liverrt.data.preprocess import PreprocessSpec, mask_to_input, to_input
from liverrt.data.volume import Volume
from liverrt.errors import InputError
from liverrt.metrics import iou_from_counts, label_by_area, per_slice_counts
from liverrt.metrics.instances import instances_from_labels, match_instances
from liverrt.models import build
from liverrt.training.augment import augment_batch
from liverrt.training.loop import Task, TrainConfig
from liverrt.training.slices import volume_scores

log = logging.getLogger(__name__)

#: at most this many regions per slice become targets (largest first)
MAX_REGIONS = 8


class InstanceSliceSet:
    """Slices on the network grid with per-slice instance label maps.

    ``x``: (N, 1, S, S) float32; ``labels``: (N, S, S) uint8, 0 = background,
    1..K = liver regions (largest first); ``case_index``: (N,).
    """

    def __init__(self, volumes: list[Volume], spec: PreprocessSpec, min_area: int) -> None:
        xs, labs, idx = [], [], []
        for i, vol in enumerate(volumes):
            if vol.mask is None:
                raise InputError(f"Case {vol.case_id} ({vol.source}) has no liver mask; training needs labelled cases.")
            x, place = to_input(vol.image, vol.intensity, spec, vol.spacing)
            xs.append(torch.from_numpy(x))
            labs.append(torch.from_numpy(_grid_labels(vol, place, min_area)))
            idx.append(torch.full((x.shape[0],), i, dtype=torch.long))
        if not xs:
            raise InputError("No labelled cases to build a Mask R-CNN training set from.")
        self.x = torch.cat(xs)
        self.labels = torch.cat(labs)
        self.case_index = torch.cat(idx)
        self.case_ids = [v.case_id for v in volumes]
        self.regions = (self.labels.flatten(1).amax(1)).numpy().astype(np.int64)

    def __len__(self) -> int:
        return int(self.x.shape[0])


def _grid_labels(vol: Volume, place, min_area: int) -> np.ndarray:
    """(D, S, S) uint8 instance labels on the network grid, regions >= ``min_area`` px, largest first."""
    if vol.instances is not None:
        source = np.where(vol.mask, vol.instances, 0)
    else:
        source = label_by_area(vol.mask)
    out = np.zeros((vol.shape[0], place.size, place.size), np.uint8)
    for d in range(vol.shape[0]):
        ids = [i for i in np.unique(source[d]) if i != 0]
        if not ids:
            continue
        grids = mask_to_input(np.stack([source[d] == i for i in ids]), place)[:, 0] >= 0.5
        areas = grids.reshape(len(ids), -1).sum(1)
        keep = [k for k in np.argsort(-areas, kind="stable") if areas[k] >= min_area][:MAX_REGIONS]
        for rank, k in enumerate(keep, start=1):
            out[d][grids[k] & (out[d] == 0)] = rank
    return out


def targets_from_labels(labels: torch.Tensor, min_area: int) -> list[dict[str, torch.Tensor]]:
    """torchvision detection targets from (N, S, S) label maps (label 1 = liver for every region)."""
    targets = []
    for lab in labels:
        masks, boxes = [], []
        for i in torch.unique(lab).tolist():
            if i == 0:
                continue
            m = lab == i
            if int(m.sum()) < min_area:
                continue
            ys, xs = torch.where(m)
            boxes.append(torch.stack([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float())
            masks.append(m.to(torch.uint8))
        n = len(masks)
        targets.append({
            "boxes": torch.stack(boxes) if n else torch.zeros((0, 4)),
            "labels": torch.ones(n, dtype=torch.int64),
            "masks": torch.stack(masks) if n else torch.zeros((0, *lab.shape), dtype=torch.uint8),
        })
    return targets


class MaskRCNNTask(Task):
    name = "maskrcnn"
    model_name = "maskrcnn_r101_fpn"
    monitor = "val_mask_iou"
    curve_metrics = ("val_mask_iou", "val_dice", "val_multi_mask_iou", "val_multi_separated")
    find_unused_parameters = True
    channels_last_ok = False
    amp_prefer = torch.float16  # bf16 box coding would round proposals to whole pixels

    def __init__(self, train_vols: list[Volume], val_vols: list[Volume], spec: PreprocessSpec, split: dict,
                 config: TrainConfig, *, min_instance_area: int = 32) -> None:
        super().__init__(spec, split)
        if spec.size % 32:
            raise InputError(f"Mask R-CNN needs --size divisible by 32 (FPN strides); got {spec.size}.")
        if min_instance_area < 1:
            raise InputError(f"min_instance_area: got {min_instance_area}, expected >= 1 pixel.")
        self.config = config
        self.min_area = min_instance_area
        self.train_set = InstanceSliceSet(train_vols, spec, min_instance_area)
        self.val_set = InstanceSliceSet(val_vols, spec, min_instance_area)
        if not (self.train_set.regions > 0).any():
            raise InputError("The training cases have no annotated liver slices (no region of at least "
                             f"{min_instance_area} px on the {spec.size}² grid); expected labelled slices.")
        log.info("maskrcnn: %d training slices (%d with two or more liver regions)",
                 len(self.train_set), int((self.train_set.regions >= 2).sum()))

    def build_model(self, config: TrainConfig) -> torch.nn.Module:
        return build(config.model, image_size=self.spec.size, **config.model_options)

    def __len__(self) -> int:
        return len(self.train_set)

    def batch(self, index, generator, device, memory_format):
        x = self.train_set.x[index]
        lab = self.train_set.labels[index].long()
        k = max(1, int(lab.max()))
        onehot = torch.stack([(lab == i + 1) for i in range(k)], dim=1).float()
        x, onehot = augment_batch(x, onehot, self.config.augment, generator)
        lab = torch.zeros(onehot.shape[0], *onehot.shape[2:], dtype=torch.uint8)
        for i in range(k):  # back to labels; the affine warp keeps regions disjoint up to edge pixels
            lab[(onehot[:, i] >= 0.5) & (lab == 0)] = i + 1
        targets = [{k2: v.to(device) for k2, v in t.items()} for t in targets_from_labels(lab, self.min_area)]
        return x.to(device, non_blocking=True), targets

    def loss(self, model, batch):
        x, targets = batch
        losses = model(x, targets)
        total = sum(losses.values())
        return total, {k.removeprefix("loss_"): float(v.detach()) for k, v in losses.items()}

    @torch.no_grad()
    def validate(self, model, device):
        return score_instances(model, self.val_set, device, batch_size=max(self.config.batch_size, 4))

    def describe(self) -> dict:
        return {"min_instance_area": self.min_area}


@torch.no_grad()
def score_instances(model, data: InstanceSliceSet, device: torch.device, *, batch_size: int = 4,
                    iou_threshold: float = 0.5) -> dict[str, float]:
    """Semantic and instance scores of a Mask R-CNN on labelled slices (see the module docstring)."""
    model.eval()
    cfg = model.config
    semantic = np.zeros((len(data), *data.labels.shape[1:]), bool)
    multi_iou, multi_sep, matched, truth = [], [], 0, 0
    for start in range(0, len(data), batch_size):
        x = data.x[start:start + batch_size].to(device)
        dets = model.detect(x)
        for j, det in enumerate(dets):
            i = start + j
            keep = det["scores"] >= cfg["score_threshold"]
            pm = (det["masks"][keep][:, 0] >= cfg["mask_threshold"]).cpu().numpy()
            semantic[i] = pm.any(axis=0) if len(pm) else False
            gt = instances_from_labels(data.labels[i].numpy())
            m = match_instances(pm, gt, iou_threshold)
            matched += m["matched"]
            truth += m["truth"]
            if len(gt) >= 2:
                c = per_slice_counts(semantic[i][None], data.labels[i].numpy()[None] > 0)[0]
                multi_iou.append(iou_from_counts(*c))
                multi_sep.append(float(m["matched"] == len(gt)))
    scores = volume_scores(semantic, data.labels.numpy() > 0, data.case_index.numpy(), len(data.case_ids))
    return {
        "val_mask_iou": scores["mask_iou"],
        "val_dice": scores["dice"],
        "val_slice_mask_iou": scores["slice_mask_iou"],
        "val_instance_recall": matched / truth if truth else 1.0,
        "val_multi_slices": float(len(multi_iou)),
        "val_multi_mask_iou": float(np.mean(multi_iou)) if multi_iou else float("nan"),
        "val_multi_separated": float(np.mean(multi_sep)) if multi_sep else float("nan"),
    }
