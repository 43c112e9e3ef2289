"""INT8 activation ranges chosen by what they do to the output, and float fallback.

Min-max ranges (one symmetric int8 scale per activation tensor, set by its
largest value) broke a trained liverrt U-Net completely: the int8 graph found
0.07 % liver pixels where fp32 found 5.8 %, mean ΔDice 0.75. Its decoder
activations reach ~1000 on background while the values that decide "liver"
are a few units, so a step of max/127 ≈ 8 erases them; every tensor alone
costs little (24-35 dB SQNR), but the errors of the decoder's tensors add up
in the same direction. Clipping helps: all tensors at their 99th percentile
gave Dice 0.92 against fp32. Each tensor needs its own clip, though, and
which one is right shows only at the output.

:func:`fit_ranges` therefore chooses, for each activation scale of a QDQ
graph, the clip that minimises the error of the graph's outputs against fp32
on calibration slices:

1. |x| of every quantised activation is sampled on the calibration slices (fp32
   graph), giving candidate ranges at :data:`PERCENTILES` (100 = min-max);
2. one percentile for all scales (the best of the candidates), then
   coordinate descent: each scale in graph order tries every candidate and
   keeps the best (``sweeps`` passes; passes after the first try only the
   neighbouring candidates);
3. for a segmentation graph (output ``prob``), if the calibration slices' mean
   or worst per-slice ΔDice against fp32 is still above its target, one
   activation is left in float32 (its Q/DQ removed): the one whose float
   version closes the gap the most per share of the network's multiply-adds
   it turns float; repeated up to ``max_float`` times. TensorRT's and ModelOpt's
   layer-wise fallback, chosen by measurement.

Before the search, :func:`equalize` rescales channels between convolutions
(exact in float), :func:`tie_scales` shares scales where one rounding can
replace two (Relu, MaxPool, Concat), and for onnxruntime
:func:`unsigned_relu_ranges` gives Relu outputs [0, amax].

The objective is the sum over the graph's float outputs of their mean squared
error relative to the output's mean square, so multi-output graphs (the Mask
R-CNN backbone/RPN) weigh each output alike. (Weighting each slice's error
by its liver area, as per-slice ΔDice does, was measured too and did slightly
worse on both trained U-Nets' held-out slices.) Candidates are evaluated on one
onnxruntime session of a copy of the graph whose scales are graph inputs and
whose Q/DQ pairs can each be bypassed by a boolean input (Where), so no graph
is rebuilt per candidate. Cost: ~10 evaluations per scale and sweep, each a
run of ``eval_slices`` slices (about 2 minutes for a 128² U-Net on two cores,
much longer at 512²; ``method="percentile"`` is the one-pass alternative).
"""

from __future__ import annotations

import copy
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from liverrt.errors import ExportError
from liverrt.export.graph import sort_topologically
from liverrt.metrics import per_slice_dice

#: Candidate clips, as percentiles of |x| over the calibration slices (100: the maximum).
PERCENTILES: tuple[float, ...] = (100.0, 99.99, 99.9, 99.5, 99.0, 98.0, 95.0, 90.0, 80.0, 70.0, 60.0)
#: |x| values kept per activation tensor and calibration batch (plus the exact maximum).
SAMPLES_PER_BATCH = 1 << 17

Progress = Callable[[int, int, str], None]


@dataclass
class RangeFit:
    """What :func:`fit_ranges` chose and measured (stored in the ONNX metadata)."""

    method: str
    percentiles: dict[str, float] = field(default_factory=dict)  # scale initializer -> percentile
    float_tensors: list[str] = field(default_factory=list)
    float_scales: list[str] = field(default_factory=list)  # the scales whose Q/DQ pairs were removed
    objective_minmax: float | None = None
    objective: float | None = None
    delta_dice_minmax: float | None = None  # mean per-slice ΔDice vs fp32 on the calibration slices
    delta_dice_ranges: float | None = None  # after the range search, before float fallback
    worst_delta_dice_ranges: float | None = None
    delta_dice: float | None = None
    worst_delta_dice: float | None = None
    evaluations: int = 0
    equalized: int = 0  # convolutions whose output channels equalize() rescaled
    unsigned_scales: int = 0  # activation scales with the range [0, amax] (unsigned_relu_ranges)

    def summary(self) -> dict:
        chosen = defaultdict(int)
        for p in self.percentiles.values():
            chosen[f"{p:g}"] += 1
        return {"method": self.method, "scales_by_percentile": dict(sorted(chosen.items())),
                "float_tensors": self.float_tensors, "objective_minmax": self.objective_minmax,
                "objective": self.objective, "calib_delta_dice_minmax": self.delta_dice_minmax,
                "calib_delta_dice_ranges": self.delta_dice_ranges,
                "calib_worst_delta_dice_ranges": self.worst_delta_dice_ranges,
                "calib_worst_delta_dice": self.worst_delta_dice,
                "calib_delta_dice": self.delta_dice, "evaluations": self.evaluations,
                "equalized_convolutions": self.equalized, "unsigned_scales": self.unsigned_scales}


