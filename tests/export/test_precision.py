import dataclasses
import json
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from liverrt_test_helpers import make_volume
from onnx import TensorProto, helper, numpy_helper

from liverrt.artifacts import artifact_info
from liverrt.errors import ArtifactError, ExportError, InputError
from liverrt.export import precision
from liverrt.export.precision import calibration_slices, convert_precision, to_fp16, to_int8
from liverrt.hashing import sha256_file
from liverrt.runtime import open_engine

# Measured on the tiny U-Net (phantom slices, 3 seeds x 3 methods x per-channel on/off):
# max |Δprob| vs fp32 int8 <= 3.4e-3, fp16 <= 1.3e-4; the bounds keep a 3x and 7x margin.
# (The untrained tiny U-Net is easy to quantise; test_calibrate.py holds the graphs that are not.)
INT8_ATOL = 1e-2
FP16_ATOL = 1e-3


@pytest.fixture(scope="module")
def calib(tiny_spec):
    return calibration_slices([make_volume(seed=i, case_id=f"cal{i}") for i in range(3)], tiny_spec, n=16)


@pytest.fixture(scope="module")
def fp16_onnx(tiny_onnx, tmp_path_factory):
    return to_fp16(tiny_onnx, tmp_path_factory.mktemp("fp16") / "tiny_fp16.onnx")


@pytest.fixture(scope="module")
def int8_onnx(tiny_onnx, calib, tmp_path_factory):
    return to_int8(tiny_onnx, tmp_path_factory.mktemp("int8") / "tiny_int8.onnx", calib,
                   calibration_source="phantom cases cal0-cal2")


def run(path, x):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(["prob"], {"image": x})[0]


def elem_types(model):
    g = onnx.shape_inference.infer_shapes(model).graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*g.input, *g.output, *g.value_info)}
    return types | {t.name: t.data_type for t in g.initializer}


def node(model, op_type):
    (found,) = [n for n in model.graph.node if n.op_type == op_type]
    return found


def producer(model, name):
    return next(n for n in model.graph.node if name in n.output)


def meta(path):
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


# --------------------------------------------------------------------------- fp16


def test_fp16_graph_has_float32_io_and_float16_weights(fp16_onnx):
    model = onnx.load(str(fp16_onnx))
    onnx.checker.check_model(model, full_check=True)
    assert model.graph.input[0].name == "image" and model.graph.output[0].name == "prob"
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    conv_weights = {n.input[1] for n in model.graph.node if n.op_type in ("Conv", "ConvTranspose")}
    kinds = {t.data_type for t in model.graph.initializer if t.name in conv_weights}
    assert conv_weights and kinds == {TensorProto.FLOAT16}


def test_fp16_computes_the_sigmoid_in_float32_and_writes_prob_directly(fp16_onnx):
    model = onnx.load(str(fp16_onnx))
    types, sig = elem_types(model), node(model, "Sigmoid")
    assert types[sig.input[0]] == TensorProto.FLOAT and sig.output[0] == "prob"  # no fp16 round trip after it
    cast = producer(model, sig.input[0])
    assert cast.op_type == "Cast" and cast.attribute[0].i == TensorProto.FLOAT
    assert types[cast.input[0]] == TensorProto.FLOAT16  # the logits come from the fp16 convolutions
    casts = [n for n in model.graph.node if n.op_type == "Cast"]
    assert len(casts) == 2  # image -> fp16 and logits -> fp32, nothing else


def test_fp16_carries_the_metadata_over(fp16_onnx, tiny_onnx, tiny_spec):
    src, out = meta(tiny_onnx), meta(fp16_onnx)
    assert out.pop("liverrt.precision") == "fp16" and src.pop("liverrt.precision") == "fp32"
    assert out.pop("liverrt.source_onnx_sha256") == sha256_file(tiny_onnx)
    assert out == src
    info = artifact_info(fp16_onnx)
    assert info.precision == "fp16" and info.spec == tiny_spec and info.metrics == {"val_mask_iou": 0.5}


