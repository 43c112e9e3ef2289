"""Quantization-aware fine-tuning (QAT) on the very Q/DQ graph the INT8 export writes.

Post-training quantisation (:func:`liverrt.export.precision.to_int8`) keeps a
trained U-Net's mean ΔDice within the gate but not its worst slice. QAT lets
the weights and the activation ranges adapt to int8 rounding. Its one
requirement is that the rounding seen in training is the rounding of the
exported graph; so the fine-tuning does not re-create the quantisation in
torch, it runs the export's own graph:

1. the fp32 ONNX is equalised and its Q/DQ pairs are placed exactly as for
   post-training INT8 (:func:`~liverrt.export.precision.prepare_fp32`,
   :func:`~liverrt.export.precision.place_qdq`: onnxruntime's placement,
   first layer and logits float, tied scales, the target's zero-point
   rule); the activation ranges start where post-training INT8 ends, at the
   output-aware range search's (without float fallback), or at its first
   step only (:class:`QatOptions` ``start``);
2. :class:`QdqNet` runs that graph in torch: each activation Q->DQ pair is a
   fake quantisation with the pair's scale and zero point (one learned
   scale per scale initializer, so tied scales stay tied, LSQ with a log
   parameter), each weight DequantizeLinear a per-channel symmetric fake
   quantisation of the float weight with onnxruntime's scale (max |w| / 127);
3. the float weights and the scales are fine-tuned, Adam with a cosine
   decay, to reproduce the fp32 network's output (distillation: what the
   gate compares), optionally plus the network's own loss (Dice + BCE) on
   the calibration cases' liver masks;
4. the fine-tuned weights go back into the fp32 graph, the pairs are placed
   again (onnxruntime quantises the new weights per channel) and the learned
   activation scales replace the min-max ones: the same graph, no float
   fallback.

``tests/export/test_qat.py`` checks that :class:`QdqNet` and onnxruntime's
run of the written graph agree.
"""

from __future__ import annotations

import copy
import logging
import math
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper
from torch import nn

from liverrt.artifacts import artifact_info
from liverrt.data.preprocess import PreprocessSpec, to_input
from liverrt.data.volume import Volume
from liverrt.device import resolve_device
from liverrt.errors import ExportError, InputError
from liverrt.export import precision as prec
from liverrt.export.calibrate import fit_ranges
from liverrt.training.losses import dice_bce_loss
from liverrt.training.slices import build_slice_set

log = logging.getLogger(__name__)

Progress = Callable[[int, int, str], None]

#: int8 as onnxruntime's QuantizeLinear saturates it (zero point 0 or -128)
QMIN, QMAX = -128, 127
#: where the activation ranges start (QatOptions.start): the output-aware range search of post-training
#: INT8 without float fallback (minutes), or its first step only, the best single percentile of |x| for all
#: activations (~11 runs of 16 calibration slices)
@dataclass(frozen=True)
class RangeStart:
    """A starting point of QAT's activation ranges: what the calibration record calls it, and the range
    search's sweeps (``None``: the search's default; 0: its first step only)."""

    description: str
    sweeps: int | None = None

    def search_options(self) -> dict:
        return {} if self.sweeps is None else {"sweeps": self.sweeps}


STARTS = {"search": RangeStart("range search, no float scales"),
          "percentile": RangeStart("best single percentile", sweeps=0)}


