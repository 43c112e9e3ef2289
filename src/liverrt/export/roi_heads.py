"""INT8 RoI heads of the split Mask R-CNN, calibrated on the RoIs the split pipeline makes.

The box and mask graphs (:mod:`liverrt.export.maskrcnn_split`) read the FPN features and RoIs that
only exist at run time: proposals after the RPN's decoding and NMS for the box head, detections
after the box head and NMS for the mask head. So their calibration feeds are recorded from the
split runtime itself (:class:`~liverrt.runtime.maskrcnn_split.SplitMaskRCNN`) running the fp32
graphs on the calibration slices: real RoIs of the model being quantised, each level's RoIs as the
runtime assigns them. Each head is then quantised in the scheme of the backbone
(:func:`~liverrt.export.precision.quantize_qdq`: symmetric per-channel weights, Q/DQ pairs, scales
tied; for onnxruntime [0, max] ranges for non-negative activations and uint8 storage) with each activation clipped
at its 99.99th percentile on those feeds. RoIAlign (no int8 kernel) stays float, and so do the layers
that write the graph outputs (class logits, box regression, mask logits): the runtime's softmax,
decoding and mask threshold read them, as the U-Net's logits stay float before its Sigmoid.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization.shape_inference import quant_pre_process

from liverrt.artifacts import artifact_info
from liverrt.artifacts.split import HEADS, SplitArtifact
from liverrt.atomic import atomic_path
from liverrt.errors import ExportError, InputError
from liverrt.export.calibrate import Feeds, RangeFit, fixed_ranges, tie_scales, unsigned_relu_ranges
from liverrt.export.graph import edit_graph
from liverrt.export.precision import int8_target, quantize_qdq, shuffle_upconvs, uint8_activations
from liverrt.runtime.maskrcnn_split import SplitMaskRCNN
from liverrt.runtime.onnxruntime_loader import CPU, ort_split_runner

#: the ops whose output layer stays float when it writes a graph output (through shape-only ops)
_COMPUTE_OPS = frozenset({"Gemm", "MatMul", "Conv", "ConvTranspose"})
_PASS_OPS = frozenset({"Add", "Reshape", "Flatten", "Identity", "Transpose", "Squeeze", "Unsqueeze", "Cast"})


def head_feeds(rpn: Path, slices: np.ndarray, *, batch_size: int = 2) -> dict[str, list[dict[str, np.ndarray]]]:
    """The box and mask graphs' inputs as the split runtime feeds them, running the fp32 artifact ``rpn`` (its
    three graphs, on onnxruntime's CPU provider) on preprocessed ``slices`` ``batch_size`` at a time; one feed
    per head call (a batch without detections gives the mask head none)."""
    split = SplitArtifact.open(rpn)
    if split is None:
        raise ExportError(f"{rpn} is not a split Mask R-CNN export; expected the rpn graph of one.")
    run = ort_split_runner(split.paths, [CPU])
    recorded: dict[str, list[dict[str, np.ndarray]]] = {part: [] for part in HEADS}

    def recording(part: str, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if part in recorded:
            recorded[part].append({name: feed[name] for name in run.inputs[part]})
        return run(part, feed)

    recording.inputs = run.inputs  # type: ignore[attr-defined]  # which export version the graphs are
    pipeline = SplitMaskRCNN(artifact_info(rpn).model_config, recording, empty_levels=True)
    for i in range(0, slices.shape[0], batch_size):
        pipeline.detect(slices[i:i + batch_size])
    return recorded


@dataclass(frozen=True)
class Int8Heads:
    """The INT8 box and mask graphs of a split Mask R-CNN, made (:func:`int8_heads`) but not yet written."""

    source: SplitArtifact  # the fp32 artifact they were made from
    models: dict[str, onnx.ModelProto]
    fits: dict[str, RangeFit]

    def write(self, target_rpn: Path) -> None:
        """Write the heads beside the rpn graph ``target_rpn`` (just written by the same export, in any precision)
        and link them to it (its manifest names them, ``heads_precision`` int8). On a failure the heads written
        here and ``target_rpn`` are removed: no rpn graph is left naming heads it does not have."""
        out = SplitArtifact(target_rpn)
        written: list[Path] = []
        try:
            for part, model in self.models.items():
                with atomic_path(out.paths[part], suffix=".onnx", protect=(self.source.paths[part],)) as tmp:
                    onnx.save(model, str(tmp))
                written.append(out.paths[part])
            out.relink(heads_precision="int8")
        except BaseException:
            for path in (*written, Path(target_rpn)):
                path.unlink(missing_ok=True)
            raise


def int8_heads(fp32_rpn: Path, slices: np.ndarray, *, target: str = "onnxruntime", method: str = "percentile",
               percentile: float = 99.99, batch_size: int = 2) -> Int8Heads:
    """The INT8 box and mask graphs of the fp32 split artifact ``fp32_rpn``, calibrated on the RoIs its pipeline
    makes from ``slices``, for ``target``. ``method``: the backbone's range method; the heads follow ``minmax``
    and take ``percentile`` ranges otherwise (the range search needs a ``prob`` output, which heads lack).
    Writes nothing. A head the slices never reach (no proposal, or no detection, on any of them) cannot be
    calibrated: InputError.
    """
    feeds = head_feeds(fp32_rpn, slices, batch_size=batch_size)
    empty = [part for part, f in feeds.items() if not f]
    if empty:
        raise InputError(f"INT8 RoI heads: the calibration slices give the {' and '.join(empty)} head no RoIs "
                         f"(the model {'detects nothing' if empty == ['mask'] else 'proposes nothing'} on them); "
                         "expected --calib cases with liver the model finds.")
    source = SplitArtifact.open(fp32_rpn)
    ranges = "minmax" if method == "minmax" else "percentile"
    models, fits = {}, {}
    for part in HEADS:
        models[part], fits[part] = quantize_head(source.paths[part], feeds[part], target=target, method=ranges,
                                                 percentile=percentile)
    return Int8Heads(source, models, fits)


def heads_to_int8(fp32_rpn: Path, target_rpn: Path, slices: np.ndarray, **options) -> dict[str, RangeFit]:
    """:func:`int8_heads` written beside the rpn graph ``target_rpn`` and linked to it; returns each head's ranges."""
    heads = int8_heads(fp32_rpn, slices, **options)
    heads.write(target_rpn)
    return heads.fits