def test_variants_keep_the_sources_ir_version_opsets_and_node_annotations(fp16_onnx, int8_onnx, tiny_onnx):
    """The graph rewrites (onnx-graphsurgeon) replace the graph alone: what the model says about itself stays."""
    src = onnx.load(str(tiny_onnx))
    annotated = {n.name: n.metadata_props for n in src.graph.node if n.metadata_props}
    assert annotated and src.graph.metadata_props
    for path in (fp16_onnx, int8_onnx):
        model = onnx.load(str(path))
        assert model.ir_version == src.ir_version and model.opset_import == src.opset_import
        assert model.graph.metadata_props == src.graph.metadata_props
        kept = {n.name: n.metadata_props for n in model.graph.node if n.name in annotated}
        assert kept and all(kept[name] == annotated[name] for name in kept)


def test_fp16_probabilities_match_fp32(fp16_onnx, tiny_onnx, calib):
    x = np.concatenate([calib, np.random.default_rng(0).random((3, 1, 32, 32), dtype=np.float32)])
    ref, got = run(tiny_onnx, x), run(fp16_onnx, x)
    assert got.dtype == np.float32 and got.shape == ref.shape
    assert np.abs(got - ref).max() < FP16_ATOL
    with open_engine("onnxruntime", fp16_onnx) as eng:  # the runtime takes it like any liverrt ONNX file
        assert np.abs(eng.infer(x[:2])["prob"] - ref[:2]).max() < FP16_ATOL