@dataclass(frozen=True)
class QatOptions:
    """How the fine-tuning runs: from the activation ranges of ``start`` (:data:`STARTS`), ``epochs`` of
    ``steps_per_epoch`` optimiser steps (default: one pass over the calibration cases' slices) of
    ``batch_size`` slices; Adam at ``lr`` for the weights and ``scale_lr`` for the log activation scales
    (``learn_scales``; else the starting ranges stay), cosine decay to 0; ``device`` as for training
    (``auto``: CUDA if there is one).

    The loss is ``distill`` times the KL divergence of the int8 graph's per-pixel probabilities from the fp32
    graph's (the float network before fine-tuning, frozen; the BCE against its probabilities less their
    entropy, so 0 is a perfect match), plus ``masks`` times the U-Net's own loss (Dice + BCE
    against the liver masks). The gate compares int8 with fp32, and the masks let the fine-tuned graph drift
    from fp32 where fp32 is wrong, so the default is distillation alone, which needs no masks. The defaults
    (distillation, weights at 5e-6, from the search) were chosen by measurement on the bundled U-Net
    (benchmarks/RESULTS.md, 2026-12-07, midday)."""

    epochs: int = 3
    steps_per_epoch: int | None = None
    lr: float = 5e-6
    scale_lr: float = 1e-2
    batch_size: int = 8
    learn_scales: bool = True
    distill: float = 1.0
    masks: float = 0.0
    start: str = "search"
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        problems = [f"{name}={value} (expected >= 1)" for name, value in
                    (("epochs", self.epochs), ("batch_size", self.batch_size),
                     ("steps_per_epoch", self.steps_per_epoch or 1)) if value < 1]
        problems += [f"{name}={value} (expected > 0)" for name, value in
                     (("lr", self.lr), ("scale_lr", self.scale_lr)) if not value > 0]
        problems += [f"{name}={value} (expected >= 0)" for name, value in
                     (("distill", self.distill), ("masks", self.masks)) if not value >= 0]
        problems += [] if self.distill + self.masks > 0 else ["distill=0 and masks=0 (expected a loss)"]
        problems += [] if self.start in STARTS else [f"start={self.start!r} (expected one of {', '.join(STARTS)})"]
        if problems:
            raise InputError(f"QAT options: {', '.join(problems)}.")


@dataclass
class QatResult:
    """What a fine-tuning did (its summary is stored in the int8 file's ``liverrt.calibration``) and the
    fine-tuned :class:`QdqNet`, the written graph in torch."""

    path: Path
    steps: int
    train_slices: int
    seconds: float
    loss_first: float
    loss_last: float
    options: QatOptions = field(default_factory=QatOptions)
    net: QdqNet | None = None

    def summary(self) -> dict:
        return {"steps": self.steps, "train_slices": self.train_slices, "seconds": round(self.seconds, 1),
                "loss_first_epoch": self.loss_first, "loss_last_epoch": self.loss_last, **asdict(self.options)}


def check_volumes(volumes: Sequence[Volume] | None, options: QatOptions) -> None:
    """QAT trains on the calibration cases, and with ``options.masks`` on their liver masks: refuse none, or a
    case without a mask where masks are needed (one line)."""
    if not volumes:
        raise InputError("--qat needs --calib: cases to fine-tune on (a case-level split of your data, not the "
                         "test cases).")
    missing = [v.case_id for v in volumes if v.mask is None]
    if missing and options.masks > 0:
        raise InputError(f"--qat-masks {options.masks:g} fine-tunes on the --calib cases' liver masks: case(s) "
                         f"{', '.join(missing[:5])} have none; expected every --calib case with a mask, or "
                         "--qat-masks 0 (distillation alone).")


def qat_to_int8(src_onnx: Path, out_onnx: Path, volumes: Sequence[Volume], *, options: QatOptions | None = None,
                target: str = "onnxruntime", calib_slices: int = 64, bce_weight: float = 1.0,
                calibration_source: str | None = None, progress: Progress | None = None) -> QatResult:
    """Fine-tune the fp32 liverrt ONNX ``src_onnx`` on ``volumes`` (with masks where ``options.masks`` > 0) and write its INT8 Q/DQ graph.

    ``calib_slices`` slices of ``volumes`` (:func:`~liverrt.export.precision.calibration_slices`) set the
    equalisation and the starting ranges; all their slices are the training set. ``target`` as for
    :func:`~liverrt.export.precision.to_int8`. ``progress(done, total, info)`` is called per step.
    """
    options = options or QatOptions()
    src, out = Path(src_onnx), Path(out_onnx)
    info = artifact_info(src)
    check_volumes(volumes, options)
    prec.int8_target(target)
    calibration = prec.calibration_slices(list(volumes), info.spec, n=calib_slices)
    with tempfile.TemporaryDirectory(prefix="liverrt-qat-") as tmp:
        prepared, tuned = Path(tmp) / "prepared.onnx", Path(tmp) / "tuned.onnx"
        equalized = prec.prepare_fp32(src, prepared, calibration, target=target)
        template, unsigned = prec.place_qdq(prepared, calibration, target=target)
        init = fit_ranges(prepared, template, calibration, method="search", max_float=0,
                          threshold=info.threshold, input_name=prec.INPUT_NAME,
                          **STARTS[options.start].search_options(),
                          progress=progress and (lambda done, total, what: progress(done, total, f"ranges: {what}")))
        fp32 = onnx.load(str(prepared))
        net = QdqNet(template, fp32, learn_scales=options.learn_scales)
        t0 = time.perf_counter()
        tuning = fine_tune(net, volumes, info.spec, options, bce_weight=bce_weight, progress=progress)
        seconds = time.perf_counter() - t0
        set_initializers(fp32, net.float_weights())
        onnx.save(fp32, str(tuned))
        model, _ = prec.place_qdq(tuned, calibration, target=target)
    set_activation_scales(model, net.activation_scales())
    result = QatResult(out, tuning.steps, tuning.slices, seconds, tuning.loss_first, tuning.loss_last, options, net)
    prec.write_int8(model, src, out, calibration[:1], {
        "method": "qat", "slices": int(calibration.shape[0]), "per_channel": True, "quantize_conv_outputs": True,
        "float_input_layer": True, "source": calibration_source,
        "init": {"ranges": STARTS[options.start].description, **init.summary()}, "equalized_convolutions": equalized,
        "unsigned_scales": unsigned, "qat": result.summary()}, target=target)
    log.info("wrote QAT int8 graph %s (%d steps on %d slices, %.0f s)", out, tuning.steps, tuning.slices, seconds)
    return result


