"""Import a Detectron2 Mask R-CNN (R-50/R-101 FPN) checkpoint as a liverrt checkpoint.

The study trained its Mask R-CNN with Detectron2; :class:`~liverrt.models.maskrcnn.LiverMaskRCNN`
is the same network built from torchvision parts. This module renames the
weights, reorders the class dimension of the predictors, and takes from the
Detectron2 YAML config what the weights cannot say.

Names, Detectron2 -> liverrt (which prefixes ``net.``):

* ``backbone.bottom_up.stem.conv1`` (+ ``.norm``) -> ``backbone.body.conv1`` / ``bn1``
* ``backbone.bottom_up.res{2..5}.{i}.conv{k}`` (+ ``.norm``) -> ``backbone.body.layer{1..4}.{i}.conv{k}`` / ``bn{k}``
* ``backbone.bottom_up.res{s}.{i}.shortcut`` (+ ``.norm``) -> ``backbone.body.layer{s-1}.{i}.downsample.0`` / ``.1``
* ``backbone.fpn_lateral{2..5}`` / ``fpn_output{2..5}`` -> ``backbone.fpn.inner_blocks.{0..3}.0`` / ``layer_blocks``
* ``proposal_generator.rpn_head.conv`` / ``.objectness_logits`` / ``.anchor_deltas`` ->
  ``rpn.head.conv.0.0`` / ``cls_logits`` / ``bbox_pred``
* ``roi_heads.box_head.fc1`` / ``fc2`` -> ``roi_heads.box_head.fc6`` / ``fc7``
* ``roi_heads.box_predictor.cls_score`` (K+1 rows, background last) -> same name, background row first
* ``roi_heads.box_predictor.bbox_pred`` (4K rows, or 4 if class-agnostic) -> same name, 4 zero rows for
  background, then 4 per class (class-agnostic rows replicated)
* ``roi_heads.mask_head.mask_fcn{1..4}`` / ``.deconv`` -> ``roi_heads.mask_head.{0..3}.0`` /
  ``roi_heads.mask_predictor.conv5_mask``
* ``roi_heads.mask_head.predictor`` (K channels, or 1) -> ``roi_heads.mask_predictor.mask_fcn_logits``,
  a zero background channel first

Config keys used (Detectron2's defaults for absent keys; without a config,
depth, class count, class-agnostic heads, head widths and stored
``pixel_mean``/``pixel_std`` buffers are read from the weights):
``MODEL.RESNETS.DEPTH`` (checked against the number of res4 blocks: 6 -> 50,
23 -> 101), ``MODEL.ROI_HEADS.NUM_CLASSES`` (checked against ``cls_score``),
``MODEL.RESNETS.STRIDE_IN_1X1``, ``MODEL.ROI_{BOX,MASK}_HEAD.POOLER_TYPE``
(``ROIAlignV2`` -> ``roi_aligned=True``) and ``POOLER_SAMPLING_RATIO``,
``INPUT.FORMAT``, ``MODEL.PIXEL_MEAN``/``PIXEL_STD`` (kept in the config's
channel order: a grey CT slice has equal channels, so the order only pairs
each mean with its first-conv channel, exactly as stored), the head widths,
the RPN top-k. Architecture keys liverrt cannot build otherwise (ResNeXt,
GN, deformable convs, other anchors or heads) are refused.
Absent architecture keys take the values of ``Base-RCNN-FPN.yaml`` with
``MASK_ON: True`` (what every ``mask_rcnn_R_*_FPN`` config inherits), since
the bare ``defaults.py`` describes a C4 model without masks.

How the import was verified
---------------------------
Checked (``tests/models/test_detectron2_import.py``), on synthetic checkpoints
whose Detectron2 names come from an inverse mapping written independently in
the test, with random values:

* every tensor lands at its liverrt name unchanged, predictors reordered as
  above; class-agnostic box/mask predictors are replicated per class;
* Detectron2-style functional references written in the test (FrozenBN
  ``x*w/sqrt(var+eps) + b - mean*w/sqrt(var+eps)``, a bottleneck with the
  stride in the 1x1 conv, the whole bottom-up ResNet, the FPN with nearest x2
  top-down and P6 max-pool, the RPN head, the box head and predictor (softmax
  scores per class, per-class deltas), the mask head) give the same outputs
  as the liverrt modules holding the imported weights;
* Detectron2's input normalisation of a grey 0..255 BGR/RGB image equals
  ``LiverMaskRCNN.normalize`` of the same image in [0, 1];
* the RoIAlign flag and sampling ratio reach both poolers, the flag changes
  pooled features, and both settings equal Detectron2's ROIPooler (its level
  assignment, then ROIAlign / ROIAlignV2);
* a full synthetic R-50 import through ``liverrt import-detectron2`` loads
  with ``load_model`` and runs ``predict``; mismatches, pickles and foreign
  files exit with code 2 and write nothing.

Not verified: there is no Detectron2 install here and no real Detectron2
checkpoint, so whole-model outputs were never compared with Detectron2's own.
Known small differences remain (each also recorded in the checkpoint's notes):
torchvision rounds anchor templates to whole pixels (Detectron2 keeps
fractions), pastes masks into the image differently, uses slightly different
epsilons in RoI level assignment and small-box filtering, and Detectron2
resizes test images to ``INPUT.MIN_SIZE_TEST`` (default 800) while liverrt
feeds ``size x size`` slices.
"""

from __future__ import annotations

import copy
import logging
import pickle
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml
from torch import Tensor