@dataclass
class _Group:
    """One activation scale initializer and the Q nodes (tensors) that use it."""

    scale: str
    tensors: list[str]
    candidates: np.ndarray  # amax per percentile asked for (PERCENTILES in the search)
    macs: float  # multiply-adds per image of the convolutions that read these tensors
    levels: float = 127.0  # scale = amax / levels: 127 symmetric, 255 for [0, amax] (zero point -128)


def fit_ranges(
    fp32_path: Path,
    model: onnx.ModelProto,
    calibration: np.ndarray,
    *,
    method: str = "search",
    percentile: float = 99.99,
    sweeps: int = 2,
    eval_slices: int = 16,
    max_float: int = 4,
    target_delta_dice: float = 2.5e-3,
    target_worst_delta_dice: float = 1e-2,
    threshold: float = 0.5,
    batch_size: int = 4,
    input_name: str = "image",
    progress: Progress | None = None,
) -> RangeFit:
    """Set the activation scales of the QDQ ``model`` (in place) by ``method``; returns what was chosen.

    ``method``: ``"minmax"`` sets each scale from the largest value; ``"percentile"``
    clips every activation at ``percentile`` of its |x| (of x for a [0, amax]
    range, see :func:`unsigned_relu_ranges`); ``"search"`` runs the
    output-aware search described in the module docstring. ``fp32_path`` is the
    graph ``model`` was quantised from (same tensor names); ``calibration`` the
    preprocessed calibration slices. ``target_delta_dice`` (for graphs with a
    ``prob`` output) and ``target_worst_delta_dice`` are half of the int8 gate's
    mean and worst-slice limits, so the held-out verification keeps a margin.
    """
    if method not in ("minmax", "percentile", "search"):
        raise ExportError(f"Range method {method!r}: expected 'minmax', 'percentile' or 'search'.")
    if method in ("minmax", "percentile"):
        fit = RangeFit(method)
        at = 100.0 if method == "minmax" else float(percentile)
        for g in _groups(model, fp32_path, calibration, batch_size, input_name, (at,)):
            _set_scale(model, g, g.candidates[0])
            fit.percentiles[g.scale] = at
        return fit
    groups = _groups(model, fp32_path, calibration, batch_size, input_name, PERCENTILES)
    fit = RangeFit(method)
    if not groups:
        return fit
    pct = np.asarray(PERCENTILES)

    # evenly spaced (adding the calibration's smallest livers, whose ΔDice is largest, made the held-out
    # worst slice worse on a trained U-Net: 0.120 against 0.067, with 4 more tensors left float)
    idx = np.unique(np.linspace(0, calibration.shape[0] - 1, min(eval_slices, calibration.shape[0])).round()
                    .astype(int))
    search = _Search(fp32_path, model, groups, calibration[idx], batch_size, threshold, input_name)
    state = {g.scale: 0 for g in groups}  # index into PERCENTILES
    floats: set[str] = set()
    total = len(pct) + len(groups) * (len(pct) - 1) + max(sweeps - 1, 0) * len(groups) * 2  # an upper bound
    done = 0

    def step(info: str) -> None:
        nonlocal done
        done += 1
        if progress:
            progress(done, total, info)

    best, dd = search.evaluate(state, floats)
    step("min-max ranges")
    fit.objective_minmax, fit.delta_dice_minmax = best, _mean(dd)
    for k in range(1, len(pct)):  # one clip for all
        trial = dict.fromkeys(state, k)
        e, d = search.evaluate(trial, floats)
        step(f"all activations at p{pct[k]:g}")
        if e < best:
            best, dd, state = e, d, trial
    for sweep in range(sweeps):
        for g in groups:
            here = state[g.scale]
            tries = range(len(pct)) if sweep == 0 else (here - 1, here + 1)
            for k in tries:
                if k == here or not 0 <= k < len(pct):
                    continue
                trial = dict(state, **{g.scale: k})
                e, d = search.evaluate(trial, floats)
                step(f"sweep {sweep + 1}/{sweeps}: {g.tensors[0]}")
                if e < best:
                    best, dd, state = e, d, trial
    fit.delta_dice_ranges, fit.worst_delta_dice_ranges = _mean(dd), _worst(dd)

    def violation(d: np.ndarray) -> float:  # > 1: a calibration target is missed
        return max(_mean(d) / max(target_delta_dice, 1e-12), _worst(d) / max(target_worst_delta_dice, 1e-12))

    if dd is not None and violation(dd) > 1 and max_float > 0:
        total_macs = max(sum(g.macs for g in groups), 1.0)
        if progress:
            total += max_float * len(groups)
        for _ in range(max_float):
            trials = []
            for g in groups:
                if g.scale in floats:
                    continue
                e, d = search.evaluate(state, floats | {g.scale})
                step(f"float fallback: {g.tensors[0]}")
                if violation(d) < violation(dd):  # gained per share of the multiply-adds that turn float
                    trials.append(((violation(dd) - violation(d)) / (g.macs / total_macs + 0.01), e, g.scale, d))
            if not trials:
                break
            _, e, scale, d = max(trials, key=lambda t: (t[0], -t[1]))
            floats.add(scale)
            best, dd = e, d
            if violation(dd) <= 1:
                break
    for g in groups:
        fit.percentiles[g.scale] = float(pct[state[g.scale]])
        _set_scale(model, g, g.candidates[state[g.scale]])
    fit.float_tensors = sorted(t for g in groups if g.scale in floats for t in g.tensors)
    fit.float_scales = sorted(floats)
    _bypass(model, floats)
    fit.objective, fit.delta_dice, fit.worst_delta_dice, fit.evaluations = best, _mean(dd), _worst(dd), search.runs
    if progress:
        progress(done, done, "done")
    return fit