# --------------------------------------------------------------------------- the graph in torch


class QdqNet(nn.Module):
    """A QDQ ONNX graph (from :func:`~liverrt.export.precision.place_qdq`) as a trainable torch module.

    ``forward(image (N, C, S, S) float32) -> {output name: tensor, "logits": the output head's input}``.
    The float weights are those of ``fp32`` (the graph the pairs were placed in, by node name); an
    activation QuantizeLinear -> DequantizeLinear pair is :func:`fake_quantize` with the pair's scale and
    zero point; a weight DequantizeLinear is a per-channel symmetric fake quantisation of
    the float weight (scale max |w| / 127, along the DQ's axis; the straight-through estimator passes its
    gradient). Runs Conv, ConvTranspose, Relu, MaxPool, Concat, Sigmoid, Identity, Reshape and Transpose
    (the pixel shuffle of :func:`~liverrt.export.precision.shuffle_upconvs`); another op raises
    :class:`ExportError`.
    """

    def __init__(self, qdq: onnx.ModelProto, fp32: onnx.ModelProto, *, learn_scales: bool = True) -> None:
        super().__init__()
        self.learn_scales = learn_scales
        consts = {t.name: numpy_helper.to_array(t) for t in qdq.graph.initializer}
        fp32_weights = {t.name: numpy_helper.to_array(t) for t in fp32.graph.initializer}
        fp32_nodes = {n.name: n for n in fp32.graph.node}
        readers = {i: n for n in qdq.graph.node for i in n.input}
        self.input_name = qdq.graph.input[0].name
        self.output_names = [o.name for o in qdq.graph.output]
        self.params = nn.ParameterList()
        self.param_names: list[str] = []  # the fp32 initializer each parameter came from
        scales: dict[str, tuple[float, float]] = {}  # activation scale initializer -> (scale, zero point)
        self.steps: list[tuple] = []  # (op, inputs, output, attributes) in graph order
        quantized: dict[str, tuple[str, str]] = {}  # Q output -> (its input, its scale)
        self.logits = None
        self.constants: dict[str, str] = {}  # integer initializer -> the buffer holding it
        for node in qdq.graph.node:
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            if node.op_type == "QuantizeLinear" and node.input[0] not in consts:
                scale, zp = node.input[1], node.input[2] if len(node.input) > 2 else ""
                scales.setdefault(scale, (float(consts[scale]), float(consts[zp]) if zp else 0.0))
                quantized[node.output[0]] = (node.input[0], scale)
            elif node.op_type == "DequantizeLinear" and node.input[0] in quantized:
                x, scale = quantized[node.input[0]]
                if node.input[1] != scale:
                    raise ExportError(f"QAT: {node.name} dequantizes at {node.input[1]}, its QuantizeLinear at "
                                      f"{scale}; expected one scale per Q/DQ pair.")
                self.steps.append(("act", (x,), node.output[0], {"scale": scale}))
            elif node.op_type == "DequantizeLinear" and node.input[0] in consts:
                conv = readers.get(node.output[0])
                source = fp32_nodes.get(conv.name) if conv is not None else None
                if source is None or conv.op_type not in ("Conv", "ConvTranspose"):
                    raise ExportError(f"QAT: the weight DequantizeLinear {node.name} feeds no convolution of the "
                                      "fp32 graph; expected the graph of place_qdq.")
                i = self._param(source.input[1], fp32_weights)
                self.steps.append(("weight", (), node.output[0], {"param": i, "axis": attrs.get("axis", 1)}))
            elif node.op_type in _OPS:
                ins = tuple(self._param(t, fp32_weights) if t in consts and consts[t].dtype.kind == "f" else t
                            for t in node.input if t)
                self.steps.append((node.op_type, ins, node.output[0], attrs))
                if node.op_type in prec.OUTPUT_HEAD_OPS:
                    self.logits = node.input[0]
            else:
                raise ExportError(f"QAT: the graph has a {node.op_type} node ({node.name}); QAT runs "
                                  f"{sorted(_OPS)} and Q/DQ pairs only.")
        if self.logits is None:
            raise ExportError(f"QAT: the graph has no output head ({sorted(prec.OUTPUT_HEAD_OPS)}); expected "
                              "logits to train on.")
        for name, value in consts.items():  # a Reshape's shape: a constant, not a parameter
            if value.dtype == np.int64:
                buffer = f"const_{len(self.constants)}"
                self.register_buffer(buffer, torch.from_numpy(value.copy()))
                self.constants[name] = buffer
        self.scale_names = list(scales)
        self.scale_index = {s: i for i, s in enumerate(self.scale_names)}
        self.log_scales = nn.Parameter(torch.log(torch.tensor([scales[s][0] for s in self.scale_names],
                                                              dtype=torch.float32)),
                                       requires_grad=learn_scales)
        self.register_buffer("zero_points", torch.tensor([scales[s][1] for s in self.scale_names]))

    def _param(self, name: str, fp32_weights: dict[str, np.ndarray]) -> int:
        if name in self.param_names:
            return self.param_names.index(name)
        if name not in fp32_weights:
            raise ExportError(f"QAT: initializer {name} is not in the fp32 graph; expected the graph the Q/DQ "
                              "pairs were placed in.")
        self.params.append(nn.Parameter(torch.from_numpy(fp32_weights[name].astype(np.float32).copy())))
        self.param_names.append(name)
        return len(self.param_names) - 1

    def forward(self, image: torch.Tensor, *, quantize: bool = True) -> dict[str, torch.Tensor]:
        """The graph's outputs and logits; ``quantize=False`` runs it in float (every Q/DQ pair an identity)."""
        env: dict[str, torch.Tensor] = {self.input_name: image,
                                        **{name: getattr(self, buf) for name, buf in self.constants.items()}}
        scales = self.log_scales.exp()  # the whole vector, as activation_scales() computes it: the same floats
        for op, ins, out, attrs in self.steps:
            args = [self.params[i] if isinstance(i, int) else env[i] for i in ins]
            if op == "act":
                i = self.scale_index[attrs["scale"]]
                env[out] = fake_quantize(args[0], scales[i], self.zero_points[i]) if quantize else args[0]
            elif op == "weight":
                w = self.params[attrs["param"]]
                env[out] = fake_weight(w, attrs["axis"]) if quantize else w
            else:
                env[out] = _OPS[op](args, attrs)
        return {**{n: env[n] for n in self.output_names}, "logits": env[self.logits]}

    def float_weights(self) -> dict[str, np.ndarray]:
        """The (fine-tuned) float weights by fp32 initializer name."""
        return {n: p.detach().cpu().numpy().astype(np.float32) for n, p in zip(self.param_names, self.params,
                                                                              strict=True)}

    def activation_scales(self) -> dict[str, float]:
        """The (learned) activation scales by scale initializer name."""
        return dict(zip(self.scale_names, self.log_scales.detach().exp().cpu().tolist(), strict=True))