from liverrt.artifacts.checkpoint import save_checkpoint
from liverrt.atomic import check_replaceable, refuse_overwriting_inputs, writes_outputs
from liverrt.data.preprocess import PreprocessSpec
from liverrt.errors import ArtifactError, InputError
from liverrt.hashing import sha256_file
from liverrt.models.maskrcnn import LiverMaskRCNN

log = logging.getLogger(__name__)

#: number of res4 blocks -> ResNet depth, and the blocks per stage of each depth
DEPTH_OF_RES4 = {6: 50, 23: 101}
STAGE_BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}

_FPN_SIZES = [[32], [64], [128], [256], [512]]
_RATIOS = [0.5, 1.0, 2.0]

#: Detectron2's defaults (detectron2/config/defaults.py) for the keys the import
#: reads, with Base-RCNN-FPN.yaml's architecture values and MASK_ON: True
DEFAULTS: dict = {
    "INPUT": {"FORMAT": "BGR", "MIN_SIZE_TEST": 800, "MAX_SIZE_TEST": 1333},
    "MODEL": {
        "META_ARCHITECTURE": "GeneralizedRCNN",
        "MASK_ON": True,
        "KEYPOINT_ON": False,
        "PIXEL_MEAN": [103.53, 116.28, 123.675],
        "PIXEL_STD": [1.0, 1.0, 1.0],
        "BACKBONE": {"NAME": "build_resnet_fpn_backbone"},
        "RESNETS": {
            "DEPTH": 50, "NORM": "FrozenBN", "STRIDE_IN_1X1": True, "NUM_GROUPS": 1, "WIDTH_PER_GROUP": 64,
            "RES5_DILATION": 1, "STEM_OUT_CHANNELS": 64, "RES2_OUT_CHANNELS": 256,
            "DEFORM_ON_PER_STAGE": [False, False, False, False],
        },
        "FPN": {"OUT_CHANNELS": 256, "NORM": "", "FUSE_TYPE": "sum"},
        "ANCHOR_GENERATOR": {"NAME": "DefaultAnchorGenerator", "SIZES": _FPN_SIZES, "ASPECT_RATIOS": [_RATIOS],
                             "OFFSET": 0.0},
        "PROPOSAL_GENERATOR": {"NAME": "RPN"},
        "RPN": {"HEAD_NAME": "StandardRPNHead", "PRE_NMS_TOPK_TEST": 1000, "POST_NMS_TOPK_TEST": 1000,
                "NMS_THRESH": 0.7, "BBOX_REG_WEIGHTS": [1.0, 1.0, 1.0, 1.0]},
        "ROI_HEADS": {"NAME": "StandardROIHeads", "NUM_CLASSES": 80, "SCORE_THRESH_TEST": 0.05,
                      "NMS_THRESH_TEST": 0.5},
        "ROI_BOX_HEAD": {
            "NAME": "FastRCNNConvFCHead", "NUM_FC": 2, "NUM_CONV": 0, "FC_DIM": 1024, "NORM": "",
            "POOLER_RESOLUTION": 7, "POOLER_TYPE": "ROIAlignV2", "POOLER_SAMPLING_RATIO": 0,
            "CLS_AGNOSTIC_BBOX_REG": False, "BBOX_REG_WEIGHTS": [10.0, 10.0, 5.0, 5.0],
        },
        "ROI_MASK_HEAD": {
            "NAME": "MaskRCNNConvUpsampleHead", "NUM_CONV": 4, "CONV_DIM": 256, "NORM": "",
            "POOLER_RESOLUTION": 14, "POOLER_TYPE": "ROIAlignV2", "POOLER_SAMPLING_RATIO": 0,
            "CLS_AGNOSTIC_MASK": False,
        },
    },
    "TEST": {"DETECTIONS_PER_IMAGE": 100},
}

#: architecture keys and the values liverrt's Mask R-CNN is built with (alternatives allowed)
_FIXED: tuple[tuple[str, tuple], ...] = (
    ("MODEL.META_ARCHITECTURE", ("GeneralizedRCNN",)),
    ("MODEL.MASK_ON", (True,)),
    ("MODEL.KEYPOINT_ON", (False,)),
    ("MODEL.BACKBONE.NAME", ("build_resnet_fpn_backbone",)),
    ("MODEL.RESNETS.NORM", ("FrozenBN", "BN", "SyncBN", "naiveSyncBN", "nnSyncBN")),
    ("MODEL.RESNETS.NUM_GROUPS", (1,)),
    ("MODEL.RESNETS.WIDTH_PER_GROUP", (64,)),
    ("MODEL.RESNETS.RES5_DILATION", (1,)),
    ("MODEL.RESNETS.STEM_OUT_CHANNELS", (64,)),
    ("MODEL.RESNETS.RES2_OUT_CHANNELS", (256,)),
    ("MODEL.RESNETS.DEFORM_ON_PER_STAGE", ([False] * 4,)),
    ("MODEL.FPN.NORM", ("",)),
    ("MODEL.FPN.FUSE_TYPE", ("sum",)),
    ("MODEL.ANCHOR_GENERATOR.NAME", ("DefaultAnchorGenerator",)),
    ("MODEL.ANCHOR_GENERATOR.SIZES", (_FPN_SIZES,)),
    ("MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS", ([_RATIOS], [_RATIOS] * 5)),
    ("MODEL.ANCHOR_GENERATOR.OFFSET", (0.0,)),
    ("MODEL.PROPOSAL_GENERATOR.NAME", ("RPN",)),
    ("MODEL.RPN.HEAD_NAME", ("StandardRPNHead",)),
    ("MODEL.RPN.BBOX_REG_WEIGHTS", ([1.0, 1.0, 1.0, 1.0],)),
    ("MODEL.ROI_HEADS.NAME", ("StandardROIHeads",)),
    ("MODEL.ROI_BOX_HEAD.NAME", ("FastRCNNConvFCHead",)),
    ("MODEL.ROI_BOX_HEAD.NUM_FC", (2,)),
    ("MODEL.ROI_BOX_HEAD.NUM_CONV", (0,)),
    ("MODEL.ROI_BOX_HEAD.NORM", ("",)),
    ("MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION", (7,)),
    ("MODEL.ROI_BOX_HEAD.BBOX_REG_WEIGHTS", ([10.0, 10.0, 5.0, 5.0],)),
    ("MODEL.ROI_MASK_HEAD.NAME", ("MaskRCNNConvUpsampleHead",)),
    ("MODEL.ROI_MASK_HEAD.NUM_CONV", (4,)),
    ("MODEL.ROI_MASK_HEAD.NORM", ("",)),
    ("MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION", (14,)),
)
#: inference settings liverrt fixes (torchvision's values): a differing config value is reported, not refused
_INFERENCE_ONLY = {"MODEL.RPN.NMS_THRESH": 0.7, "MODEL.ROI_HEADS.SCORE_THRESH_TEST": 0.05,
                   "MODEL.ROI_HEADS.NMS_THRESH_TEST": 0.5}