def _mean(deltas: np.ndarray | None) -> float | None:
    return None if deltas is None else float(np.mean(deltas))


def _worst(deltas: np.ndarray | None) -> float | None:
    return None if deltas is None else float(np.max(deltas))


def tie_scales(model: onnx.ModelProto) -> int:
    """Share scales across Relu, Concat and MaxPool where that is exact; returns how many were tied.

    onnxruntime's QDQ placement quantises a Conv's output (before the Relu) and
    the Relu's output, each with its own symmetric scale: two roundings, the
    first spending half its range on negatives the Relu discards. With one
    scale s and zero point 0, Q(relu(x)) = relu(Q(x)) and re-quantising a
    quantised value is exact, so the pair becomes one rounding, TensorRT's
    single Q/DQ at the next convolution's input, while onnxruntime still fuses
    the Conv into QLinearConv. A Concat input that only the Concat reads (the
    U-Net's up-convolutions) is tied to the Concat's scale the same way. An
    input that other nodes also read (the encoder's skip tensor, which the
    MaxPool reads too) keeps its own scale. A MaxPool's output takes its
    input's scale (max commutes with Q), so onnxruntime runs it on int8 values
    without a DQ/Q round trip. Measured on the demo U-Net with the search:
    calibration ΔDice 0.054 untied, 0.038 with the Relu ties alone.
    """
    graph = model.graph
    # with dedicated Q/DQ pairs a tensor may have several Qs; quantize_static gives them one scale, and
    # a Q that only a Concat reads takes the Concat's scale below: the "main" Q is one that does not
    q_list: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for q in _activation_qs(model):
        q_list[q.input[0]].append(q)
    concat_scales = {q.input[1] for n in graph.node if n.op_type == "Concat" for q in q_list.get(n.output[0], [])}
    qs = {t: next((q for q in lst if q.input[1] not in concat_scales), lst[0]) for t, lst in q_list.items()}
    q_of_output = {q.output[0]: q for lst in q_list.values() for q in lst}
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for n in graph.node:
        for i in n.input:
            consumers[i].append(n)
    def tie(node: onnx.NodeProto, name: str, q_out: onnx.NodeProto) -> bool:
        dq = producer.get(name)
        if dq is None or dq.op_type != "DequantizeLinear" or consumers[name] != [node]:
            return False
        q_in = q_of_output.get(dq.input[0])
        if q_in is None or len(q_in.input) < 3 or consumers[q_in.output[0]] != [dq]:
            return False
        if q_in.input[1] == q_out.input[1]:
            return False  # tied already
        for n in (q_in, dq):
            n.input[1], n.input[2] = q_out.input[1], q_out.input[2]
        return True

    def tie_output(node: onnx.NodeProto) -> int:
        """MaxPool: its output takes its input's scale, so it can run on int8 values unchanged."""
        dq = producer.get(node.input[0])
        if dq is None or dq.op_type != "DequantizeLinear" or len(dq.input) < 3:
            return 0
        tied = 0
        for q_out in q_list.get(node.output[0], []):
            if len(q_out.input) < 3 or q_out.input[1] == dq.input[1]:
                continue
            for n in (q_out, *(c for c in consumers[q_out.output[0]] if c.op_type == "DequantizeLinear")):
                n.input[1], n.input[2] = dq.input[1], dq.input[2]
            tied += 1
        return tied

    tied = 0
    for node in graph.node:
        if node.op_type == "MaxPool":
            tied += tie_output(node)
            continue
        q_out = qs.get(node.output[0]) if node.op_type in ("Relu", "Concat") else None
        if q_out is None or len(q_out.input) < 3:
            continue
        tied += sum(tie(node, name, q_out) for name in node.input)
    drop_unused_initializers(graph)
    return tied