def fake_quantize(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor) -> torch.Tensor:
    """``DequantizeLinear(QuantizeLinear(x))`` as onnxruntime computes it, int8 (saturating at -128, 127):
    ``(clamp(round(x / scale) + zp) - zp) * scale``, a division (torch's own fake_quantize multiplies by
    1 / scale, which rounds a value on a level boundary the other way now and then) and round half to even.

    Gradients: straight through to ``x`` inside the range, none outside; to ``scale`` LSQ's
    (Esser et al. 2020): ``round(v) - v`` inside, the clamped level outside, ``v = x / scale``; "inside"
    is the rounded level within [-128, 127], as torch's ``fake_quantize_per_tensor_affine`` decides it (its
    values and input gradients are these, tested). One autograd step (:class:`_FakeQuantize`) instead of
    a chain of nine tensor ops: a QAT step of the 256² U-Net took 8.5 s instead of 14.6 s on 2 cores.
    """
    return _FakeQuantize.apply(x, scale, zero_point)


class _FakeQuantize(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor) -> torch.Tensor:
        v = x / scale
        levels = torch.round(v).add_(zero_point)
        outside = (levels < QMIN) | (levels > QMAX)
        levels.clamp_(QMIN, QMAX).sub_(zero_point)
        out = levels * scale
        if ctx.needs_input_grad[1]:  # d out / d scale, in v's memory: levels - v inside, levels outside
            ctx.save_for_backward(outside, v.masked_fill_(outside, 0.0).neg_().add_(levels))
        else:
            ctx.save_for_backward(outside)
        ctx.scale_shape = scale.shape
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        outside = ctx.saved_tensors[0]
        grad_x = grad.masked_fill(outside, 0.0) if ctx.needs_input_grad[0] else None
        grad_scale = None
        if ctx.needs_input_grad[1]:
            per = grad * ctx.saved_tensors[1]
            grad_scale = per.sum_to_size(ctx.scale_shape) if len(ctx.scale_shape) else per.sum()
        return grad_x, grad_scale, None


