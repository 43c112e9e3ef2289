"""Quantization-aware fine-tuning (liverrt.export.qat): the graph trained in torch is the graph written.

A tiny U-Net (32², widths 4-8-16) trained a few steps on phantoms, fine-tuned a few QAT steps; each test
takes seconds on two cores.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner
from liverrt_test_helpers import make_volume, tiny_unet

from liverrt.artifacts.checkpoint import save_checkpoint
from liverrt.cli import cli
from liverrt.data.io import write_nifti
from liverrt.errors import InputError
from liverrt.export import precision as prec
from liverrt.export.onnx import export_onnx
from liverrt.export.pipeline import ExportOptions, run_export
from liverrt.export.qat import QMAX, QMIN, STARTS, QatOptions, QdqNet, fake_quantize, qat_to_int8
from liverrt.models.dncnn_sr import DnCNNSR
from liverrt.training.losses import dice_bce_loss
from liverrt.training.slices import build_slice_set

QUICK = QatOptions(epochs=2, steps_per_epoch=3, batch_size=4, lr=1e-4, masks=1.0, device="cpu")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_spec):
    """(checkpoint, its fp32 ONNX, phantom volumes with masks, the same cases as a NIfTI folder)."""
    root = tmp_path_factory.mktemp("qat")
    vols = [make_volume(seed=s, case_id=f"c{s}") for s in range(3)]
    model = tiny_unet().train()
    data = build_slice_set(vols[:2], tiny_spec)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(40):  # a few steps of the U-Net's own loss: decisive logits, livers of the right shape
        idx = torch.randint(0, len(data), (4,), generator=gen)
        loss = dice_bce_loss(model(data.x[idx]), data.y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    ckpt = save_checkpoint(root / "unet.pt", model.eval(), model_name="unet_paper", spec=tiny_spec)
    onnx_path = root / "fp32.onnx"
    export_onnx(ckpt, onnx_path, verify_volumes=[vols[0]])
    cases = root / "cases"
    for v in vols:
        write_nifti(v.image, v.affine, cases / v.case_id / "image.nii.gz")
        write_nifti(v.mask.astype("uint8"), v.affine, cases / v.case_id / "mask.nii.gz")
    return ckpt, onnx_path, vols, cases


@pytest.fixture(scope="module")
def fine_tuned(trained, tmp_path_factory):
    _, onnx_path, vols, _ = trained
    out = tmp_path_factory.mktemp("qat_out") / "qat.int8.onnx"
    return qat_to_int8(onnx_path, out, vols, options=QUICK, calib_slices=8)


def _slices(vols, spec):
    return prec.calibration_slices(vols, spec, n=12, seed=5)


def _edge_activations(seed: int, scale: float) -> torch.Tensor:
    """Random activations plus zeros, the extreme levels, values just outside them and far outliers."""
    x = torch.randn(4, 3, 6, 6, generator=torch.Generator().manual_seed(seed)) * 60 * scale
    edges = torch.tensor([0.0, 127, -128, 255, 127.6, -128.6, 255.6, -0.7, 1e4, -1e4]) * scale
    x.view(-1)[:edges.numel()] = edges
    return x


@pytest.mark.parametrize("zero_point", [0, -128])
@pytest.mark.parametrize("seed", range(5))
def test_fake_quantize_values_and_input_gradient_equal_torchs(seed, zero_point):
    scale = 0.05
    x = _edge_activations(seed, scale)
    ours, theirs = x.clone().requires_grad_(), x.clone().requires_grad_()
    out = fake_quantize(ours, torch.tensor(scale), torch.tensor(float(zero_point)))
    ref = torch.fake_quantize_per_tensor_affine(theirs, scale, zero_point, QMIN, QMAX)
    weights = torch.randn(x.shape, generator=torch.Generator().manual_seed(100 + seed))
    (out * weights).sum().backward()
    (ref * weights).sum().backward()
    assert torch.equal(out, ref)
    assert torch.equal(ours.grad, theirs.grad)


@pytest.mark.parametrize("zero_point", [0, -128])
@pytest.mark.parametrize("seed", range(5))
def test_fake_quantize_scale_gradient_is_lsq(seed, zero_point):
    """d loss / d scale, LSQ (Esser et al. 2020), written out in numpy float64: ``round(v) - v`` where the
    level is in range, the clamped level where it is not, summed against the upstream gradient."""
    scale = 0.05
    x = _edge_activations(seed, scale)
    weights = torch.randn(x.shape, generator=torch.Generator().manual_seed(100 + seed))
    s = torch.tensor(scale, requires_grad=True)
    (fake_quantize(x, s, torch.tensor(float(zero_point))) * weights).sum().backward()
    v = x.numpy().astype(np.float32) / np.float32(scale)
    level = np.rint(v) + zero_point
    inside = (level >= QMIN) & (level <= QMAX)
    clamped = np.clip(level, QMIN, QMAX) - zero_point
    expected = np.sum(weights.numpy().astype(np.float64) * np.where(inside, np.rint(v) - v, clamped))
    assert s.grad.item() == pytest.approx(expected, rel=1e-4, abs=1e-3)


def test_fake_quant_forward_equals_onnxruntime_on_the_written_graph(fine_tuned, trained, tiny_spec):
    """The "matches exactly" check, on held-out slices: the torch fake quantisation uses the written graph's
    int8 weights, scales and zero points, so the two differ only where float rounding puts a value on the
    other side of an int8 rounding boundary, which the decoder then spreads.

    As written (onnxruntime with graph optimisations off: each Q/DQ pair and a float Conv as the ONNX
    standard defines them): measured, over fine-tuning runs, from max 1e-7 to mean 1.6e-5 / max 0.03
    with 99.7 % of the probabilities within 1e-5. Bound: >= 99 % within 1e-5, mean <= 1e-4.
    The session users get fuses DQ -> Conv -> Q into QLinearConv (an integer accumulator requantised by one
    float multiplier), which flips more boundaries: measured mean |Δprob| 4e-4, 0.07 % of mask pixels, while
    the fp32 graph is 7e-3 and 0.66 % away from the int8 one. Bound: mean <= 2e-3 and <= a quarter of fp32's
    distance. Mutation that fails it: the learned scales not written back (max 0.12).
    """
    x = _slices(trained[2], tiny_spec)
    with torch.no_grad():
        fake = fine_tuned.net.eval()(torch.from_numpy(x))["prob"].numpy()
    as_written = ort.SessionOptions()
    as_written.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    for opts in (as_written, ort.SessionOptions()):
        sess = ort.InferenceSession(str(fine_tuned.path), opts, providers=["CPUExecutionProvider"])
        int8 = sess.run(["prob"], {"image": x})[0]
        diff = np.abs(int8 - fake)
        if opts is as_written:
            assert (diff <= 1e-5).mean() >= 0.99 and diff.mean() <= 1e-4
    fp32 = ort.InferenceSession(str(trained[1]), providers=["CPUExecutionProvider"]).run(["prob"], {"image": x})[0]
    assert diff.mean() <= min(2e-3, 0.25 * np.abs(int8 - fp32).mean())


def test_unquantized_forward_is_the_fp32_network(trained, tiny_spec, tmp_path):
    """The distillation teacher: the Q/DQ graph in torch with every pair an identity is the fp32 export
    (the equalisation before placement is exact), while the quantised forward is not."""
    _, onnx_path, vols, _ = trained
    calib = prec.calibration_slices(vols, tiny_spec, n=8)
    prec.prepare_fp32(onnx_path, tmp_path / "prepared.onnx", calib)
    template, _ = prec.place_qdq(tmp_path / "prepared.onnx", calib)
    net = QdqNet(template, onnx.load(str(tmp_path / "prepared.onnx"))).eval()
    x = _slices(vols, tiny_spec)
    fp32 = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).run(["prob"], {"image": x})[0]
    with torch.no_grad():
        plain = net(torch.from_numpy(x), quantize=False)["prob"].numpy()
        quantized = net(torch.from_numpy(x))["prob"].numpy()
    assert np.abs(plain - fp32).max() <= 1e-4
    assert np.abs(quantized - fp32).max() > 1e-3


def test_fine_tuning_changed_weights_and_scales_and_records_itself(fine_tuned, trained):
    meta = {p.key: p.value for p in onnx.load(str(fine_tuned.path)).metadata_props}
    assert meta["liverrt.precision"] == "int8"
    record = json.loads(meta["liverrt.calibration"])
    assert record["method"] == "qat" and record["qat"]["steps"] == 6 and record["target"] == "onnxruntime"
    assert fine_tuned.steps == 6 and np.isfinite(fine_tuned.loss_last)
    net = fine_tuned.net
    fp32 = {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(str(trained[1])).graph.initializer}
    moved = [n for n, w in net.float_weights().items() if n in fp32 and not np.allclose(w, fp32[n], atol=1e-7)]
    assert moved  # equalised, then trained: weights differ from the export's
    assert len(set(net.activation_scales().values())) == len(net.scale_names)  # one learned scale per tie group


def _placement(path) -> set[tuple]:
    """Each activation Q (tensor, the tensors sharing its scale, zero point) and each weight DQ (reader, axis)."""
    model = onnx.load(str(path))
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    qs = [n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in inits]
    sharing = {}
    for q in qs:
        sharing.setdefault(q.input[1], set()).add(q.input[0])
    readers = {i: n.name for n in model.graph.node for i in n.input}
    acts = {(q.input[0], frozenset(sharing[q.input[1]]), int(inits[q.input[2]])) for q in qs}
    weights = {(readers[n.output[0]], next((a.i for a in n.attribute if a.name == "axis"), 1))
               for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits}
    return acts | weights


@pytest.mark.parametrize("target", ["onnxruntime", "tensorrt"])
def test_qat_graph_has_the_placement_of_post_training_int8(trained, tiny_spec, tmp_path, target):
    _, onnx_path, vols, _ = trained
    ptq = prec.to_int8(onnx_path, tmp_path / "ptq.onnx", prec.calibration_slices(vols, tiny_spec, n=8),
                       method="percentile", target=target)
    qat = qat_to_int8(onnx_path, tmp_path / "qat.onnx", vols, options=QatOptions(epochs=1, steps_per_epoch=1,
                                                                                  batch_size=2, device="cpu"),
                      target=target, calib_slices=8)
    placement = _placement(ptq)
    assert placement == _placement(qat.path)
    zero_points = {zp for item in placement if len(item) == 3 for zp in [item[2]]}
    assert zero_points == ({0, 128} if target == "onnxruntime" else {0})  # onnxruntime: uint8 activations


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_cli_qat_export_writes_a_gated_int8_onnx(trained, tmp_path):
    ckpt, _, _, cases = trained
    out = tmp_path / "unet.int8.onnx"
    r = run("export", ckpt, "-o", out, "--precision", "int8", "--qat", "--qat-epochs", 1, "--qat-steps", 2,
            "--calib", cases, "--calib-slices", 8, "--verify", cases)
    report = tmp_path / "unet.int8.onnx.verify.json"
    assert report.is_file(), r.output
    verdict = json.loads(report.read_text())
    if r.exit_code == 0:
        assert out.is_file() and "PASSED" in r.output
        assert json.loads({p.key: p.value for p in onnx.load(str(out)).metadata_props}
                          ["liverrt.calibration"])["method"] == "qat"
    else:  # the gate's normal failure: exit 1, the report kept, the artifact removed
        assert r.exit_code == 1 and "verification failed" in r.output and not out.exists(), r.output
        assert verdict


@pytest.mark.parametrize("args, expected", [
    (("--precision", "fp16", "--qat"), "--qat fine-tunes for INT8: expected --precision int8, got fp16"),
    (("--precision", "int8", "--qat-epochs", 2), "--qat-epochs is for --qat"),
    (("--precision", "int8", "--qat-distill", 0), "--qat-distill is for --qat"),
    (("--precision", "int8", "--qat-masks", 1), "--qat-masks is for --qat"),
    (("--precision", "int8", "--qat-start", "percentile"), "--qat-start is for --qat"),
    (("--precision", "int8", "--qat", "--qat-distill", 0, "--calib", "CASES"), "distill=0 and masks=0 (expected a loss)"),
    (("--precision", "int8", "--qat", "--calib-method", "search", "--calib", "CASES"), "--qat learns them"),
])
def test_cli_refuses_qat_option_misuse(trained, tmp_path, args, expected):
    ckpt, _, _, cases = trained
    r = run("export", ckpt, "-o", tmp_path / "x.onnx", *(cases if a == "CASES" else a for a in args))
    assert r.exit_code == 2 and expected in r.output and "Traceback" not in r.output, r.output
    assert not list(tmp_path.iterdir())


def test_qat_refuses_calibration_cases_without_masks(trained, tmp_path):
    ckpt, _, vols, _ = trained
    bare = tmp_path / "bare"
    write_nifti(vols[0].image, vols[0].affine, bare / "c0" / "image.nii.gz")
    r = run("export", ckpt, "-o", tmp_path / "x.onnx", "--precision", "int8", "--qat", "--qat-masks", 1, "--calib", bare)
    assert r.exit_code == 2 and "--qat-masks 1 fine-tunes on the --calib cases' liver masks" in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1
    with pytest.raises(InputError, match="--qat needs --calib"):
        run_export(ckpt, tmp_path / "y.onnx", precision="int8", qat=True)
    assert not (tmp_path / "y.onnx").exists()


def test_distillation_alone_needs_no_masks_and_the_start_sets_the_first_ranges(trained, fine_tuned, tmp_path):
    """The default loss (distillation from the fp32 graph) fine-tunes on cases without masks; ``start``
    chooses between the full range search (the fixture's run) and its first step only."""
    _, onnx_path, vols, _ = trained
    bare = [dataclasses.replace(v, mask=None) for v in vols]
    options = QatOptions(epochs=1, steps_per_epoch=2, batch_size=2, start="percentile", device="cpu")
    result = qat_to_int8(onnx_path, tmp_path / "qat.onnx", bare, options=options, calib_slices=8)
    assert result.steps == 2 and np.isfinite(result.loss_last)
    record = json.loads({p.key: p.value for p in onnx.load(str(result.path)).metadata_props}["liverrt.calibration"])
    searched = json.loads({p.key: p.value for p in onnx.load(str(fine_tuned.path)).metadata_props}
                          ["liverrt.calibration"])
    assert record["qat"]["masks"] == 0 and record["init"]["ranges"] == STARTS["percentile"].description
    assert searched["init"]["ranges"] == STARTS["search"].description
    assert searched["init"]["evaluations"] > record["init"]["evaluations"]  # the search's sweeps ran


def test_qat_refuses_a_model_class_without_qat_support(tmp_path, tiny_spec):
    ckpt = save_checkpoint(tmp_path / "dn.pt", DnCNNSR(channels=4), model_name="dncnn_sr", spec=tiny_spec)
    with pytest.raises(InputError, match="--qat: quantization-aware fine-tuning is not available for a DnCNN"):
        run_export(ckpt, tmp_path / "dn.int8.onnx", precision="int8", qat=True,
                   calib_volumes=[make_volume()])
    assert not (tmp_path / "dn.int8.onnx").exists()


def test_qat_options_are_checked_before_any_work():
    with pytest.raises(InputError, match="expected --precision int8, got fp32"):
        ExportOptions(qat=True)
    with pytest.raises(InputError, match=r"epochs=0 \(expected >= 1\), lr=0"):
        QatOptions(epochs=0, lr=0)
    with pytest.raises(InputError, match=r"distill=-1.0 \(expected >= 0\)"):
        QatOptions(distill=-1.0)
    with pytest.raises(InputError, match=r"distill=0 and masks=0 \(expected a loss\)"):
        QatOptions(distill=0)
    with pytest.raises(InputError, match=r"start='minmax' \(expected one of search, percentile\)"):
        QatOptions(start="minmax")
    assert isinstance(ExportOptions(precision="int8", qat=True).qat, QatOptions)
    assert ExportOptions(precision="int8", qat=False).qat is None
    assert tiny_unet().qat_supported and not DnCNNSR.qat_supported