#: Ops that commute with a positive per-channel scale and pass channels through unchanged.
_CHANNEL_PASS = frozenset({"Relu", "MaxPool"})


def equalize(model: onnx.ModelProto, calibration: np.ndarray, *, batch_size: int = 4,
             input_name: str = "image") -> int:
    """Rescale channels between convolutions so int8 serves each channel alike; returns how many producers.

    A convolution's output channel c can be divided by s_c (its weights and bias)
    and the convolutions that read it multiplied by s_c (their input-channel
    weights) without changing the function, through Relu, MaxPool and Concat
    (all commute with a positive per-channel scale). An int8 activation has one
    scale per tensor, so a channel whose values are 100x smaller than its
    neighbours' keeps a few levels; the readers' weights are quantised per
    output channel. With a_c the channel's calibration maximum and w_c the
    largest reader weight on that channel relative to its output channel's
    maximum, s_c = sqrt(a_c / w_c) leaves both at sqrt(a_c w_c): the balance of
    Nagel et al. 2019 (data-free quantisation), with activation ranges measured
    instead of inferred from batch norm. Measured on the demo U-Net with the
    search: held-out mean ΔDice 0.008 without, 0.0025 with.
    """
    graph = model.graph
    weights = {t.name: t for t in graph.initializer}
    consumers: dict[str, list[tuple[onnx.NodeProto, int]]] = defaultdict(list)
    for n in graph.node:
        for i, name in enumerate(n.input):
            consumers[name].append((n, i))
    outputs = {o.name for o in graph.output}
    channels: dict[str, int] = {}
    convs = []
    for n in graph.node:
        if n.op_type in ("Conv", "ConvTranspose") and n.input[1] in weights and _group(n) == 1:
            dims = weights[n.input[1]].dims
            channels[n.output[0]] = dims[0] if n.op_type == "Conv" else dims[1]
            if len(n.input) < 3 or n.input[2] in weights:
                convs.append(n)
        elif n.op_type in _CHANNEL_PASS and n.input[0] in channels:
            channels[n.output[0]] = channels[n.input[0]]
        elif n.op_type == "Concat" and all(i in channels for i in n.input) and _axis(n) == 1:
            channels[n.output[0]] = sum(channels[i] for i in n.input)

    def readers(tensor: str, offset: int) -> list[tuple[onnx.NodeProto, int]] | None:
        """The convolutions that read ``tensor`` (and the channel offset there), or None if another op does."""
        if tensor in outputs or not consumers[tensor]:
            return None
        found = []
        for node, i in consumers[tensor]:
            if node.op_type in _CHANNEL_PASS:
                more = readers(node.output[0], offset)
            elif node.op_type == "Concat" and node.output[0] in channels:
                more = readers(node.output[0], offset + sum(channels[t] for t in node.input[:i]))
            elif node.op_type in ("Conv", "ConvTranspose") and i == 0 and node in convs:
                more = [(node, offset)]
            else:
                return None
            if more is None:
                return None
            found += more
        return found

    plan = [(p, r) for p in convs if (r := readers(p.output[0], 0))]
    if not plan:
        return 0
    ranges = _channel_max(model, [p.output[0] for p, _ in plan], calibration, batch_size, input_name)
    arrays = {name: numpy_helper.to_array(weights[name]).astype(np.float64)
              for p, r in plan for name in (p.input[1], *(n.input[1] for n, _ in r))}
    for producer, read in plan:
        c = channels[producer.output[0]]
        a = np.maximum(ranges[producer.output[0]], 1e-12)
        w = np.zeros(c)
        for node, off in read:
            k = arrays[node.input[1]]
            cols = k if node.op_type == "ConvTranspose" else k.transpose(1, 0, 2, 3)  # (in, out, kh, kw)
            rows = np.abs(cols).max(axis=(0, 2, 3))  # per output channel of the reader
            w = np.maximum(w, (np.abs(cols[off:off + c]) / np.maximum(rows, 1e-12)[None, :, None, None])
                           .max(axis=(1, 2, 3)))
        s = np.sqrt(a / np.maximum(w, 1e-3 * max(w.max(), 1e-12)))  # a zero column must not set the scale
        s = np.clip(s / s.max(), 1e-4, None)
        pw = arrays[producer.input[1]]
        pw /= s[:, None, None, None] if producer.op_type == "Conv" else s[None, :, None, None]
        if len(producer.input) > 2 and producer.input[2]:
            b = numpy_helper.to_array(weights[producer.input[2]]).astype(np.float64) / s
            weights[producer.input[2]].CopyFrom(numpy_helper.from_array(b.astype(np.float32), producer.input[2]))
        for node, off in read:
            k = arrays[node.input[1]]
            if node.op_type == "Conv":
                k[:, off:off + c] *= s[None, :, None, None]
            else:
                k[off:off + c] *= s[:, None, None, None]
    for name, arr in arrays.items():
        weights[name].CopyFrom(numpy_helper.from_array(arr.astype(np.float32), name))
    return len(plan)