def fake_weight(w: torch.Tensor, axis: int) -> torch.Tensor:
    """Symmetric per-channel int8 fake quantisation along ``axis`` with onnxruntime's scale, 2 max|w| / 254
    computed in float64 and stored as float32 (``quant_utils.compute_scale_zp``); the scale takes no gradient."""
    dims = tuple(d for d in range(w.dim()) if d != axis)
    absmax = w.detach().abs().amax(dim=dims)
    scale = (absmax.double() * 2.0 / 254.0).float()
    scale = torch.where(scale < torch.finfo(torch.float32).tiny, torch.ones_like(scale), scale)
    shape = [1] * w.dim()
    shape[axis] = -1
    return fake_quantize(w, scale.reshape(shape), torch.zeros(()))


def _pads(attrs: dict, op: str) -> tuple[int, int]:
    pads = list(attrs.get("pads", [0, 0, 0, 0]))
    if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET") or pads[:2] != pads[2:]:
        raise ExportError(f"QAT: {op} with pads {pads} / auto_pad {attrs.get('auto_pad')}; expected symmetric "
                          "explicit pads.")
    return tuple(pads[:2])


def _conv(args, attrs):
    return F.conv2d(args[0], args[1], args[2] if len(args) > 2 else None, stride=attrs.get("strides", 1),
                    padding=_pads(attrs, "Conv"), dilation=attrs.get("dilations", 1), groups=attrs.get("group", 1))


def _conv_transpose(args, attrs):
    if "output_shape" in attrs:
        raise ExportError("QAT: ConvTranspose with output_shape; expected pads/output_padding.")
    return F.conv_transpose2d(args[0], args[1], args[2] if len(args) > 2 else None,
                              stride=attrs.get("strides", 1), padding=_pads(attrs, "ConvTranspose"),
                              output_padding=attrs.get("output_padding", 0), groups=attrs.get("group", 1),
                              dilation=attrs.get("dilations", 1))


def _max_pool(args, attrs):
    return F.max_pool2d(args[0], attrs["kernel_shape"], stride=attrs.get("strides", 1),
                        padding=_pads(attrs, "MaxPool"), dilation=attrs.get("dilations", 1),
                        ceil_mode=bool(attrs.get("ceil_mode", 0)))


def _reshape(args, attrs):
    if attrs.get("allowzero", 0):
        raise ExportError("QAT: Reshape with allowzero; expected 0 (a 0 in the shape copies the input's size).")
    x, shape = args
    return x.reshape([x.shape[i] if s == 0 else s for i, s in enumerate(shape.tolist())])


_OPS: dict[str, Callable] = {
    "Conv": _conv,
    "ConvTranspose": _conv_transpose,
    "Relu": lambda args, attrs: F.relu(args[0]),
    "MaxPool": _max_pool,
    "Concat": lambda args, attrs: torch.cat(args, dim=attrs["axis"]),
    "Sigmoid": lambda args, attrs: torch.sigmoid(args[0]),
    "Identity": lambda args, attrs: args[0],
    "Reshape": _reshape,
    "Transpose": lambda args, attrs: args[0].permute(attrs["perm"]),
}


# --------------------------------------------------------------------------- fine-tuning


@dataclass(frozen=True)
class Tuning:
    """What :func:`fine_tune` did: optimiser steps, training slices, mean loss of the first and last epoch."""

    steps: int
    slices: int
    loss_first: float
    loss_last: float