_NORM = r"(?P<f>weight|bias|running_mean|running_var)"
_P = r"(?P<p>weight|bias)"
_BLOCK = r"backbone\.bottom_up\.res(?P<s>[2-5])\.(?P<i>\d+)"


def _layer(m: re.Match) -> str:
    return f"backbone.body.layer{int(m['s']) - 1}.{m['i']}"


#: (Detectron2 name pattern, liverrt name without ``net.``, predictor transform or None)
_RULES: tuple[tuple[re.Pattern, Callable[[re.Match], str], str | None], ...] = tuple(
    (re.compile(pattern), target, transform) for pattern, target, transform in (
        (r"backbone\.bottom_up\.stem\.conv1\.weight", lambda m: "backbone.body.conv1.weight", None),
        (rf"backbone\.bottom_up\.stem\.conv1\.norm\.{_NORM}", lambda m: f"backbone.body.bn1.{m['f']}", None),
        (rf"{_BLOCK}\.conv(?P<k>[1-3])\.weight", lambda m: f"{_layer(m)}.conv{m['k']}.weight", None),
        (rf"{_BLOCK}\.conv(?P<k>[1-3])\.norm\.{_NORM}", lambda m: f"{_layer(m)}.bn{m['k']}.{m['f']}", None),
        (rf"{_BLOCK}\.shortcut\.weight", lambda m: f"{_layer(m)}.downsample.0.weight", None),
        (rf"{_BLOCK}\.shortcut\.norm\.{_NORM}", lambda m: f"{_layer(m)}.downsample.1.{m['f']}", None),
        (rf"backbone\.fpn_lateral(?P<s>[2-5])\.{_P}",
         lambda m: f"backbone.fpn.inner_blocks.{int(m['s']) - 2}.0.{m['p']}", None),
        (rf"backbone\.fpn_output(?P<s>[2-5])\.{_P}",
         lambda m: f"backbone.fpn.layer_blocks.{int(m['s']) - 2}.0.{m['p']}", None),
        (rf"proposal_generator\.rpn_head\.conv\.{_P}", lambda m: f"rpn.head.conv.0.0.{m['p']}", None),
        (rf"proposal_generator\.rpn_head\.objectness_logits\.{_P}", lambda m: f"rpn.head.cls_logits.{m['p']}", None),
        (rf"proposal_generator\.rpn_head\.anchor_deltas\.{_P}", lambda m: f"rpn.head.bbox_pred.{m['p']}", None),
        (rf"roi_heads\.box_head\.fc(?P<i>[12])\.{_P}",
         lambda m: f"roi_heads.box_head.fc{int(m['i']) + 5}.{m['p']}", None),
        (rf"roi_heads\.box_predictor\.cls_score\.{_P}", lambda m: f"roi_heads.box_predictor.cls_score.{m['p']}",
         "cls"),
        (rf"roi_heads\.box_predictor\.bbox_pred\.{_P}", lambda m: f"roi_heads.box_predictor.bbox_pred.{m['p']}",
         "box"),
        (rf"roi_heads\.mask_head\.mask_fcn(?P<i>[1-4])\.{_P}",
         lambda m: f"roi_heads.mask_head.{int(m['i']) - 1}.0.{m['p']}", None),
        (rf"roi_heads\.mask_head\.deconv\.{_P}", lambda m: f"roi_heads.mask_predictor.conv5_mask.{m['p']}", None),
        (rf"roi_heads\.mask_head\.predictor\.{_P}",
         lambda m: f"roi_heads.mask_predictor.mask_fcn_logits.{m['p']}", "mask"),
    )
)
#: Detectron2 entries that carry nothing liverrt loads, and why
HARMLESS_EXTRAS: tuple[tuple[re.Pattern, str], ...] = (
    (re.compile(r"pixel_(mean|std)"),
     "input normalisation buffers (used for pixel_mean/pixel_std only when no config is given)"),
    (re.compile(r".*\.num_batches_tracked"), "BatchNorm step counters (frozen BatchNorm does not use them)"),
    (re.compile(r"proposal_generator\.anchor_generator\.cell_anchors\.\d+"),
     "anchor templates (rebuilt from the anchor sizes, which match)"),
)