def _group(node: onnx.NodeProto) -> int:
    return next((a.i for a in node.attribute if a.name == "group"), 1)


def _axis(node: onnx.NodeProto) -> int:
    return next((a.i for a in node.attribute if a.name == "axis"), 0)


def _channel_max(model: onnx.ModelProto, tensors: list[str], calibration: np.ndarray, batch_size: int,
                 input_name: str) -> dict[str, np.ndarray]:
    top: dict[str, np.ndarray] = {}
    for batch in _intermediates(model, tensors, calibration, batch_size, input_name):
        for t, arr in batch.items():
            mx = np.abs(arr).max(axis=(0, 2, 3))
            top[t] = mx if t not in top else np.maximum(top[t], mx)
    return top


def _intermediates(model: onnx.ModelProto, tensors: list[str], calibration: np.ndarray, batch_size: int,
                   input_name: str):
    """Yield {tensor: value} for each calibration batch, ``tensors`` read out of the (float) ``model``."""
    import onnxruntime as ort

    m = copy.deepcopy(model)
    outputs = {o.name for o in m.graph.output}
    for t in tensors:
        if t not in outputs:
            m.graph.output.append(helper.make_tensor_value_info(t, TensorProto.FLOAT, None))
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    for i in range(0, calibration.shape[0], batch_size):
        yield dict(zip(tensors, sess.run(tensors, {input_name: calibration[i:i + batch_size]}), strict=True))


def drop_unused_initializers(graph: onnx.GraphProto) -> None:
    """Remove the initializers no node reads (after a rewrite removed their readers)."""
    used = {i for n in graph.node for i in n.input}
    keep = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)