def quantize_head(fp32: Path, feeds: Feeds, *, target: str = "onnxruntime", method: str = "percentile",
                  percentile: float = 99.99) -> tuple[onnx.ModelProto, RangeFit]:
    """The QDQ graph of one fp32 head graph for ``target``, its activation ranges (``method``: ``percentile`` or
    ``minmax``) set from ``feeds``."""
    model = onnx.load(str(fp32))
    with edit_graph(model) as graph:
        graph.fold_constants()  # the exporter's Identity on a bias: quantize_static wants initializers
    model = onnx.shape_inference.infer_shapes(model)  # types, for placing the pairs
    exclude = output_layers(model.graph)
    if int8_target(target).shuffled_upconvs:  # the mask predictor's 2x2 up-convolution, as in the U-Net
        shuffle_upconvs(model)
    with tempfile.TemporaryDirectory(prefix="liverrt-head-") as tmp:
        folded, prepared = Path(tmp) / "folded.onnx", Path(tmp) / "prepared.onnx"
        onnx.save(model, str(folded))
        quant_pre_process(str(folded), str(prepared), skip_optimization=True, skip_symbolic_shape=True)
        qdq = quantize_qdq(prepared, feeds, exclude=exclude)
        tie_scales(qdq)
        unsigned = unsigned_relu_ranges(qdq) if int8_target(target).unsigned_relus else 0
        fit = fixed_ranges(prepared, qdq, feeds, method=method, percentile=percentile)
    fit.unsigned_scales = unsigned
    if int8_target(target).uint8_activations:  # after the ranges, as write_int8 does for the rpn graph
        uint8_activations(qdq)
    return qdq, fit


def output_layers(graph: onnx.GraphProto) -> list[str]:
    """Names of the Gemm/MatMul/Conv nodes that write a graph output, directly or through shape-only ops
    and a bias Add: they stay float."""
    made_by = {o: n for n in graph.node for o in n.output}
    found: list[str] = []
    for out in graph.output:
        pending = [out.name]
        while pending:
            node = made_by.get(pending.pop())
            if node is None:
                continue
            if node.op_type in _COMPUTE_OPS:
                found.append(node.name)
            elif node.op_type in _PASS_OPS:
                pending.extend(i for i in node.input if i in made_by)
    return sorted(set(found))