def _normalised_graph(tmp_path, tiny_onnx):
    """image -> Sub -> Div (an in-graph normalisation) -> Conv -> Sigmoid -> prob, with liverrt metadata."""
    w = numpy_helper.from_array(np.random.default_rng(0).normal(size=(1, 1, 3, 3)).astype(np.float32), "w")
    mean = numpy_helper.from_array(np.array(0.4, np.float32), "mean")
    std = numpy_helper.from_array(np.array(0.2, np.float32), "std")
    nodes = [helper.make_node("Sub", ["image", "mean"], ["centred"], name="sub"),
             helper.make_node("Div", ["centred", "std"], ["scaled"], name="div"),
             helper.make_node("Conv", ["scaled", "w"], ["logits"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Sigmoid", ["logits"], ["prob"], name="sigmoid")]
    io_ = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", 1, 32, 32]) for n in ("image", "prob")]
    model = helper.make_model(helper.make_graph(nodes, "norm", [io_[0]], [io_[1]], [w, mean, std]),
                              opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9  # onnx's newest IR is more than older onnxruntime releases read
    helper.set_model_props(model, meta(tiny_onnx))
    path = tmp_path / "norm.onnx"
    onnx.save(model, str(path))
    return path


def test_fp16_keeps_an_input_normalisation_in_float32(tmp_path, tiny_onnx):
    src = _normalised_graph(tmp_path, tiny_onnx)
    model = onnx.load(str(to_fp16(src, tmp_path / "norm_fp16.onnx")))
    types = elem_types(model)
    assert node(model, "Sub").input[0] == "image"  # reads the float32 input directly
    assert types[node(model, "Div").output[0]] == TensorProto.FLOAT
    assert types[node(model, "Conv").output[0]] == TensorProto.FLOAT16
    x = np.random.default_rng(1).random((2, 1, 32, 32), dtype=np.float32)
    assert np.abs(run(tmp_path / "norm_fp16.onnx", x) - run(src, x)).max() < FP16_ATOL


def test_fp16_block_list_is_a_parameter(tmp_path, tiny_onnx):
    model = onnx.load(str(to_fp16(tiny_onnx, tmp_path / "all16.onnx", keep_fp32_ops=())))
    types, sig = elem_types(model), node(model, "Sigmoid")
    assert types[sig.input[0]] == TensorProto.FLOAT16 and types[sig.output[0]] == TensorProto.FLOAT16
    assert model.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT  # IO stays float32


# --------------------------------------------------------------------------- int8


def _weight_dqs(model):
    inits = {t.name: t for t in model.graph.initializer}
    consumer = {i: n for n in model.graph.node for i in n.input}
    for dq in model.graph.node:
        if dq.op_type == "DequantizeLinear" and dq.input[0] in inits and len(inits[dq.input[0]].dims) == 4:
            yield dq, inits[dq.input[0]], inits[dq.input[1]], consumer[dq.output[0]]


def test_int8_graph_is_symmetric_per_channel_qdq(int8_onnx):
    model = onnx.load(str(int8_onnx))
    onnx.checker.check_model(model, full_check=True)
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    inits = {t.name: t for t in model.graph.initializer}
    weights = list(_weight_dqs(model))
    assert len(weights) == sum(n.op_type in ("Conv", "ConvTranspose") for n in model.graph.node) - 1 == 12
    for dq, w, scale, conv in weights:
        assert w.data_type == TensorProto.INT8
        axis = 1 if conv.op_type == "ConvTranspose" else 0  # the output-channel axis of the weight
        assert helper.get_attribute_value(next(a for a in dq.attribute if a.name == "axis")) == axis
        assert list(scale.dims) == [w.dims[axis]]
    assert not any(t.data_type == TensorProto.INT32 for t in model.graph.initializer)  # biases stay float
    # onnxruntime target: weights symmetric int8; activations stored as uint8 (what its QLinearConv takes):
    # signed ones symmetric (zero point 128), Relu outputs [0, amax] (zero point 0, int8's -128)
    producer = {o: n for n in model.graph.node for o in n.output}
    unsigned = set()
    for n in model.graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            z = inits[n.input[2]]
            if n.input[0] in inits:  # a weight
                assert z.data_type == TensorProto.INT8 and not numpy_helper.to_array(z).any()
                continue
            assert z.data_type == TensorProto.UINT8 and int(numpy_helper.to_array(z).ravel()[0]) in (128, 0)
            if n.op_type == "QuantizeLinear" and numpy_helper.to_array(z).ravel()[0] == 0:
                unsigned.add(producer[n.input[0]].op_type)
    assert unsigned == {"Relu", "MaxPool", "Conv"}  # Conv: the pre-Relu output, tied to the Relu's range


def test_int8_for_tensorrt_has_only_zero_zero_points(tiny_onnx, calib, tmp_path):
    out = to_int8(tiny_onnx, tmp_path / "trt.onnx", calib, target="tensorrt", method="percentile")
    model = onnx.load(str(out))
    inits = {t.name: t for t in model.graph.initializer}
    zero_points = [inits[n.input[2]] for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert zero_points and all(not numpy_helper.to_array(z).any() for z in zero_points)
    assert all(z.data_type == TensorProto.INT8 for z in zero_points)  # TensorRT takes int8 activations only
    assert json.loads(meta(out)["liverrt.calibration"])["target"] == "tensorrt"
    with pytest.raises(InputError, match="onnxruntime"):
        to_int8(tiny_onnx, tmp_path / "x.onnx", calib, target="openvino")


def test_int8_keeps_the_first_layer_the_sigmoid_and_the_logits_in_float(int8_onnx):
    model = onnx.load(str(int8_onnx))
    sig = node(model, "Sigmoid")
    assert producer(model, sig.input[0]).op_type == "Conv"  # no Q/DQ on the logits
    assert sig.output[0] == "prob" and model.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    first = next(n for n in model.graph.node if "image" in n.input)
    inits = {t.name: t for t in model.graph.initializer}
    assert first.op_type == "Conv" and inits[first.input[1]].data_type == TensorProto.FLOAT


def test_int8_probabilities_match_fp32(int8_onnx, tiny_onnx, calib, tiny_spec):
    held_out = calibration_slices([make_volume(seed=42, case_id="test")], tiny_spec, n=6)
    for x in (calib, held_out):
        ref, got = run(tiny_onnx, x), run(int8_onnx, x)
        assert got.dtype == np.float32 and np.abs(got - ref).max() < INT8_ATOL


def test_int8_metadata(int8_onnx, tiny_onnx):
    out = meta(int8_onnx)
    assert out["liverrt.precision"] == "int8" and out["liverrt.source_onnx_sha256"] == sha256_file(tiny_onnx)
    calibration = json.loads(out["liverrt.calibration"])
    assert {k: calibration[k] for k in ("slices", "method", "per_channel", "quantize_conv_outputs",
                                        "float_input_layer", "source")} == {
        "slices": 16, "method": "search", "per_channel": True, "quantize_conv_outputs": True,
        "float_input_layer": True, "source": "phantom cases cal0-cal2"}
    # what the range search chose and measured on the calibration slices
    assert calibration["evaluations"] > 0 and calibration["equalized_convolutions"] > 0
    assert sum(calibration["scales_by_percentile"].values()) > 0
    assert calibration["objective"] <= calibration["objective_minmax"]
    assert out["liverrt.preprocess"] == meta(tiny_onnx)["liverrt.preprocess"]
    assert artifact_info(int8_onnx).precision == "int8"


@pytest.mark.parametrize("method", ["percentile", "minmax"])
def test_one_pass_ranges_and_per_tensor_weights(method, tiny_onnx, calib, tmp_path):
    out = to_int8(tiny_onnx, tmp_path / "m.onnx", calib, method=method, per_channel=False, batch_size=5)
    model = onnx.load(str(out))
    assert all(not scale.dims for _, _, scale, _ in _weight_dqs(model))  # one scale per weight tensor
    assert np.abs(run(out, calib) - run(tiny_onnx, calib)).max() < INT8_ATOL
    assert json.loads(meta(out)["liverrt.calibration"])["method"] == method


def test_int8_with_tensorrt_placement_quantizes_only_conv_inputs(tiny_onnx, calib, tmp_path):
    # one-pass ranges: the search may leave a convolution's input float (fallback), which this test is not about
    out = to_int8(tiny_onnx, tmp_path / "trt.onnx", calib, quantize_conv_outputs=False, float_input_layer=False,
                  method="percentile", target="tensorrt")
    model = onnx.load(str(out))
    # the image itself is quantised too when float_input_layer=False
    assert next(n for n in model.graph.node if "image" in n.input).op_type == "QuantizeLinear"
    consumer = {i: n for n in model.graph.node for i in n.input}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    # Conv -> Relu unquantised in between (TensorRT fuses them); a ConvTranspose output is still
    # quantised, as an input of the skip Concat
    assert convs and all(consumer[c.output[0]].op_type in ("Relu", "Sigmoid") for c in convs)
    assert all(producer(model, c.input[0]).op_type == "DequantizeLinear" for c in convs)
    assert np.abs(run(out, calib) - run(tiny_onnx, calib)).max() < INT8_ATOL


def _upconv_graph(spatial):
    """Three ConvTransposes side by side: 2x2 stride 2 with a bias, 3x3 stride 3 without, and a padded one."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name) for name, shape in
             (("w2", (4, 5, 2, 2)), ("b2", (5,)), ("w3", (4, 3, 3, 3)), ("wp", (4, 2, 3, 3)))]
    nodes = [helper.make_node("ConvTranspose", ["x", "w2", "b2"], ["y2"], "up2", kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("ConvTranspose", ["x", "w3"], ["y3"], "up3", kernel_shape=[3, 3], strides=[3, 3]),
             helper.make_node("ConvTranspose", ["x", "wp"], ["yp"], "padded", kernel_shape=[3, 3], strides=[2, 2],
                              pads=[1, 1, 1, 1])]
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("y2", "y3", "yp")]
    graph = helper.make_graph(nodes, "ups", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4, *spatial])],
                              outputs, inits)
    return onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))


def _run_all(model, x):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})


def test_shuffled_upconvs_are_the_same_function():
    model = _upconv_graph([5, 7])  # not square: rows and columns must not swap
    x = np.random.default_rng(1).standard_normal((2, 4, 5, 7)).astype(np.float32)
    ref = _run_all(model, x)
    assert precision.shuffle_upconvs(model) == 2
    onnx.checker.check_model(model, full_check=True)
    assert [n.name for n in model.graph.node if n.op_type == "ConvTranspose"] == ["padded"]
    for got, want in zip(_run_all(model, x), ref, strict=True):
        assert got.shape == want.shape and np.abs(got - want).max() < 1e-5
    dynamic = _upconv_graph(["h", "w"])  # the Reshapes need static sizes: left alone
    assert precision.shuffle_upconvs(dynamic) == 0


def test_int8_for_onnxruntime_runs_the_upconvolutions_in_int8(int8_onnx, tiny_onnx, calib, tmp_path):
    """onnxruntime's CPU provider has no int8 ConvTranspose: the onnxruntime target shuffles, one scale per
    shuffle, and the session moves int8 values (no DequantizeLinear before a Reshape or Transpose)."""
    model = onnx.load(str(int8_onnx))
    assert not any(n.op_type == "ConvTranspose" for n in model.graph.node)
    moves = [n for n in model.graph.node if n.op_type in ("Reshape", "Transpose")]
    assert len(moves) == 5 * sum(n.op_type == "ConvTranspose" for n in onnx.load(str(tiny_onnx)).graph.node) > 0
    for move in moves:
        dq, (q,) = producer(model, move.input[0]), [n for n in model.graph.node if move.output[0] in n.input]
        assert dq.op_type == "DequantizeLinear" and q.op_type == "QuantizeLinear" and dq.input[1:] == q.input[1:]
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    options.log_severity_level = 3
    ort.InferenceSession(str(int8_onnx), options, providers=["CPUExecutionProvider"])
    optimized = onnx.load(options.optimized_model_filepath)
    made_by = {o: n.op_type for n in optimized.graph.node for o in n.output}
    reads = [made_by.get(n.input[0]) for n in optimized.graph.node if n.op_type in ("Reshape", "Transpose")]
    assert reads and "DequantizeLinear" not in reads and "ConvTranspose" not in made_by.values()
    kept = to_int8(tiny_onnx, tmp_path / "trt.onnx", calib, target="tensorrt", method="percentile")
    assert any(n.op_type == "ConvTranspose" for n in onnx.load(str(kept)).graph.node)  # TensorRT: int8 deconv


# --------------------------------------------------------------------------- calibration slices


def _volume_with_empty_slices(seed, empty):
    vol = make_volume(shape=(8, 48, 40), seed=seed, case_id=f"v{seed}")
    vol.mask[:empty] = False
    vol.image[:empty] = -1000  # liver-free slices are pure air: all zeros after preprocessing
    return vol


def test_calibration_slices_mix_liver_and_liver_free_slices(tiny_spec):
    vols = [_volume_with_empty_slices(0, 3), _volume_with_empty_slices(1, 3)]
    x = calibration_slices(vols, tiny_spec, n=8, liver_fraction=0.5)
    assert x.shape == (8, 1, 32, 32) and x.dtype == np.float32 and x.flags.c_contiguous
    empty = ~x.reshape(8, -1).any(axis=1)
    assert empty.sum() == 4
    assert np.array_equal(x, calibration_slices(vols, tiny_spec, n=8, liver_fraction=0.5))  # seeded
    only_liver = calibration_slices(vols, tiny_spec, n=8, liver_fraction=1.0)
    assert only_liver.reshape(8, -1).any(axis=1).all()


def test_calibration_slices_fill_short_pools_and_cap_at_the_available_slices(tiny_spec):
    vols = [_volume_with_empty_slices(0, 1)]
    x = calibration_slices(vols, tiny_spec, n=6, liver_fraction=0.0)  # only 1 liver-free slice
    assert x.shape[0] == 6 and (~x.reshape(6, -1).any(axis=1)).sum() == 1
    assert calibration_slices(vols, tiny_spec, n=100).shape[0] == 8
    unlabelled = dataclasses.replace(make_volume(seed=3), mask=None)
    assert calibration_slices([unlabelled], tiny_spec, n=4).shape == (4, 1, 32, 32)


def test_calibration_slices_refuse_bad_requests(tiny_spec):
    with pytest.raises(InputError, match="no volumes"):
        calibration_slices([], tiny_spec)
    with pytest.raises(InputError, match="n=0"):
        calibration_slices([make_volume()], tiny_spec, n=0)
    with pytest.raises(InputError, match="liver_fraction"):
        calibration_slices([make_volume()], tiny_spec, liver_fraction=1.5)


# --------------------------------------------------------------------------- errors


def test_sources_that_are_not_liverrt_fp32_onnx_are_refused(tmp_path, tiny_checkpoint, fp16_onnx):
    with pytest.raises(InputError, match="does not exist"):
        to_fp16(tmp_path / "missing.onnx", tmp_path / "out.onnx")
    with pytest.raises(InputError, match="not an .onnx file"):
        to_fp16(tiny_checkpoint, tmp_path / "out.onnx")
    io_ = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 1, 8, 8]) for n in ("image", "prob")]
    plain = helper.make_graph([helper.make_node("Sigmoid", ["image"], ["prob"])], "plain", [io_[0]], [io_[1]])
    onnx.save(helper.make_model(plain), str(tmp_path / "plain.onnx"))
    with pytest.raises(ArtifactError, match="no liverrt metadata"):
        to_fp16(tmp_path / "plain.onnx", tmp_path / "out.onnx")
    with pytest.raises(InputError, match="already fp16"):
        to_fp16(fp16_onnx, tmp_path / "out.onnx")
    assert not (tmp_path / "out.onnx").exists()


def test_bad_calibration_and_options_are_refused(tiny_onnx, calib, tmp_path):
    out = tmp_path / "out.onnx"
    bad = {
        "float32": calib.astype(np.float64),
        r"\(N, 1, 32, 32\)": calib[:, 0],
        "the model's PreprocessSpec: channels and size": np.zeros((2, 1, 64, 64), np.float32),
        "0 slices": calib[:0],
        "NaN": np.full_like(calib, np.nan),
        "numpy array": calib.tolist(),
    }
    for match, cal in bad.items():
        with pytest.raises(InputError, match=match):
            to_int8(tiny_onnx, out, cal)
    for method in ("kl", "entropy"):  # onnxruntime 1.32's entropy calibrator crashes on strided batches
        with pytest.raises(InputError, match="search"):
            to_int8(tiny_onnx, out, calib, method=method)
    with pytest.raises(InputError, match="should end in .onnx"):
        to_int8(tiny_onnx, tmp_path / "out.plan", calib)
    assert not out.exists()


def test_convert_precision_dispatches_and_refuses_unknown_names(tiny_onnx, calib, tmp_path):
    assert artifact_info(convert_precision(tiny_onnx, tmp_path / "a.onnx", "fp16")).precision == "fp16"
    with pytest.raises(InputError, match="expected one of"):
        convert_precision(tiny_onnx, tmp_path / "b.onnx", "int4")
    with pytest.raises(InputError, match="calibration"):
        convert_precision(tiny_onnx, tmp_path / "b.onnx", "int8")
    out = convert_precision(tiny_onnx, tmp_path / "c.onnx", "int8", calibration=calib[:4])
    assert artifact_info(out).precision == "int8"


def test_the_source_is_never_overwritten(tiny_onnx, tmp_path):
    src = tmp_path / "model.onnx"
    shutil.copy(tiny_onnx, src)
    before = src.read_bytes()
    with pytest.raises(InputError, match="Refusing to overwrite"):
        to_fp16(src, src)
    assert src.read_bytes() == before


def _dangling(model, keep):
    model.graph.node[0].input[0] = "nowhere"
    return model


def _unrunnable(model, keep):
    g = model.graph
    custom = helper.make_node("Mystery", [g.input[0].name], [g.output[0].name], domain="com.example")
    return helper.make_model(helper.make_graph([custom], "g", [g.input[0]], [g.output[0]]),
                             opset_imports=[*model.opset_import, helper.make_opsetid("com.example", 1)])


@pytest.mark.parametrize(("broken", "match"), [(_dangling, "onnx.checker"), (_unrunnable, "onnxruntime")])
def test_a_broken_conversion_raises_export_error_and_leaves_nothing(broken, match, tiny_onnx, tmp_path,
                                                                     monkeypatch):
    monkeypatch.setattr(precision, "_fp16_model", broken)
    out = tmp_path / "sub" / "broken.onnx"
    with pytest.raises(ExportError, match=match):
        to_fp16(tiny_onnx, out)
    assert list(out.parent.iterdir()) == []  # no file, no temp file