def unsigned_relu_ranges(model: onnx.ModelProto) -> int:
    """Give non-negative activations the range [0, amax] (int8 zero point -128); returns how many scales.

    For onnxruntime on a CPU. A symmetric int8 scale spends half its 255
    levels on negatives that a Relu output never has; with zero point -128
    the Relu output gets all 255, and the Relu itself becomes a no-op of the
    quantisation (values below 0 round to -128, i.e. 0), which onnxruntime
    removes, fusing Conv + Relu into one QLinearConv. Eligible are the scales
    (after :func:`tie_scales`) whose tensors are all Relu or MaxPool outputs or
    read by Relus only. TensorRT accepts zero points of 0 only, so graphs for
    TensorRT keep symmetric ranges (``liverrt.calibration`` records which).
    """
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for n in graph.node:
        for i in n.input:
            consumers[i].append(n)
    members: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for q in _activation_qs(model):
        members[q.input[1]].append(q)

    def non_negative(q: onnx.NodeProto) -> bool:
        src = producer.get(q.input[0])
        if src is not None and src.op_type in ("Relu", "MaxPool"):
            return src.op_type == "Relu" or _maxpool_reads_scale(src, producer, q.input[1])
        readers = [c for d in consumers[q.output[0]] if d.op_type == "DequantizeLinear" for c in consumers[d.output[0]]]
        return bool(readers) and all(c.op_type == "Relu" for c in readers)

    changed = 0
    for scale, qs in members.items():
        if not all(len(q.input) > 2 and q.input[2] in inits and non_negative(q) for q in qs):
            continue
        zps = {q.input[2] for q in qs} | {d.input[2] for q in qs for d in consumers[q.output[0]]
                                          if d.op_type == "DequantizeLinear" and len(d.input) > 2}
        if len(zps) != 1 or numpy_helper.to_array(inits[next(iter(zps))]).dtype != np.int8:
            continue
        zp = next(iter(zps))
        if any(n.input[2] == zp and n.input[1] != scale for n in graph.node
               if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2):
            continue  # shared with another scale
        inits[zp].CopyFrom(numpy_helper.from_array(np.array(-128, np.int8), zp))
        changed += 1
    return changed


def _maxpool_reads_scale(node: onnx.NodeProto, producer: dict, scale: str) -> bool:
    dq = producer.get(node.input[0])
    return dq is not None and dq.op_type == "DequantizeLinear" and dq.input[1] == scale


# --------------------------------------------------------------------------- groups and samples


def _activation_qs(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    inits = {t.name for t in model.graph.initializer}
    return [n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in inits
            and n.input[1] in inits]


def _groups(model: onnx.ModelProto, fp32_path: Path, calibration: np.ndarray, batch_size: int,
            input_name: str, percentiles: tuple[float, ...]) -> list[_Group]:
    inits = {t.name: t for t in model.graph.initializer}
    by_scale: dict[str, list[str]] = defaultdict(list)
    for q in _activation_qs(model):
        if numpy_helper.to_array(inits[q.input[1]]).size == 1 and q.input[0] not in by_scale[q.input[1]]:
            by_scale[q.input[1]].append(q.input[0])
    zero_points = {q.input[1]: int(numpy_helper.to_array(inits[q.input[2]])) for q in _activation_qs(model)
                   if len(q.input) > 2 and q.input[2] in inits}
    tensors = sorted({t for ts in by_scale.values() for t in ts})
    samples = _sample(fp32_path, tensors, calibration, batch_size, input_name,
                      keep_values=any(p < 100 for p in percentiles))
    groups = []
    for scale, ts in by_scale.items():  # model order: the Q nodes are topologically sorted
        ts = [t for t in ts if t in samples]
        if not ts:
            continue
        unsigned = zero_points.get(scale) == -128  # [0, amax]: only the positive part is representable
        values = np.concatenate([np.maximum(samples[t][1], 0) if unsigned else np.abs(samples[t][1]) for t in ts])
        top = float(values.max(initial=0.0))
        top = max(top, max(samples[t][0][1] if unsigned else max(-samples[t][0][0], samples[t][0][1])
                           for t in ts))
        amax = [top if p >= 100 else float(np.percentile(values, p)) for p in percentiles]
        macs = sum(_reader_macs(model, t, samples[t][2], scale) for t in ts)
        groups.append(_Group(scale, ts, np.maximum(np.asarray(amax, np.float64), 1e-8), macs,
                             255.0 if unsigned else 127.0))
    return groups


def _reader_macs(model: onnx.ModelProto, tensor: str, shape: tuple[int, ...], scale: str) -> float:
    """Multiply-adds per image of the Conv/ConvTranspose nodes reading ``tensor`` through its Q/DQ at ``scale``."""
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    qs = {n.output[0] for n in _activation_qs(model) if n.input[0] == tensor and n.input[1] == scale}
    if not qs or len(shape) != 4:
        return 0.0
    dqs = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] in qs}
    total = 0.0
    for node in graph.node:
        if node.op_type not in ("Conv", "ConvTranspose") or node.input[0] not in dqs:
            continue
        w = producer.get(node.input[1])
        dims = inits[w.input[0]].dims if w is not None and w.input[0] in inits else inits.get(node.input[1]).dims
        strides = next((list(a.ints) for a in node.attribute if a.name == "strides"), [1, 1])
        per_pixel = float(np.prod(dims))  # (out, in/groups, kh, kw): already per group
        total += shape[2] * shape[3] * per_pixel / (1 if node.op_type == "ConvTranspose" else np.prod(strides))
    return total


