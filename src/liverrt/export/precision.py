"""fp32 ONNX -> fp16 or INT8 (Q/DQ) ONNX: the precision is written into the graph.

TensorRT 11 builds "strongly typed" networks only: its FP16/INT8 builder flags
are gone and a plan runs in the precision its ONNX graph states. So precision
variants are separate ONNX files, derived from the verified fp32 export:

* :func:`to_fp16`: float16 weights and activations, float32 graph input
  ``image`` and output ``prob``, and the accuracy-critical ops
  (:data:`KEEP_FP32_OPS`, plus an input normalisation if the graph has one)
  computed in float32 between Casts.
* :func:`to_int8`: static post-training quantisation to QDQ
  (QuantizeLinear/DequantizeLinear pairs): int8 activations (one scale per
  tensor), symmetric per-channel int8 weights, biases left in float32; the
  first layer (it reads the image), the output head (Sigmoid) and the logits
  stay float32. Steps (:mod:`liverrt.export.calibrate`): channels equalised
  between convolutions; onnxruntime's quantize_static places the Q/DQ pairs;
  scales are tied where that is exact (Relu, MaxPool, Concat); for the
  onnxruntime target Relu outputs get the range [0, amax] (zero point -128),
  for TensorRT every zero point is 0; then each activation's range is chosen
  by the error it causes at the output, and the activations no range serves
  stay float32.

Each file keeps the source's ``liverrt.*`` metadata and adds
``liverrt.precision`` and ``liverrt.source_onnx_sha256``; INT8 files add
``liverrt.calibration``. Files are written atomically and only after
``onnx.checker`` (full check) and onnxruntime's CPU provider accepted them.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import tempfile
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process
from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

import liverrt
from liverrt.artifacts import ArtifactInfo, artifact_info
from liverrt.artifacts.metadata import PRECISIONS
from liverrt.atomic import atomic_path
from liverrt.data.preprocess import PreprocessSpec, volume_input
from liverrt.data.volume import Volume
from liverrt.errors import ExportError, InputError
from liverrt.evaluation import json_safe
from liverrt.export.calibrate import (
    Feeds,
    Progress,
    RangeFit,
    equalize,
    fit_ranges,
    slice_feeds,
    tie_scales,
    unsigned_relu_ranges,
)
from liverrt.export.graph import edit_graph, producer, reroute
from liverrt.hashing import sha256_file

log = logging.getLogger(__name__)

#: the precision variants made from an fp32 ONNX
VARIANTS = tuple(p for p in PRECISIONS if p != "fp32")
CALIBRATION_METHODS = ("search", "percentile", "minmax")


@dataclass(frozen=True)
class Int8Target:
    """What the runtime an INT8 graph is written for accepts, and what it runs fastest."""

    #: Relu outputs in [0, amax] with zero point -128 (:func:`unsigned_relu_ranges`): twice the levels, and
    #: onnxruntime drops the Relus into QLinearConv. TensorRT accepts zero point 0 only.
    unsigned_relus: bool
    #: ConvTranspose as a 1x1 Conv + pixel shuffle (:func:`shuffle_upconvs`): onnxruntime's CPU provider has
    #: no int8 ConvTranspose and runs the rewrite in int8; TensorRT has int8 deconvolution.
    shuffled_upconvs: bool
    #: activations stored as uint8 (:func:`uint8_activations`): onnxruntime's CPU QLinearConv takes uint8
    #: activations; TensorRT takes int8 only.
    uint8_activations: bool


INT8_TARGETS = {
    "onnxruntime": Int8Target(unsigned_relus=True, shuffled_upconvs=True, uint8_activations=True),
    "tensorrt": Int8Target(unsigned_relus=False, shuffled_upconvs=False, uint8_activations=False),
}


def int8_target(name: str) -> Int8Target:
    """The :class:`Int8Target` called ``name``; InputError for another name."""
    if name not in INT8_TARGETS:
        raise InputError(f"INT8 target {name!r}: expected one of {tuple(INT8_TARGETS)}.")
    return INT8_TARGETS[name]


INPUT_NAME = "image"
OUTPUT_NAME = "prob"

#: Op types an fp16 graph computes in float32 (onnxruntime's list of ops without
#: fp16 kernels, e.g. NonMaxSuppression/RoiAlign/TopK for Mask R-CNN, is added
#: to it). Output heads: the probabilities are thresholded, so they are computed
#: in float32 from the fp16 logits and leave the graph without an fp16 rounding
#: (fp16 steps are 2.4e-4 just below 0.5 and 4.9e-4 near 1). Reductions and
#: normalisations: a sum over a 512x512 plane leaves fp16's range (max 65504)
#: and a variance loses its digits. Exp/Log/Pow overflow or underflow first.
#: This mirrors torch.autocast's float32 list. Resize is not in it: bilinear
#: interpolation is a convex combination and is as exact in fp16 as its inputs
#: (the converter keeps Resize's ``scales`` input in float32 by itself).
KEEP_FP32_OPS: frozenset[str] = frozenset({
    "Sigmoid", "Softmax", "LogSoftmax",
    "ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceL2", "ReduceLogSumExp",
    "InstanceNormalization", "LayerNormalization", "GroupNormalization",
    "Exp", "Log", "Pow",
})

#: Ops that turn logits into the graph's output. INT8 never quantises them nor
#: the logits they read: one int8 step of the logits (range/127, ~0.2 for a
#: trained U-Net) moves a probability near the 0.5 threshold by ~0.05, i.e. it
#: moves the liver margin, which Boundary IoU measures.
OUTPUT_HEAD_OPS: frozenset[str] = frozenset({"Sigmoid", "Softmax", "LogSoftmax"})

#: Elementwise ops that, fed by the graph input and constants only, form an
#: input normalisation ((x - mean) / std); fp16 keeps them in float32.
_NORMALISATION_OPS = frozenset({"Sub", "Div", "Mul", "Add", "Clip"})


# --------------------------------------------------------------------------- public API


def to_fp16(
    src_onnx: Path, out_onnx: Path, *, keep_fp32_ops: Iterable[str] = KEEP_FP32_OPS
) -> Path:
    """Convert a liverrt fp32 ONNX file to fp16 with float32 IO; returns ``out_onnx``.

    The graph still takes ``image`` (N, 1, S, S) float32 and returns ``prob``
    (N, 1, S, S) float32; Casts at its ends convert. Weights and activations
    are float16 except for the ops in ``keep_fp32_ops`` (see
    :data:`KEEP_FP32_OPS`) and an input normalisation (elementwise ops fed only
    by ``image`` and constants), which run in float32.
    """
    src, out = _check_paths(src_onnx, out_onnx)
    info = _source_info(src)
    model = onnx.load(str(src))
    meta = _metadata(model, src, "fp16")
    converted = _fp16_model(model, frozenset(keep_fp32_ops))
    sample = np.zeros(info.spec.input_shape(1), np.float32)
    _write(converted, meta, out, src, sample)
    log.info("wrote fp16 graph %s (from %s)", out, src)
    return out


def to_int8(
    src_onnx: Path,
    out_onnx: Path,
    calibration: np.ndarray,
    *,
    per_channel: bool = True,
    method: str = "search",
    calibration_source: str | None = None,
    batch_size: int = 4,
    quantize_conv_outputs: bool = True,
    float_input_layer: bool = True,
    target: str = "onnxruntime",
    progress: Progress | None = None,
) -> Path:
    """Statically quantise a liverrt fp32 ONNX file to INT8 QDQ; returns ``out_onnx``.

    ``calibration`` holds preprocessed slices (N, 1, S, S) float32 (see
    :func:`calibration_slices`), run through the graph ``batch_size`` at a time
    (one batch of activations in memory: ~3.6 GB for the study's U-Net at 512x512
    and batch 4). Activations get one int8 scale per Q/DQ pair (a tensor read at
    two scales, like the U-Net's skip tensor, has two pairs), Conv/ConvTranspose
    weights one symmetric scale per output channel (``per_channel``), and
    biases stay float32 (TensorRT rejects int32 bias DQ). The output head
    (:data:`OUTPUT_HEAD_OPS`) and the logits it reads stay float32.

    ``method`` sets the activation ranges (see :mod:`liverrt.export.calibrate`):
    ``search`` (default) picks each tensor's clip by the error it causes at the
    output on the calibration slices and leaves up to four activation scales
    (each a tensor and those tied to it) in float32 when the calibration
    ΔDice stays above half the int8 gate's limits;
    ``percentile`` clips every activation at its 99.99th percentile of |x|;
    ``minmax`` uses the largest |x| (broke a trained U-Net: see calibrate.py).
    ``target``: ``onnxruntime`` (default) gives non-negative activations (Relu
    outputs) the range [0, amax] with zero point -128: twice the levels, and
    onnxruntime drops the Relus into its QLinearConv; ``tensorrt`` keeps every
    zero point 0, which TensorRT requires (it refuses the other graph).
    ``progress(done, total, info)`` is called during the search.
    ``calibration_source`` (free text, e.g. the case ids) is recorded in the
    ``liverrt.calibration`` metadata next to the slice count, the method and
    what the search chose.

    ``quantize_conv_outputs`` places a Q/DQ pair on each Conv/ConvTranspose
    output (onnxruntime's default placement; its CPU provider then fuses
    DQ -> Conv -> Q into QLinearConv). With False, Q/DQ sit only on the inputs
    of the convolutions (TensorRT's recommended placement, which lets it fuse
    Conv + ReLU before quantising); onnxruntime CPU then runs every convolution
    in float and is slower than fp32.

    ``float_input_layer`` keeps the layers that read ``image`` itself (the
    first Conv) in float32: a symmetric int8 scale on a [0, 1] image leaves 128
    grey levels, coarser than the 8-bit slices the study trained on, while a
    1-channel convolution is ~1% of the U-Net's multiply-adds.
    """
    src, out = _check_paths(src_onnx, out_onnx)
    info = _source_info(src)
    _check_calibration(calibration, info.spec)
    if method not in CALIBRATION_METHODS:
        raise InputError(f"Calibration method {method!r}: expected one of {CALIBRATION_METHODS}.")
    int8_target(target)
    if batch_size < 1:
        raise InputError(f"batch_size {batch_size}: expected >= 1.")
    with tempfile.TemporaryDirectory(prefix="liverrt-int8-") as tmp:
        quantized, fit = _int8_model(src, Path(tmp), calibration, per_channel=per_channel, method=method,
                                     batch_size=batch_size, quantize_conv_outputs=quantize_conv_outputs,
                                     float_input_layer=float_input_layer, threshold=info.threshold,
                                     target=target, progress=progress)
    write_int8(quantized, src, out, calibration[:1], {
        "slices": int(calibration.shape[0]), "per_channel": bool(per_channel),
        "quantize_conv_outputs": bool(quantize_conv_outputs), "float_input_layer": bool(float_input_layer),
        "source": calibration_source, **fit.summary()}, target=target)
    log.info("wrote int8 graph %s (from %s, %d calibration slices, %s)", out, src, calibration.shape[0], method)
    return out


def write_int8(model: onnx.ModelProto, src_onnx: Path, out_onnx: Path, sample: np.ndarray,
               calibration: dict, *, target: str) -> Path:
    """Write the QDQ ``model`` made from the fp32 ``src_onnx`` for ``target`` to ``out_onnx`` (checked,
    atomically; for onnxruntime with uint8 activations, :func:`uint8_activations`).

    The file keeps the source's metadata, with ``liverrt.precision`` int8, the source's sha256 and
    ``calibration`` (how the scales were found) and ``target`` as ``liverrt.calibration``; ``sample``
    (1, C, S, S) float32 is the slice onnxruntime must run before the file is kept.
    """
    src, out = _check_paths(src_onnx, out_onnx)
    if int8_target(target).uint8_activations:
        uint8_activations(model)
    meta = _metadata(onnx.load(str(src)), src, "int8")
    meta["liverrt.calibration"] = json.dumps(json_safe({**calibration, "target": target}), sort_keys=True)
    _write(model, meta, out, src, sample)
    return out


def uint8_activations(model: onnx.ModelProto) -> int:
    """Store every activation QuantizeLinear/DequantizeLinear pair as uint8, zero point + 128 (in place); returns
    how many zero points. The same values (int8 level q is uint8 level q + 128); weights stay int8.

    onnxruntime's CPU provider fuses DequantizeLinear -> Conv -> QuantizeLinear into QLinearConv only for
    uint8 activations on both sides; its own int8 -> uint8 rewrite of the session leaves out pairs it
    cannot convert alone, such as a tensor with several readers. On the Mask R-CNN backbone that left
    every one of its 126 convolutions in float between the pairs (67 read uint8 and wrote int8): the
    int8 graph ran 0.6x of fp32; with uint8 activations 1.8x (one 256² slice, 2 threads, profile).
    """
    inits = {t.name: t for t in model.graph.initializer}
    zero_points = {n.input[2] for n in model.graph.node
                   if n.op_type == "QuantizeLinear" and n.input[0] not in inits and len(n.input) > 2}
    weight_zero_points = {n.input[2] for n in model.graph.node
                          if n.op_type == "DequantizeLinear" and n.input[0] in inits and len(n.input) > 2}
    if zero_points & weight_zero_points:
        raise ExportError("uint8 activations: a zero point is shared by an activation and a weight; expected "
                          "the graph of place_qdq.")
    converted = 0
    for name in sorted(zero_points):
        t = inits.get(name)
        if t is None or t.data_type != TensorProto.INT8:
            continue
        shifted = (numpy_helper.to_array(t).astype(np.int16) + 128).astype(np.uint8)
        t.CopyFrom(numpy_helper.from_array(shifted, name))
        converted += 1
    return converted


def convert_precision(src_onnx: Path, out_onnx: Path, precision: str, **kwargs) -> Path:
    """Dispatch to :func:`to_fp16` or :func:`to_int8` (``calibration=`` required) by name."""
    if precision == "fp16":
        return to_fp16(src_onnx, out_onnx, **kwargs)
    if precision == "int8":
        if kwargs.get("calibration") is None:
            raise InputError("INT8 needs calibration slices (calibration=...); see calibration_slices().")
        return to_int8(src_onnx, out_onnx, **kwargs)
    raise InputError(f"Precision {precision!r}: expected one of {VARIANTS} "
                     "(fp32 is the plain `liverrt export` output).")


def calibration_slices(
    volumes: Sequence[Volume], spec: PreprocessSpec, *, n: int = 64, liver_fraction: float = 0.5, seed: int = 0
) -> np.ndarray:
    """``n`` preprocessed calibration slices (n, 1, S, S) float32 from ``volumes``.

    ``volumes`` should be a case-level calibration split, disjoint from the test
    cases. About ``liver_fraction`` of the slices contain liver (by the
    volumes' masks) and the rest do not: at inference the network sees whole
    scans, and activation ranges measured on liver slices alone would clip on
    lung or pelvis slices. Slices are taken round-robin over the volumes so
    every case contributes; a short pool is filled from the other one. Volumes
    without a mask count as liver-free. Fewer than ``n`` slices are returned
    only if the volumes hold fewer.
    """
    if not volumes:
        raise InputError("calibration_slices: got no volumes; expected the calibration split's cases.")
    if n < 1:
        raise InputError(f"calibration_slices: n={n}, expected >= 1.")
    if not 0.0 <= liver_fraction <= 1.0:
        raise InputError(f"calibration_slices: liver_fraction={liver_fraction}, expected within [0, 1].")
    rng = np.random.default_rng(seed)
    liver: list[list[int]] = []
    other: list[list[int]] = []
    for vol in volumes:
        has_liver = (vol.mask.any(axis=(1, 2)) if vol.mask is not None
                     else np.zeros(vol.shape[0], bool))
        liver.append(list(rng.permutation(np.flatnonzero(has_liver))))
        other.append(list(rng.permutation(np.flatnonzero(~has_liver))))
    n = min(n, sum(v.shape[0] for v in volumes))
    want_liver = min(round(n * liver_fraction), sum(map(len, liver)))
    want_liver = max(want_liver, n - sum(map(len, other)))
    picks: list[set[int]] = [set() for _ in volumes]
    for pools, want in ((liver, want_liver), (other, n - want_liver)):
        _round_robin(pools, want, picks)
    stacks = []
    for vol, idx in zip(volumes, picks, strict=True):
        if idx:
            x, _ = volume_input(vol, np.sort(np.fromiter(idx, int)), spec)
            stacks.append(x)
    return np.ascontiguousarray(np.concatenate(stacks), dtype=np.float32)


# --------------------------------------------------------------------------- checks and writing


def _check_paths(src_onnx: Path, out_onnx: Path) -> tuple[Path, Path]:
    src, out = Path(src_onnx), Path(out_onnx)
    if src.suffix.lower() != ".onnx":
        raise InputError(f"Source {src} is not an .onnx file; expected the fp32 ONNX written by `liverrt export`.")
    if out.suffix.lower() != ".onnx":
        raise InputError(f"Output {out} should end in .onnx.")
    return src, out


def _source_info(src: Path) -> ArtifactInfo:
    info = artifact_info(src)  # InputError if missing, ArtifactError without liverrt metadata
    if info.precision != "fp32":
        raise InputError(f"{src} is already {info.precision}; expected the fp32 export as the source "
                         "(each precision is derived from fp32, so errors do not compound).")
    return info


def _check_calibration(calibration: object, spec: PreprocessSpec) -> None:
    shape = "(N, {}, {}, {})".format(*spec.input_shape(1)[1:])
    if not isinstance(calibration, np.ndarray):
        raise InputError(f"Calibration: got {type(calibration).__name__}, expected a numpy array {shape}.")
    if calibration.dtype != np.float32:
        raise InputError(f"Calibration: got {calibration.dtype}, expected float32. "
                         "Note: preprocess first (see calibration_slices / PreprocessSpec).")
    if calibration.ndim != 4 or calibration.shape[1:] != spec.input_shape(1)[1:]:
        raise InputError(f"Calibration: got shape {calibration.shape}, expected {shape} "
                         "(the model's PreprocessSpec: channels and size).")
    if calibration.shape[0] == 0:
        raise InputError("Calibration: got 0 slices, expected at least 1 (a few dozen are typical).")
    if not np.isfinite(calibration).all():
        raise InputError("Calibration: found NaN or infinite values, expected preprocessed slices in [0, 1].")


def _metadata(model: onnx.ModelProto, src: Path, precision: str) -> dict[str, str]:
    meta = {p.key: p.value for p in model.metadata_props}
    meta["liverrt.precision"] = precision
    meta["liverrt.source_onnx_sha256"] = sha256_file(src)
    return meta


def _write(model: onnx.ModelProto, meta: dict[str, str], out: Path, src: Path, sample: np.ndarray) -> None:
    """Stamp metadata, check with onnx.checker and onnxruntime (CPU), then keep the file."""
    del model.metadata_props[:]
    helper.set_model_props(model, meta)
    model.producer_name = "liverrt"
    model.producer_version = liverrt.__version__
    with atomic_path(out, suffix=".onnx", protect=(src,)) as tmp:
        try:
            onnx.checker.check_model(model, full_check=True)
        except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
            raise ExportError(f"onnx.checker rejected the {meta['liverrt.precision']} graph: {str(exc)[:300]}; "
                              f"nothing was written to {out}.") from exc
        onnx.save(model, str(tmp))
        _check_runs(tmp, sample, meta["liverrt.precision"], out)


def _check_runs(path: Path, sample: np.ndarray, precision: str, out: Path) -> None:
    try:
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        names = [o.name for o in sess.get_outputs()]
        outputs = dict(zip(names, sess.run(names, {sess.get_inputs()[0].name: sample}), strict=True))
    except Exception as exc:  # onnxruntime raises several unrelated exception types
        raise ExportError(f"onnxruntime (CPU) cannot run the {precision} graph: {str(exc)[:300]}; "
                          f"nothing was written to {out}.") from exc
    prob = outputs.get(OUTPUT_NAME)
    if prob is not None and (prob.dtype != np.float32 or prob.shape != sample.shape or not np.isfinite(prob).all()):
        raise ExportError(f"The {precision} graph returned {OUTPUT_NAME!r} as {prob.dtype} {prob.shape} (finite: "
                          f"{bool(np.isfinite(prob).all())}); expected finite float32 {sample.shape}. "
                          f"Nothing was written to {out}.")


def _round_robin(pools: list[list[int]], want: int, picks: list[set[int]]) -> None:
    taken = 0
    while taken < want:
        for pool, chosen in zip(pools, picks, strict=True):
            if pool and taken < want:
                chosen.add(int(pool.pop()))
                taken += 1


# --------------------------------------------------------------------------- fp16


def _fp16_model(model: onnx.ModelProto, keep_fp32_ops: frozenset[str]) -> onnx.ModelProto:
    _name_nodes(model.graph)
    converted = convert_float_to_float16(
        model, keep_io_types=True, op_block_list=sorted(set(DEFAULT_OP_BLOCK_LIST) | keep_fp32_ops),
        node_block_list=_input_normalisation(model.graph),
    )
    converted = onnx.shape_inference.infer_shapes(converted)
    with edit_graph(converted) as graph:
        _drop_cast_round_trips(graph)
        graph.toposort()  # the converter appends its Casts at the end
    return converted


def _name_nodes(graph: onnx.GraphProto) -> None:
    """Give each node a name: the converter's node_block_list names nodes (hand-written: no library call)."""
    used = {n.name for n in graph.node}
    for i, node in enumerate(graph.node):
        if not node.name:
            name = f"{node.op_type}_{i}"
            while name in used:
                name += "_"
            node.name = name
            used.add(name)


def _input_normalisation(graph: onnx.GraphProto) -> list[str]:
    """Names of the elementwise nodes computed from the graph input and constants only.

    Hand-written: a forward walk no onnx or onnx-graphsurgeon call makes.
    """
    consts = {t.name for t in graph.initializer} | {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    frontier = {i.name for i in graph.input} - consts
    kept = []
    for node in graph.node:  # a checked ONNX graph is topologically sorted
        ins = [i for i in node.input if i]
        if (node.op_type in _NORMALISATION_OPS and any(i in frontier for i in ins)
                and all(i in frontier or i in consts for i in ins)):
            kept.append(node.name)
            frontier.update(node.output)
    return kept


def _is_cast(node: gs.Node, to: int) -> bool:
    return node.op == "Cast" and node.attrs.get("to") == to


def _drop_cast_round_trips(graph: gs.Graph) -> None:
    """Remove float32 -> float16 -> float32 Cast pairs.

    The converter puts them between two float32 regions (a kept Sigmoid feeding
    the float32 graph output; the float32 input feeding a kept normalisation),
    where they would only round the values to fp16. The float16 Cast goes with
    the graph's cleanup once nothing else reads it.
    """
    for back in [n for n in graph.nodes if _is_cast(n, TensorProto.FLOAT)]:
        down = producer(back.inputs[0])
        if down is None or not _is_cast(down, TensorProto.FLOAT16) or down.inputs[0].dtype != np.float32:
            continue
        x, z = down.inputs[0], back.outputs[0]
        if z not in graph.outputs:
            reroute(z, x)
        elif x in graph.inputs or x in graph.outputs or isinstance(x, gs.Constant):
            back.op, back.inputs[0] = "Identity", x
            back.attrs.clear()
        else:  # the float32 producer writes the graph output itself
            back.outputs.clear()
            reroute(x, z)
            src = producer(x)
            src.outputs[src.outputs.index(x)] = z


# --------------------------------------------------------------------------- int8


class _FeedReader:
    """onnxruntime CalibrationDataReader over a graph's calibration feeds (one ``{input: batch}`` per run).

    ``set_range`` and ``__len__`` (in feeds) let quantize_static collect one
    feed per pass (``CalibStridedMinMax``), so the min-max pass never holds
    more than one batch of activations.
    """

    def __init__(self, feeds: Feeds) -> None:
        self.feeds = list(feeds)
        self.set_range(0, len(self.feeds))

    def __len__(self) -> int:
        return len(self.feeds)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._next, self._end = start_index, end_index

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._next >= self._end:
            return None
        self._next += 1
        return self.feeds[self._next - 1]

    def rewind(self) -> None:
        self.set_range(0, len(self.feeds))


def prepare_fp32(src_onnx: Path, out_onnx: Path, calibration: np.ndarray, *, batch_size: int = 4,
                 equalise: bool = True, target: str = "onnxruntime") -> int:
    """The fp32 graph the Q/DQ pairs are placed in: shapes inferred, channels equalised (see
    :func:`liverrt.export.calibrate.equalize`; the same function within float rounding, int8-friendlier),
    up-convolutions rewritten where ``target`` runs the rewrite faster (:func:`shuffle_upconvs`; the same
    function), written to ``out_onnx``; returns how many convolutions were rescaled."""
    # shape inference only: ORT's graph optimisations would add ORT-specific opset imports. ONNX's own
    # shape inference, not onnxruntime's symbolic one: that gives up on DnCNN-SR's dynamic H/W and then
    # writes sym_shape_infer_temp.onnx + .data files into the working directory; on the U-Net and the
    # Mask R-CNN backbone ONNX's types every tensor the symbolic one does, with the same types and ranks
    quant_pre_process(str(src_onnx), str(out_onnx), skip_optimization=True, skip_symbolic_shape=True)
    prepared = onnx.load(str(out_onnx))
    n_equalized = equalize(prepared, calibration, batch_size=batch_size, input_name=INPUT_NAME) if equalise else 0
    if int8_target(target).shuffled_upconvs:
        shuffle_upconvs(prepared)  # after equalize, which balances a ConvTranspose's output channels
    onnx.save(prepared, str(out_onnx))
    return n_equalized


def shuffle_upconvs(model: onnx.ModelProto) -> int:
    """Rewrite each ConvTranspose whose kernel equals its stride as a 1x1 Conv + pixel shuffle; returns how many.

    Such a ConvTranspose (no padding, one group, the U-Net's 2x2 up-convolutions) writes each input pixel's
    ``k*k`` output pixels from that pixel alone: ``out[c, k*i + a, k*j + b] = sum_m W[m, c, a, b] x[m, i, j]``.
    A 1x1 Conv computes the ``k*k*C`` values per pixel (channel ``(a*k + b)*C + c``) and a shuffle puts them
    in place: Transpose to channels-last, Reshape, swap two axes, Reshape, Transpose back. The same function
    (sums in another order: equal within float rounding). onnxruntime's CPU provider has no int8
    ConvTranspose, so the up-convolutions ran in float between a DequantizeLinear and a QuantizeLinear; it
    runs the Conv as QLinearConv and the shuffle on int8 values (:func:`~liverrt.export.calibrate.tie_scales`
    gives the shuffle's tensors one scale), and its layout optimiser cancels the two outer Transposes against
    the ones it puts around its channels-last QLinearConv. (DepthToSpace is the same shuffle in one node, but
    channels-first: onnxruntime then transposes around it, which was slower.) On the study's U-Net at 512²
    (percentile ranges, five interleaved runs on 2 idle cores, benchmarks/int8_variants.py) int8 took
    75-80 ms per slice at batch 1 against 91-95 with the ConvTransposes in float. Needs static spatial
    sizes (the U-Net's export has them; DnCNN-SR's, with dynamic sizes, stay ConvTranspose), and leaves
    one with padding, dilation, groups or output_padding.
    """
    rewritten = 0
    with edit_graph(model) as graph:
        for node in [n for n in graph.nodes if n.op == "ConvTranspose"]:
            rewritten += _shuffle_upconv(graph, node)
        graph.toposort()
    return rewritten


def _shuffle_upconv(graph: gs.Graph, node: gs.Node) -> bool:
    x, weight, bias = (list(node.inputs) + [None])[:3]
    if not isinstance(weight, gs.Constant) or weight.values.ndim != 4 or (bias is not None
                                                                          and not isinstance(bias, gs.Constant)):
        return False
    c_in, c_out, kh, kw = weight.values.shape
    attrs = node.attrs
    plain = (list(attrs.get("strides", [1, 1])) == [kh, kw] and not any(attrs.get("pads", [0])) and
             not any(attrs.get("output_padding", [0])) and set(attrs.get("dilations", [1])) == {1} and
             attrs.get("group", 1) == 1 and "output_shape" not in attrs and
             attrs.get("auto_pad", "NOTSET") in ("NOTSET", b"NOTSET"))
    shape = x.shape
    if not plain or shape is None or len(shape) != 4 or not all(isinstance(d, int) for d in shape[2:]):
        return False
    h, w = shape[2:]
    name = node.name or node.outputs[0].name
    w1 = np.ascontiguousarray(weight.values.transpose(2, 3, 1, 0).reshape(kh * kw * c_out, c_in, 1, 1))
    conv_in = [x, gs.Constant(f"{weight.name}_1x1", w1)]
    if bias is not None:
        conv_in.append(gs.Constant(f"{bias.name}_1x1", np.tile(bias.values, kh * kw)))
    t = [gs.Variable(f"{name}_shuffle{i}", dtype=np.float32) for i in range(5)]

    def shape_const(tag: str, dims: list[int]) -> gs.Constant:
        return gs.Constant(f"{name}_{tag}", np.array(dims, np.int64))

    graph.nodes += [
        gs.Node("Conv", f"{name}_1x1", inputs=conv_in, outputs=[t[0]]),
        gs.Node("Transpose", f"{name}_nhwc", {"perm": [0, 2, 3, 1]}, [t[0]], [t[1]]),
        gs.Node("Reshape", f"{name}_rows", inputs=[t[1], shape_const("rows", [0, h, w, kh, kw * c_out])],
                outputs=[t[2]]),
        gs.Node("Transpose", f"{name}_interleave", {"perm": [0, 1, 3, 2, 4]}, [t[2]], [t[3]]),
        gs.Node("Reshape", f"{name}_pixels", inputs=[t[3], shape_const("pixels", [0, h * kh, w * kw, c_out])],
                outputs=[t[4]]),
        gs.Node("Transpose", f"{name}_nchw", {"perm": [0, 3, 1, 2]}, [t[4]], list(node.outputs)),
    ]
    node.outputs.clear()
    return True


def place_qdq(prepared: Path, calibration: np.ndarray, *, per_channel: bool = True, batch_size: int = 4,
              quantize_conv_outputs: bool = True, float_input_layer: bool = True,
              target: str = "onnxruntime") -> tuple[onnx.ModelProto, int]:
    """The QDQ graph of the fp32 graph ``prepared`` (from :func:`prepare_fp32`) with min-max activation scales.

    onnxruntime's quantize_static places the pairs and quantises the weights (symmetric, per output
    channel); the logits an output head reads stay float; scales are tied (:func:`tie_scales`); for the
    onnxruntime ``target`` Relu outputs get zero point -128 (:func:`unsigned_relu_ranges`). Returns the
    graph and how many scales are unsigned. :func:`to_int8` then chooses the activation ranges;
    quantization-aware fine-tuning (:mod:`liverrt.export.qat`) learns them on this same graph.
    """
    graph = onnx.load(str(prepared)).graph
    heads = [n.name for n in graph.node if n.op_type in OUTPUT_HEAD_OPS]
    input_layer = [n.name for n in graph.node if INPUT_NAME in n.input] if float_input_layer else []
    model = quantize_qdq(prepared, slice_feeds(calibration, batch_size, INPUT_NAME), exclude=heads + input_layer,
                         per_channel=per_channel, quantize_conv_outputs=quantize_conv_outputs)
    with edit_graph(model) as qdq:
        _float_logits(qdq, heads)
    tie_scales(model)
    unsigned = unsigned_relu_ranges(model) if int8_target(target).unsigned_relus else 0
    return model, unsigned


def quantize_qdq(fp32: Path, feeds: Feeds, *, exclude: Sequence[str] = (), per_channel: bool = True,
                 quantize_conv_outputs: bool = True) -> onnx.ModelProto:
    """onnxruntime's quantize_static in liverrt's scheme: Q/DQ pairs on every quantisable op but the nodes
    ``exclude`` names, int8 activations with zero point 0 and min-max ranges over ``feeds``, symmetric int8
    weights (per output channel), float biases, one Q/DQ pair per reader."""
    extra = {
        "ActivationSymmetric": True, "WeightSymmetric": True,  # zero points 0: TensorRT's scheme
        "QuantizeBias": False,  # TensorRT rejects DequantizeLinear on int32 biases
        # one batch per calibration pass: one batch of activations in memory. (Not
        # CalibMaxIntermediateOutputs: onnxruntime 1.32 drops the data instead of merging it. Not its
        # Entropy/Percentile calibrators: merging strided histograms raises "Too many bins" in 1.32.)
        "CalibStridedMinMax": 1,
        "DedicatedQDQPair": True,
    }
    if not quantize_conv_outputs:
        extra["OpTypesToExcludeOutputQuantization"] = ["Conv", "ConvTranspose"]
    with tempfile.TemporaryDirectory(prefix="liverrt-qdq-") as tmp:
        quantized = Path(tmp) / "int8.onnx"
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            quantize_static(
                str(fp32), str(quantized), _FeedReader(feeds),
                quant_format=QuantFormat.QDQ, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                per_channel=per_channel, calibrate_method=CalibrationMethod.MinMax,
                nodes_to_exclude=list(exclude), extra_options=extra,
            )
        return onnx.load(str(quantized))


def _int8_model(src: Path, tmp: Path, calibration: np.ndarray, *, per_channel: bool, method: str,
                batch_size: int, quantize_conv_outputs: bool, float_input_layer: bool, threshold: float,
                target: str, progress: Progress | None) -> tuple[onnx.ModelProto, RangeFit]:
    prepared = tmp / "prepared.onnx"
    n_equalized = prepare_fp32(src, prepared, calibration, batch_size=batch_size, target=target)
    model, unsigned = place_qdq(prepared, calibration, per_channel=per_channel, batch_size=batch_size,
                                quantize_conv_outputs=quantize_conv_outputs, float_input_layer=float_input_layer,
                                target=target)
    # min-max ranges are where quantize_static leaves them; the method replaces them (calibrate.py)
    fit = fit_ranges(prepared, model, calibration, method=method, batch_size=batch_size, threshold=threshold,
                     input_name=INPUT_NAME, progress=progress)
    fit.equalized, fit.unsigned_scales = n_equalized, unsigned
    return model, fit


def _float_logits(graph: gs.Graph, heads: Sequence[str]) -> None:
    """Drop the Q/DQ pair between the logits and an excluded output head (see OUTPUT_HEAD_OPS)."""
    for head in [n for n in graph.nodes if n.name in heads]:
        dq = producer(head.inputs[0])
        if dq is None or dq.op != "DequantizeLinear" or len(dq.outputs[0].outputs) != 1:
            continue
        q = producer(dq.inputs[0])
        if q is None or q.op != "QuantizeLinear" or len(q.outputs[0].outputs) != 1:
            continue
        head.inputs[0] = q.inputs[0]  # the pair, now unread, leaves with the graph's cleanup