# ----------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class Detectron2Checkpoint:
    """A Detectron2 state dict (``name -> float tensor``) and what the file said about itself."""

    state: dict[str, Tensor]
    path: Path
    author: str | None = None
    iteration: int | None = None
    notes: tuple[str, ...] = ()


def read_detectron2_checkpoint(path: Path, trust_pickle: bool = False) -> Detectron2Checkpoint:
    """Read a Detectron2 ``.pth`` (``torch.load(weights_only=True)``) or, with ``trust_pickle``, a ``.pkl``.

    Accepts ``{"model": state_dict, ...}`` (Detectron2's own files and model-zoo
    pickles) or a bare state dict. Caffe2/Detectron (v1) blob names are refused.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"Detectron2 checkpoint {path} does not exist; expected a .pth or .pkl file.")
    if path.suffix.lower() == ".pkl":
        if not trust_pickle:
            raise InputError(
                f"{path} is a pickle (.pkl): loading it can run code stored in the file, so it is refused by "
                "default. Pass --trust-pickle (trust_pickle=True) if you trust where it came from, or re-save its "
                "weights as tensors (torch.save({'model': {k: torch.as_tensor(v)}}, 'model.pth')) and import that."
            )
        try:
            with path.open("rb") as f:
                data = pickle.load(f, encoding="latin1")
        except Exception as exc:
            raise ArtifactError(f"Cannot unpickle {path} ({_first_line(exc)}); expected a Detectron2 .pkl.") from exc
    else:
        data = _torch_load(path, trust_pickle)
    return _unwrap(path, data)


def _torch_load(path: Path, trust_pickle: bool):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        text = str(exc)
        if "Unsupported global" not in text and "unrecognized function" not in text:
            reason = re.search(r"WeightsUnpickler error:\s*(.+)", text)
            raise ArtifactError(f"Cannot read {path} as a PyTorch file "
                                f"({reason.group(1).strip() if reason else _first_line(exc)}).") from exc
        if not trust_pickle:
            found = re.search(r"GLOBAL ([\w.]+)", text)
            what = f" ({found.group(1)})" if found else ""
            numpy_hint = ("numpy arrays" if "numpy" in (found.group(1) if found else "")
                          else "Python objects other than tensors")
            raise ArtifactError(
                f"{path} holds {numpy_hint}{what}, which torch.load(weights_only=True) refuses because "
                "unpickling them can run code. Pass --trust-pickle (trust_pickle=True) if you trust the file, "
                "or re-save it with tensors only."
            ) from exc
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise ArtifactError(f"Cannot read {path} even as a trusted pickle ({_first_line(exc)}).") from exc


def _unwrap(path: Path, data) -> Detectron2Checkpoint:
    if not isinstance(data, Mapping):
        raise ArtifactError(f"{path} holds a {type(data).__name__}; expected a dict (a Detectron2 checkpoint).")
    if data.get("format") == "liverrt.checkpoint":
        raise ArtifactError(f"{path} is already a liverrt checkpoint; expected a Detectron2 .pth/.pkl.")
    author = data.get("__author__")
    if "blobs" in data:
        raise ArtifactError(_caffe2_message(path, author))
    if isinstance(data.get("model"), Mapping):
        raw = data["model"]
    elif data and all(isinstance(v, Tensor | np.ndarray) for v in data.values()):
        raw = data
    else:
        raise ArtifactError(f"{path}: no 'model' state dict and not a bare state dict (top-level keys "
                            f"{sorted(map(str, data))[:8]}); expected a Detectron2 checkpoint.")
    notes: list[str] = []
    if raw and all(str(k).startswith("module.") for k in raw):
        raw = {str(k)[len("module."):]: v for k, v in raw.items()}
        notes.append("stripped the 'module.' prefix of a DistributedDataParallel state dict")
    if _looks_caffe2(raw):
        raise ArtifactError(_caffe2_message(path, author))
    state: dict[str, Tensor] = {}
    for key, value in raw.items():
        if isinstance(value, np.ndarray):
            value = torch.from_numpy(np.array(value))
        if not isinstance(value, Tensor):
            raise ArtifactError(f"{path}: entry {key!r} is a {type(value).__name__}; expected a tensor or array.")
        state[str(key)] = value
    iteration = data.get("iteration")
    return Detectron2Checkpoint(state=state, path=path, author=str(author) if author is not None else None,
                                iteration=int(iteration) if isinstance(iteration, int) else None,
                                notes=tuple(notes))


def _looks_caffe2(state: Mapping) -> bool:
    keys = [str(k) for k in state]
    return bool(keys) and sum("." not in k for k in keys) > len(keys) / 2 and any(
        re.search(r"_(w|b|s)$", k) for k in keys)


def _caffe2_message(path: Path, author) -> str:
    return (f"{path} holds Caffe2/Detectron (v1) blob names (author {author!r}, e.g. 'res2_0_branch2a_w'), not "
            "Detectron2 module names; only Detectron2-named checkpoints are imported. Load it once in Detectron2 "
            "(its checkpointer renames Caffe2 blobs) and save model.state_dict() to a .pth.")


def read_detectron2_config(path: Path) -> dict:
    """A Detectron2 YAML config as a nested dict, its ``_BASE_`` chain merged in (the file wins).

    Only the file's own keys are returned; :data:`DEFAULTS` fill the rest at conversion.
    """
    return _read_yaml(Path(path), ())


class _Loader(yaml.SafeLoader):
    """Safe loading, plus the ``!!python/tuple`` tag that ``yaml.dump`` writes for tuples."""


_Loader.add_constructor("tag:yaml.org,2002:python/tuple", lambda loader, node: loader.construct_sequence(node))


def _read_yaml(path: Path, chain: tuple[Path, ...]) -> dict:
    if path.suffix == ".py":
        raise InputError(f"{path} is a Detectron2 LazyConfig (.py); expected a YAML config (cfg.dump()).")
    if not path.is_file():
        via = f" (the _BASE_ of {chain[-1]})" if chain else ""
        raise InputError(f"Detectron2 config {path}{via} does not exist; expected a YAML file. Note: cfg.dump() "
                         "writes a self-contained config without _BASE_.")
    if path.resolve() in chain:
        raise InputError(f"Detectron2 config {path}: _BASE_ chain loops back to itself.")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise InputError(f"Detectron2 config {path} is not valid YAML ({_first_line(exc)}).") from exc
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise InputError(f"Detectron2 config {path}: got a {type(data).__name__} at the top; expected a mapping.")
    base = data.pop("_BASE_", None)
    if base is None:
        return data
    if not isinstance(base, str) or "://" in base:
        raise InputError(f"Detectron2 config {path}: _BASE_ {base!r}; expected a local file path (nothing is "
                         "downloaded).")
    base_path = Path(base).expanduser()
    if not base_path.is_absolute():
        base_path = path.parent / base_path
    return _merge(_read_yaml(base_path, (*chain, path.resolve())), data)


def _merge(base: dict, over: Mapping) -> dict:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


# ----------------------------------------------------------------------------- conversion


@dataclass(frozen=True)
class ConversionNotes:
    """What the conversion decided, and from where.

    ``values`` maps each Detectron2 key that shaped the model to
    ``{"value": ..., "from": "config" | "default" | "weights"}``.
    """

    notes: tuple[str, ...]
    values: dict = field(default_factory=dict)
    ignored_keys: tuple[str, ...] = ()
    config_given: bool = False

    def to_dict(self) -> dict:
        return {"notes": list(self.notes), "values": copy.deepcopy(self.values),
                "ignored_keys": list(self.ignored_keys), "config_given": self.config_given}


class _Values:
    """Config lookups (file over :data:`DEFAULTS`) that remember where each value came from."""

    def __init__(self, cfg: Mapping | None) -> None:
        self.user = dict(cfg or {})
        self.given = cfg is not None
        self.tree = _merge(DEFAULTS, self.user)
        self.used: dict[str, dict] = {}

    def in_file(self, key: str) -> bool:
        node = self.user
        for part in key.split("."):
            if not isinstance(node, Mapping) or part not in node:
                return False
            node = node[part]
        return True

    def get(self, key: str):
        node = self.tree
        for part in key.split("."):
            node = node.get(part) if isinstance(node, Mapping) else None
        return node

    def use(self, key: str, value=None, source: str | None = None):
        if source is None:
            value, source = self.get(key), "config" if self.in_file(key) else "default"
        self.used[key] = {"value": _plain(value), "from": source}
        return value


def convert_detectron2_state_dict(
    d2_state: Mapping[str, Tensor | np.ndarray], cfg: Mapping | None = None, *, size: int = 512,
) -> tuple[dict[str, Tensor], dict, ConversionNotes]:
    """Detectron2 Mask R-CNN weights (+ its config tree) -> ``(liverrt state dict, model config, notes)``.

    ``cfg`` is :func:`read_detectron2_config`'s dict; ``None`` infers what the
    weights tell and takes Detectron2's defaults for the rest. ``size`` is the
    square input the model will see. Every returned tensor is float32 on CPU
    and its shape was checked against ``LiverMaskRCNN(**model_config)``.
    Raises :class:`ArtifactError` on any mismatch, unknown key or missing weight.
    """
    state = {str(k): (torch.from_numpy(np.array(v)) if isinstance(v, np.ndarray) else v) for k, v in d2_state.items()}
    if not any(k.startswith("backbone.bottom_up.") for k in state):
        raise ArtifactError(_not_detectron2_message(state))
    values = _Values(cfg)
    notes = [("config given: keys absent from it take Detectron2's defaults (Base-RCNN-FPN values for the "
              "architecture)") if values.given else
             ("no config given: depth, class count, class-agnostic heads, head widths and stored pixel statistics "
              "were inferred from the weights; everything else takes Detectron2's defaults")]
    _check_architecture(values)
    depth = _depth(state, values)
    k, box_agnostic, mask_agnostic = _classes(state, values, notes)
    widths = _widths(state, values)
    in_channels, mean, std, fmt = _input(state, values, notes)
    roi_aligned, sampling_ratio = _poolers(values)
    stride_in_1x1 = bool(values.use("MODEL.RESNETS.STRIDE_IN_1X1"))
    norm = values.use("MODEL.RESNETS.NORM")
    if norm != "FrozenBN":
        notes.append(f"MODEL.RESNETS.NORM={norm}: in inference BatchNorm is the same affine map as frozen "
                     "BatchNorm (eps 1e-5), so it is imported as norm='frozen_bn'")
    pre, post = values.use("MODEL.RPN.PRE_NMS_TOPK_TEST"), values.use("MODEL.RPN.POST_NMS_TOPK_TEST")
    notes += _inference_notes(values, size)
    with torch.device("meta"):
        target = LiverMaskRCNN(
            depth=depth, num_classes=k + 1, norm="frozen_bn", in_channels=in_channels, input_scale=255.0,
            pixel_mean=mean, pixel_std=std, input_format=fmt, stride_in_1x1=stride_in_1x1,
            roi_aligned=roi_aligned, sampling_ratio=sampling_ratio, image_size=size,
            rpn_pre_nms_top_n_test=int(pre), rpn_post_nms_top_n_test=int(post), **widths,
        )
    model_config = dict(target.config)
    mapped, ignored = _rename(state, k, box_agnostic, mask_agnostic)
    _check_against(mapped, target.net.state_dict(), depth)
    notes.append(f"class order: Detectron2 puts background last in cls_score and has no background slot in "
                 f"bbox_pred or the mask predictor; torchvision puts it first: cls_score rows reordered, zero "
                 f"background rows/channel inserted ({k} foreground class(es))")
    if ignored:
        kinds = sorted({why for _, why in ignored})
        notes.append(f"ignored {len(ignored)} Detectron2 entries: " + "; ".join(kinds))
    out = {f"net.{name}": tensor.float().contiguous() for name, (_, tensor) in mapped.items()}
    return out, model_config, ConversionNotes(notes=tuple(notes), values=values.used,
                                              ignored_keys=tuple(key for key, _ in ignored),
                                              config_given=values.given)


def _check_architecture(values: _Values) -> None:
    bad = []
    for key, accepted in _FIXED:
        got = values.get(key)
        if not any(_same(got, a) for a in accepted):
            bad.append(f"{key}={got!r} (liverrt builds {' or '.join(repr(a) for a in accepted)})")
    if bad:
        raise ArtifactError("The Detectron2 config describes a model liverrt's Mask R-CNN cannot hold: "
                            + "; ".join(bad) + ". Expected a mask_rcnn_R_50/R_101_FPN config.")


def _depth(state: dict, values: _Values) -> int:
    blocks = sorted({int(m[1]) for key in state if (m := re.match(r"backbone\.bottom_up\.res4\.(\d+)\.", key))})
    n = len(blocks)
    if n not in DEPTH_OF_RES4:
        raise ArtifactError(f"backbone.bottom_up.res4 has {n} blocks; expected 6 (R-50) or 23 (R-101).")
    depth = DEPTH_OF_RES4[n]
    if values.given:
        wanted = int(values.use("MODEL.RESNETS.DEPTH"))
        if wanted != depth:
            expect = STAGE_BLOCKS[wanted][2] if wanted in STAGE_BLOCKS else "?"
            raise ArtifactError(
                f"backbone.bottom_up.res4: the checkpoint has {n} blocks (res4.0..{n - 1}, R-{depth}) but "
                f"MODEL.RESNETS.DEPTH={wanted} expects {expect}; the weights and the config disagree.")
    else:
        values.use("MODEL.RESNETS.DEPTH", depth, "weights")
    return depth


def _classes(state: dict, values: _Values, notes: list[str]) -> tuple[int, bool, bool]:
    cls = _need(state, "roi_heads.box_predictor.cls_score.weight")
    box = _need(state, "roi_heads.box_predictor.bbox_pred.weight")
    mask = _need(state, "roi_heads.mask_head.predictor.weight")
    k = cls.shape[0] - 1
    if k < 1:
        raise ArtifactError(f"roi_heads.box_predictor.cls_score.weight has shape {tuple(cls.shape)}; expected "
                            "at least 2 rows (1 foreground class + background).")
    if values.given:
        wanted = int(values.use("MODEL.ROI_HEADS.NUM_CLASSES"))
        if wanted != k:
            raise ArtifactError(
                f"roi_heads.box_predictor.cls_score.weight: checkpoint shape {tuple(cls.shape)}, but "
                f"MODEL.ROI_HEADS.NUM_CLASSES={wanted} expects {(wanted + 1, *cls.shape[1:])} (classes + background).")
        box_agnostic = bool(values.use("MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG"))
        mask_agnostic = bool(values.use("MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK"))
    else:
        box_agnostic, mask_agnostic = box.shape[0] == 4 and k > 1, mask.shape[0] == 1 and k > 1
        values.use("MODEL.ROI_HEADS.NUM_CLASSES", k, "weights")
        values.use("MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG", box_agnostic, "weights")
        values.use("MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK", mask_agnostic, "weights")
    for key, t, rows, what in (
        ("roi_heads.box_predictor.bbox_pred.weight", box, 4 if box_agnostic else 4 * k,
         f"MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG={box_agnostic}"),
        ("roi_heads.mask_head.predictor.weight", mask, 1 if mask_agnostic else k,
         f"MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK={mask_agnostic}"),
    ):
        if t.shape[0] != rows:
            raise ArtifactError(f"{key}: checkpoint shape {tuple(t.shape)}, but {k} class(es) with {what} "
                                f"expect {(rows, *t.shape[1:])}.")
    if box_agnostic:
        notes.append(f"class-agnostic box regression (4 rows) replicated to each of the {k} classes")
    if mask_agnostic:
        notes.append(f"class-agnostic mask (1 channel) replicated to each of the {k} classes")
    return k, box_agnostic, mask_agnostic


def _widths(state: dict, values: _Values) -> dict:
    out = {}
    for arg, key, d2key in (("fpn_channels", "backbone.fpn_lateral2.weight", "MODEL.FPN.OUT_CHANNELS"),
                            ("box_head_dim", "roi_heads.box_head.fc1.weight", "MODEL.ROI_BOX_HEAD.FC_DIM"),
                            ("mask_head_channels", "roi_heads.mask_head.mask_fcn1.weight",
                             "MODEL.ROI_MASK_HEAD.CONV_DIM")):
        t = _need(state, key)
        got = int(t.shape[0])
        if values.given:
            wanted = int(values.use(d2key))
            if wanted != got:
                raise ArtifactError(f"{key}: checkpoint shape {tuple(t.shape)}, but {d2key}={wanted} expects "
                                    f"{(wanted, *t.shape[1:])}.")
        else:
            values.use(d2key, got, "weights")
        out[arg] = got
    return out


def _input(state: dict, values: _Values, notes: list[str]) -> tuple[int, list[float], list[float], str]:
    conv1 = _need(state, "backbone.bottom_up.stem.conv1.weight")
    channels = int(conv1.shape[1])
    stats = {}
    for name in ("pixel_mean", "pixel_std"):
        key = f"MODEL.{name.upper()}"
        stored = [float(v) for v in state[name].flatten()] if name in state else None
        if stored is not None and not values.given:
            stats[name] = values.use(key, stored, "weights")
        else:
            stats[name] = [float(v) for v in values.use(key)]
            if stored is not None and not np.allclose(stored, stats[name]):
                notes.append(f"the checkpoint's stored {name} {stored} differs from the config's {stats[name]}; "
                             "the config's is used, as Detectron2 does")
        if len(stats[name]) != channels:
            raise ArtifactError(f"backbone.bottom_up.stem.conv1.weight has {channels} input channel(s) (shape "
                                f"{tuple(conv1.shape)}), but {key} has {len(stats[name])} value(s); expected one "
                                "per channel.")
    fmt = str(values.use("INPUT.FORMAT"))
    if fmt not in ("BGR", "RGB", "L") or (fmt == "L") != (channels == 1):
        raise ArtifactError(f"INPUT.FORMAT={fmt!r} with a {channels}-channel stem; liverrt imports BGR or RGB "
                            "(3 channels) or L (1 channel).")
    if channels == 3:
        notes.append(f"input: a grey CT slice in [0, 1] is scaled to 0..255 and repeated to 3 channels; "
                     f"pixel_mean {stats['pixel_mean']} and pixel_std {stats['pixel_std']} kept in {fmt} order "
                     "(equal channels make the order matter only for pairing statistics with conv1 channels)")
    return channels, stats["pixel_mean"], stats["pixel_std"], fmt


def _poolers(values: _Values) -> tuple[bool, int]:
    kinds = {values.use(f"MODEL.{h}.POOLER_TYPE") for h in ("ROI_BOX_HEAD", "ROI_MASK_HEAD")}
    ratios = {int(values.use(f"MODEL.{h}.POOLER_SAMPLING_RATIO")) for h in ("ROI_BOX_HEAD", "ROI_MASK_HEAD")}
    if len(kinds) != 1 or not kinds <= {"ROIAlign", "ROIAlignV2"}:
        raise ArtifactError(f"POOLER_TYPE of the box and mask heads: {sorted(kinds)}; liverrt supports one shared "
                            "'ROIAlignV2' (aligned) or 'ROIAlign' (not aligned).")
    if len(ratios) != 1:
        raise ArtifactError(f"POOLER_SAMPLING_RATIO differs between box and mask heads ({sorted(ratios)}); "
                            "liverrt uses one for both.")
    return kinds.pop() == "ROIAlignV2", ratios.pop()


def _inference_notes(values: _Values, size: int) -> list[str]:
    notes = []
    for key, fixed in _INFERENCE_ONLY.items():
        got = values.use(key)
        if not _same(got, fixed):
            notes.append(f"{key}={got} is not carried over: liverrt's torchvision heads use {fixed}")
    min_size = int(values.use("INPUT.MIN_SIZE_TEST"))
    if min_size and min_size != size:
        match = max(32, round(min_size / 32) * 32)
        notes.append(f"Detectron2 resizes each test image so its short side is INPUT.MIN_SIZE_TEST={min_size}; "
                     f"this checkpoint brings slices to {size}x{size} (its PreprocessSpec) and no further, so "
                     f"objects reach the network at {size}/{min_size} = {size / min_size:.2f}x Detectron2's test "
                     f"scale; import with size {match} to match it")
    notes.append("torchvision rounds anchor templates to whole pixels (Detectron2 keeps fractions, e.g. 45.25x22.6 "
                 "vs 46x22) and pastes masks into the image with its own routine: proposals and mask borders can "
                 "differ slightly from Detectron2's")
    return notes


def _rename(state: dict, k: int, box_agnostic: bool, mask_agnostic: bool):
    """-> ({liverrt name: (Detectron2 name, tensor)}, [(ignored name, why)]); unknown names raise."""
    mapped: dict[str, tuple[str, Tensor]] = {}
    ignored, unknown = [], []
    for key, tensor in state.items():
        for pattern, target, transform in _RULES:
            if m := pattern.fullmatch(key):
                mapped[target(m)] = (key, _TRANSFORMS[transform](tensor, k, box_agnostic, mask_agnostic))
                break
        else:
            why = next((why for pattern, why in HARMLESS_EXTRAS if pattern.fullmatch(key)), None)
            (ignored.append((key, why)) if why else unknown.append(key))
    if unknown:
        raise ArtifactError(f"{len(unknown)} Detectron2 weight(s) have no place in liverrt's Mask R-CNN: "
                            f"{_few(unknown)}. Expected only a Mask R-CNN R-50/R-101 FPN (no keypoint, "
                            "cascade or semantic heads).")
    return mapped, ignored


def _check_against(mapped: dict, target: Mapping[str, Tensor], depth: int) -> None:
    extra = sorted(f"{d2} -> net.{name}" for name, (d2, _) in mapped.items() if name not in target)
    if extra:
        raise ArtifactError(f"{len(extra)} Detectron2 weight(s) have no counterpart in an R-{depth} Mask R-CNN: "
                            f"{_few(extra)}.")
    missing = sorted(f"net.{name}" for name in target if name not in mapped)
    if missing:
        raise ArtifactError(f"the checkpoint lacks {len(missing)} weight(s) liverrt's R-{depth} Mask R-CNN needs: "
                            f"{_few(missing)} (a Faster R-CNN without mask head, or a truncated file?).")
    wrong = [f"{d2} {tuple(t.shape)} -> net.{name} {tuple(target[name].shape)}"
             for name, (d2, t) in mapped.items() if tuple(t.shape) != tuple(target[name].shape)]
    if wrong:
        raise ArtifactError(f"{len(wrong)} weight shape(s) differ between the checkpoint and the model its config "
                            f"describes (checkpoint shape -> model shape): {_few(wrong)}.")


def _cls_rows(t: Tensor, k: int, *_) -> Tensor:
    """(K+1, ...) with background last -> background first."""
    return torch.cat([t[k:k + 1], t[:k]])


def _box_rows(t: Tensor, k: int, box_agnostic: bool, _mask_agnostic: bool) -> Tensor:
    """(4K or 4, ...) -> (4(K+1), ...): zero rows for background, then one 4-row block per class."""
    fg = t.repeat(k, *[1] * (t.ndim - 1)) if box_agnostic else t
    return torch.cat([t.new_zeros((4, *t.shape[1:])), fg])


def _mask_rows(t: Tensor, k: int, _box_agnostic: bool, mask_agnostic: bool) -> Tensor:
    """(K or 1, ...) -> (K+1, ...): a zero background channel, then one per class."""
    fg = t.repeat(k, *[1] * (t.ndim - 1)) if mask_agnostic else t
    return torch.cat([t.new_zeros((1, *t.shape[1:])), fg])


_TRANSFORMS: dict[str | None, Callable[..., Tensor]] = {
    None: lambda t, *_: t, "cls": _cls_rows, "box": _box_rows, "mask": _mask_rows}


def _need(state: dict, key: str) -> Tensor:
    if key not in state:
        raise ArtifactError(f"the checkpoint has no {key!r}; expected a Detectron2 Mask R-CNN (FPN) state dict.")
    return state[key]


def _not_detectron2_message(state: Mapping) -> str:
    keys = sorted(state)
    hint = ""
    if any(k.startswith("net.backbone.body.") for k in keys):
        hint = " It looks like a liverrt state dict."
    elif any(k.startswith("backbone.body.") for k in keys):
        hint = " It looks like a torchvision Mask R-CNN, not Detectron2."
    return (f"No Detectron2 backbone weights (backbone.bottom_up.*) among {len(keys)} entries, e.g. "
            f"{keys[:3]}.{hint} Expected a Detectron2 Mask R-CNN R-50/R-101 FPN checkpoint.")


def _same(a, b) -> bool:
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return float(a) == float(b)
    return a == b


def _plain(value):
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _few(items: list[str], n: int = 8) -> str:
    return ", ".join(items[:n]) + (f" (and {len(items) - n} more)" if len(items) > n else "")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:200]


# ----------------------------------------------------------------------------- the whole import


@writes_outputs("liverrt import-detectron2")
def import_detectron2(
    model_path: Path,
    out: Path,
    config_path: Path | None = None,
    trust_pickle: bool = False,
    size: int = 512,
    *,
    spec: PreprocessSpec | None = None,
    on_note: Callable[[str], None] | None = None,
    overwrite: bool = False,
) -> Path:
    """Convert a Detectron2 Mask R-CNN checkpoint into a liverrt checkpoint at ``out``.

    ``spec`` defaults to ``PreprocessSpec(size=size, input_domain="8bit",
    quantize_8bit=True)`` with the default CT window: Detectron2 reads 8-bit
    images, so the imported network has only seen 256 grey levels. Each
    conversion note goes to ``on_note`` (default: the log). The checkpoint's
    ``"detectron2"`` entry records the source file, its sha256, the config
    values used and the notes. Nothing is written if anything fails.
    """
    model_path, out = Path(model_path), Path(out)
    inputs = tuple(p for p in (model_path, config_path) if p is not None)
    refuse_overwriting_inputs(out, inputs)
    check_replaceable(out)  # before converting: a file liverrt did not write is not replaced
    spec = spec or PreprocessSpec(size=size, input_domain="8bit", quantize_8bit=True)
    if spec.size != size:
        raise InputError(f"PreprocessSpec.size {spec.size} differs from size {size}; expected the same input size.")
    cfg = read_detectron2_config(Path(config_path)) if config_path is not None else None
    ckpt = read_detectron2_checkpoint(model_path, trust_pickle=trust_pickle)
    state, model_config, report = convert_detectron2_state_dict(ckpt.state, cfg, size=size)
    model = LiverMaskRCNN(**model_config)
    model.load_state_dict(state, strict=True)
    model.eval()
    notes = [*ckpt.notes, *report.notes,
             f"preprocess: HU window {spec.window_center:g}/{spec.window_width:g} -> [0, 1]"
             + (" quantized to 256 levels, like the 8-bit images Detectron2 reads" if spec.quantize_8bit else "")
             + "; it must match how the training images were windowed, which a Detectron2 config does not record"]
    for note in notes:
        (on_note or log.info)(note)
    record = {
        "source": model_path.name, "sha256": sha256_file(model_path), "author": ckpt.author,
        "iteration": ckpt.iteration, "config": Path(config_path).name if config_path is not None else None,
        "config_sha256": sha256_file(Path(config_path)) if config_path is not None else None,
        **report.to_dict(), "notes": notes,
    }
    return save_checkpoint(out, model, model_name=f"detectron2_mask_rcnn_R_{model_config['depth']}_FPN", spec=spec,
                           extra={"detectron2": record})