def _sample(fp32_path: Path, tensors: list[str], calibration: np.ndarray, batch_size: int, input_name: str,
            keep_values: bool = True) -> dict[str, tuple[tuple[float, float], np.ndarray, tuple[int, ...]]]:
    """Per tensor: ((min, max), a random sample of x, shape) over the calibration slices (fp32 graph).

    Without ``keep_values`` (min-max ranges) the sample is empty: the ~580 tensors of the Mask R-CNN
    backbone would otherwise hold GBs of values nobody reads.
    """
    model = onnx.load(str(fp32_path))
    produced = {o for n in model.graph.node for o in n.output}
    present = [t for t in tensors if t in produced]
    if not present:
        return {}
    rng = np.random.default_rng(0)
    low, top = dict.fromkeys(present, 0.0), dict.fromkeys(present, 0.0)
    kept: dict[str, list[np.ndarray]] = {t: [] for t in present}
    shapes: dict[str, tuple[int, ...]] = {}
    for batch in _intermediates(model, present, calibration, batch_size, input_name):
        for t, arr in batch.items():
            shapes[t] = arr.shape
            a = arr.ravel()
            low[t], top[t] = min(low[t], float(a.min(initial=0.0))), max(top[t], float(a.max(initial=0.0)))
            if keep_values:
                kept[t].append(a if a.size <= SAMPLES_PER_BATCH else a[rng.integers(0, a.size, SAMPLES_PER_BATCH)])
    return {t: ((low[t], top[t]), np.concatenate(kept[t]) if kept[t] else np.zeros(0, np.float32), shapes[t])
            for t in present}


def _set_scale(model: onnx.ModelProto, g: _Group, amax: float) -> None:
    for t in model.graph.initializer:
        if t.name == g.scale:
            t.CopyFrom(numpy_helper.from_array(np.array(max(amax, 1e-8) / g.levels, np.float32), g.scale))
            return


def _bypass(model: onnx.ModelProto, scales: set[str]) -> None:
    """Remove the Q/DQ pairs that use ``scales``: their readers take the float tensor itself.

    By scale, as the search bypassed them (a tensor may also have a Q/DQ pair at
    another scale, e.g. the skip tensor's pair for the Concat, which stays).
    """
    graph = model.graph
    outputs = {o.name for o in graph.output}
    for q in [n for n in _activation_qs(model) if n.input[1] in scales]:
        for d in [n for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] == q.output[0]]:
            if d.output[0] in outputs:  # a graph output keeps its name: the DQ becomes an Identity
                d.op_type = "Identity"
                del d.input[:]
                del d.attribute[:]
                d.input.append(q.input[0])
                continue
            for n in graph.node:
                for i, name in enumerate(n.input):
                    if name == d.output[0]:
                        n.input[i] = q.input[0]
            graph.node.remove(d)
        graph.node.remove(q)
    drop_unused_initializers(graph)
    names = {o for n in graph.node for o in n.output}
    keep_vi = [v for v in graph.value_info if v.name in names]
    del graph.value_info[:]
    graph.value_info.extend(keep_vi)