def fine_tune(net: QdqNet, volumes: Sequence[Volume], spec: PreprocessSpec, options: QatOptions, *,
              bce_weight: float = 1.0, progress: Progress | None = None) -> Tuning:
    """Train ``net`` in place on all slices of ``volumes`` with the loss of :class:`QatOptions` (distillation
    from the float graph, and the U-Net's Dice + BCE on the liver masks where ``masks`` > 0)."""
    if options.masks > 0:
        data = build_slice_set(list(volumes), spec)
        slices, masks = data.x, data.y
    else:  # distillation alone: the slices, no masks
        slices = torch.cat([torch.from_numpy(to_input(v.image, v.intensity, spec, v.spacing)[0]) for v in volumes])
        masks = None
    device = resolve_device(options.device)
    net.to(device).train()
    teacher = copy.deepcopy(net).eval().requires_grad_(False) if options.distill > 0 else None
    per_epoch = options.steps_per_epoch or math.ceil(len(slices) / options.batch_size)
    total = options.epochs * per_epoch
    groups = [{"params": list(net.params), "lr": options.lr}]
    if options.learn_scales:
        groups.append({"params": [net.log_scales], "lr": options.scale_lr})
    opt = torch.optim.Adam(groups)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
    gen = torch.Generator().manual_seed(options.seed)
    order = torch.empty(0, dtype=torch.long)
    epoch_loss: list[float] = []
    step = 0
    for epoch in range(options.epochs):
        losses = []
        for _ in range(per_epoch):
            if order.numel() < options.batch_size:  # a fresh pass over the slices, shuffled
                order = torch.cat([order, torch.randperm(len(slices), generator=gen)])
            index, order = order[:options.batch_size], order[options.batch_size:]
            x = slices[index].to(device)
            logits = net(x)["logits"].float()
            loss = logits.new_zeros(())
            if masks is not None:
                loss = loss + options.masks * dice_bce_loss(logits, masks[index].to(device), bce_weight=bce_weight)
            if teacher is not None:  # KL(fp32 || int8) per pixel: the BCE less the fp32 output's own entropy
                with torch.no_grad():
                    target = teacher(x, quantize=False)["logits"].float()
                    soft = torch.sigmoid(target)
                    entropy = F.binary_cross_entropy_with_logits(target, soft)
                loss = loss + options.distill * (F.binary_cross_entropy_with_logits(logits, soft) - entropy)
            if not torch.isfinite(loss):
                raise ExportError(f"QAT: the loss became {loss.item()} at step {step + 1}; expected a finite loss "
                                  "(lower --qat-lr).")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
            step += 1
            if progress:
                progress(step, total, f"epoch {epoch + 1}/{options.epochs} loss {np.mean(losses):.4f}")
        epoch_loss.append(float(np.mean(losses)))
        log.info("QAT epoch %d/%d: loss %.4f", epoch + 1, options.epochs, epoch_loss[-1])
    net.eval().cpu()
    return Tuning(step, len(slices), epoch_loss[0], epoch_loss[-1])


# --------------------------------------------------------------------------- back into the graph


def set_initializers(model: onnx.ModelProto, arrays: dict[str, np.ndarray]) -> None:
    """Replace ``model``'s initializers named in ``arrays`` (same shape and dtype), in place."""
    inits = {t.name: t for t in model.graph.initializer}
    for name, arr in arrays.items():
        old = numpy_helper.to_array(inits[name])
        if old.shape != arr.shape or old.dtype != arr.dtype:
            raise ExportError(f"QAT: weight {name} is {arr.dtype} {arr.shape}, the graph's {old.dtype} {old.shape}.")
        inits[name].CopyFrom(numpy_helper.from_array(arr, name))


def set_activation_scales(model: onnx.ModelProto, scales: dict[str, float]) -> None:
    """Write the learned activation ``scales`` into the QDQ ``model``, whose activation scales must be the
    same set (the placement of the fine-tuned graph is that of the template)."""
    init_names = {t.name for t in model.graph.initializer}
    placed = {n.input[1] for n in model.graph.node
              if n.op_type == "QuantizeLinear" and n.input[0] not in init_names}
    if placed != set(scales):
        raise ExportError(f"QAT: the fine-tuned graph's activation scales differ from the trained ones "
                          f"({sorted(placed ^ set(scales))[:4]}); expected the same Q/DQ placement.")
    set_initializers(model, {k: np.array(v, np.float32) for k, v in scales.items()})