# --------------------------------------------------------------------------- the search session


class _Search:
    """One onnxruntime session of the QDQ graph with scales and bypass flags as inputs."""

    def __init__(self, fp32_path: Path, model: onnx.ModelProto, groups: list[_Group], slices: np.ndarray,
                 batch_size: int, threshold: float, input_name: str) -> None:
        import onnxruntime as ort

        self.groups, self.batch_size, self.threshold, self.input_name = groups, batch_size, threshold, input_name
        self.batches = [slices[i:i + batch_size] for i in range(0, slices.shape[0], batch_size)]
        ref = ort.InferenceSession(str(fp32_path), providers=["CPUExecutionProvider"])
        self.names = [o.name for o in ref.get_outputs()]
        self.ref = [ref.run(self.names, {input_name: b}) for b in self.batches]
        self.power = [max(float(np.mean([np.mean(np.square(r[j], dtype=np.float64)) for r in self.ref])), 1e-12)
                      for j in range(len(self.names))]
        self.sess = ort.InferenceSession(_search_graph(model, groups).SerializeToString(),
                                         providers=["CPUExecutionProvider"])
        self.runs = 0

    def evaluate(self, state: dict[str, int], floats: set[str]) -> tuple[float, np.ndarray | None]:
        """(objective, per-slice ΔDice of ``prob`` or None) for the scales/flags given."""
        feed = {}
        for g in self.groups:
            feed[_scale_input(g.scale)] = np.array(g.candidates[state[g.scale]] / g.levels, np.float32)
            feed[_flag_input(g.scale)] = np.array(g.scale in floats)
        err = np.zeros(len(self.names))
        deltas = []
        for batch, ref in zip(self.batches, self.ref, strict=True):
            out = self.sess.run(self.names, {self.input_name: batch, **feed})
            for j, (o, r) in enumerate(zip(out, ref, strict=True)):
                err[j] += float(np.mean(np.square(o - r, dtype=np.float64))) * batch.shape[0] / self.power[j]
                if self.names[j] == "prob":
                    deltas.append(_delta_dice(r >= self.threshold, o >= self.threshold))
        self.runs += 1
        n = sum(b.shape[0] for b in self.batches)
        objective = float(err.sum() / n)
        if not np.isfinite(objective):
            objective = float("inf")
        return objective, (np.concatenate(deltas) if deltas else None)


def _scale_input(scale: str) -> str:
    return f"liverrt_search_scale::{scale}"


def _flag_input(scale: str) -> str:
    return f"liverrt_search_float::{scale}"


def _search_graph(model: onnx.ModelProto, groups: list[_Group]) -> onnx.ModelProto:
    m = copy.deepcopy(model)
    graph = m.graph
    scales = {g.scale for g in groups}
    keep = [t for t in graph.initializer if t.name not in scales]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    for g in groups:
        graph.input.append(helper.make_tensor_value_info(_scale_input(g.scale), TensorProto.FLOAT, []))
        graph.input.append(helper.make_tensor_value_info(_flag_input(g.scale), TensorProto.BOOL, []))
    group_of = {g.scale: g for g in groups}
    extra = []
    for node in graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") and len(node.input) > 1 and node.input[1] in scales:
            node.input[1] = _scale_input(node.input[1])
    for q in [n for n in graph.node if n.op_type == "QuantizeLinear"]:
        scale = q.input[1][len(_scale_input("")):] if q.input[1].startswith(_scale_input("")) else None
        if scale not in group_of:
            continue
        for d in [n for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] == q.output[0]]:
            # the Where takes over the DQ's output name, so consumers and graph outputs stay as they are
            name = d.output[0]
            d.output[0] = name + "::search"
            extra.append(helper.make_node("Where", [_flag_input(scale), q.input[0], d.output[0]], [name]))
    graph.node.extend(extra)
    del graph.value_info[:]
    sort_topologically(graph)
    return m


def _delta_dice(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """1 - Dice per slice of two (N, 1, H, W) boolean masks; 0 where both are empty."""
    return 1.0 - per_slice_dice(a[:, 0], b[:, 0])
