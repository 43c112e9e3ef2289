"""INT8 ranges by output error, channel equalisation, Relu/Concat scale ties and float fallback."""

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from liverrt.export.calibrate import equalize, fit_ranges, tie_scales
from liverrt.export.graph import edit_graph
from liverrt.export.precision import to_int8

S = 32


def run(model_or_path, x, optimize=True):
    so = ort.SessionOptions()
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    src = model_or_path.SerializeToString() if isinstance(model_or_path, onnx.ModelProto) else str(model_or_path)
    return ort.InferenceSession(src, so, providers=["CPUExecutionProvider"]).run(["prob"], {"image": x})[0]


def conv(name, x, w, b, out, **attrs):
    inits = [numpy_helper.from_array(np.asarray(w, np.float32), f"{name}.w"),
             numpy_helper.from_array(np.asarray(b, np.float32), f"{name}.b")]
    return helper.make_node("Conv", [x, f"{name}.w", f"{name}.b"], [out], name=name, **attrs), inits


def liverrt_model(nodes, inits, tiny_onnx):
    """A graph image (N,1,S,S) -> prob with the tiny U-Net's liverrt metadata (so to_int8 accepts it)."""
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, S, S])],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["N", 1, S, S])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    meta = {p.key: p.value for p in onnx.load(str(tiny_onnx)).metadata_props}
    helper.set_model_props(model, meta)
    onnx.checker.check_model(model, full_check=True)
    return model


def wide_range_model(tiny_onnx):
    """The failure a trained U-Net showed, in three 1x1 convolutions.

    t = relu(x - 0.3) is a few tenths where the decision is made (logit
    50 (t - 0.2), i.e. x = 0.5) and ~500 on the few "metal" pixels of
    :func:`slices`. One int8 scale set by the maximum (step ~4) rounds every
    t below 2 to 0, so the min-max graph finds no liver at all. Single
    channels with weights 1 and 50: int8 holds the weights exactly, so every
    difference comes from the activation ranges.
    """
    nodes, inits = [], []
    for node, init in (conv("c1", "image", [[[[1.0]]]], [-0.3], "h"),
                       conv("c2", "hr", [[[[1.0]]]], [0.0], "t"),
                       conv("c3", "tr", [[[[50.0]]]], [-10.0], "logit")):
        nodes.append(node)
        inits += init
    nodes[1:1] = [helper.make_node("Relu", ["h"], ["hr"])]
    nodes[3:3] = [helper.make_node("Relu", ["t"], ["tr"])]
    nodes.append(helper.make_node("Sigmoid", ["logit"], ["prob"]))
    return liverrt_model(nodes, inits, tiny_onnx)


def uniform_slices(n, seed):
    return np.random.default_rng(seed).random((n, 1, S, S), dtype=np.float32)


def slices(n, seed):
    """Uniform [0, 1] slices with 3 % of pixels at 500 (metal in a CT window's units)."""
    x = uniform_slices(n, seed)
    x[np.random.default_rng(seed + 100).random(x.shape) < 0.03] = 500.0
    return x


def mean_delta_dice(ref, got):
    a, b = (ref >= 0.5).reshape(len(ref), -1), (got >= 0.5).reshape(len(got), -1)
    total = a.sum(1) + b.sum(1)
    return float(np.where(total > 0, 1 - 2 * (a & b).sum(1) / np.maximum(total, 1), 0).mean())


@pytest.fixture(scope="module")
def wide(tiny_onnx, tmp_path_factory):
    path = tmp_path_factory.mktemp("wide") / "wide.onnx"
    onnx.save(wide_range_model(tiny_onnx), str(path))
    return path


def test_minmax_and_percentile_ranges_lose_the_liver_and_the_search_keeps_it(wide, tmp_path):
    calib, test = slices(16, 0), slices(8, 1)
    ref = run(wide, test)
    assert 0.45 < (ref >= 0.5).mean() < 0.55
    deltas = {}
    for method in ("minmax", "percentile", "search"):
        out = to_int8(wide, tmp_path / f"{method}.onnx", calib, method=method)
        deltas[method] = mean_delta_dice(ref, run(out, test))
    assert deltas["minmax"] > 0.5 and deltas["percentile"] > 0.5  # p99.99 is still the metal's 500
    assert deltas["search"] < 5e-3
    chosen = json.loads({p.key: p.value for p in onnx.load(str(tmp_path / "search.onnx")).metadata_props}
                        ["liverrt.calibration"])
    assert chosen["method"] == "search" and chosen["calib_delta_dice_minmax"] > 0.5
    assert chosen["calib_delta_dice"] < 5e-3 and chosen["objective"] < chosen["objective_minmax"]


def quantized_wide(wide, calib, tmp_path):
    """The wide-range graph after quantize_static with min-max ranges (search off), as a ModelProto."""
    to_int8(wide, tmp_path / "q.onnx", calib, method="minmax")
    return onnx.load(str(tmp_path / "q.onnx"))


def test_search_session_equals_the_graph_it_writes(wide, tmp_path):
    """The Where-bypass search graph with scales as inputs computes what the final QDQ graph computes."""
    calib = slices(8, 2)
    model = quantized_wide(wide, calib, tmp_path)
    fit = fit_ranges(wide, model, calib, method="search", sweeps=1, eval_slices=8, max_float=0)
    assert fit.evaluations > 0 and fit.float_tensors == []
    ref = run(wide, calib)
    assert mean_delta_dice(ref, run(model, calib, optimize=False)) == pytest.approx(fit.delta_dice, abs=1e-12)
    # onnxruntime's fused int8 kernels (QLinearConv) agree with the fake-quantised search
    assert mean_delta_dice(ref, run(model, calib)) < 5e-3


def test_float_fallback_removes_a_qdq_pair_and_reports_it(tiny_onnx, tmp_path):
    """The untrained tiny U-Net sits at p ~ 0.5, so int8 flips pixels that no range fixes: a float tensor is."""
    calib = uniform_slices(8, 3)
    model = quantized_wide(tiny_onnx, calib, tmp_path)
    fit = fit_ranges(tiny_onnx, model, calib, method="search", sweeps=1, eval_slices=8, max_float=1,
                     target_delta_dice=0.0)
    assert fit.delta_dice_ranges > 0 and len(fit.float_tensors) >= 1
    scales = {n.input[1] for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")}
    assert fit.float_scales and not scales & set(fit.float_scales)  # their Q/DQ pairs are gone
    onnx.checker.check_model(model, full_check=True)
    after = mean_delta_dice(run(tiny_onnx, calib), run(model, calib, optimize=False))
    assert after == pytest.approx(fit.delta_dice, abs=1e-12) and after < fit.delta_dice_ranges


def test_fallback_is_not_taken_when_the_target_is_met(tiny_onnx, tmp_path):
    calib = uniform_slices(8, 4)
    model = quantized_wide(tiny_onnx, calib, tmp_path)
    fit = fit_ranges(tiny_onnx, model, calib, method="search", sweeps=0, eval_slices=8, target_delta_dice=1.0,
                     target_worst_delta_dice=1.0)
    assert fit.float_tensors == [] and fit.worst_delta_dice is not None


def test_percentile_method_sets_each_scale_from_its_own_tensor(wide, tmp_path):
    calib = slices(8, 5)
    model = quantized_wide(wide, calib, tmp_path)
    fit = fit_ranges(wide, model, calib, method="percentile", percentile=50.0)
    assert set(fit.percentiles.values()) == {50.0} and fit.evaluations == 0
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    # the scale of relu(c2) now follows the median |t|, far below the metal's 500
    (q,) = [n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "tr"]
    t = run_intermediate(wide, "tr", calib)
    zero_point = inits[q.input[2]]  # a Relu output: the range [0, amax] over 255 steps (written as uint8)
    assert zero_point.dtype == np.uint8 and int(zero_point) == 0
    assert float(inits[q.input[1]]) * 255 == pytest.approx(np.percentile(np.abs(t), 50), rel=0.05)


def run_intermediate(path, name, x):
    model = onnx.load(str(path))
    model.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        [name], {"image": x})[0]


# --------------------------------------------------------------------------- ties


def test_relu_maxpool_and_concat_inputs_share_their_output_scale(tiny_onnx, tmp_path):
    calib = uniform_slices(4, 6)
    model = quantized_wide(tiny_onnx, calib, tmp_path)  # already tied by to_int8
    assert tie_scales(model) == 0  # idempotent
    scales_of = {}
    for n in model.graph.node:
        if n.op_type == "QuantizeLinear":
            scales_of.setdefault(n.input[0], set()).add(n.input[1])
    producer = {o: n for n in model.graph.node for o in n.output}
    relus = [n for n in model.graph.node if n.op_type == "Relu" and n.output[0] in scales_of]
    quantized_in = [r for r in relus if producer[r.input[0]].op_type == "DequantizeLinear"]
    assert len(quantized_in) == len(relus) - 1  # all but the float input layer's
    for relu in quantized_in:
        assert producer[relu.input[0]].input[1] in scales_of[relu.output[0]]
    pools = [n for n in model.graph.node if n.op_type == "MaxPool"]
    assert pools and all(scales_of[p.output[0]] == {producer[p.input[0]].input[1]} for p in pools)
    # each Concat input is read through its own Q/DQ pair at the Concat's scale: one rounding, and the
    # encoder's skip tensor keeps its own scale on the MaxPool path
    concats = [n for n in model.graph.node if n.op_type == "Concat"]
    assert concats
    for c in concats:
        (cat_scale,) = scales_of[c.output[0]]
        assert all(producer[i].input[1] == cat_scale for i in c.input)
        skip = producer[producer[c.input[1]].input[0]].input[0]
        assert len(scales_of[skip]) == 2


def test_fallback_removes_only_the_qdq_pairs_of_its_scale(tiny_onnx, tmp_path):
    """The skip tensor has a pair at its own scale (MaxPool path) and one at the Concat's: floating the
    Concat's scale leaves the MaxPool path quantised, as the search measured it."""
    from liverrt.export.calibrate import _bypass

    model = quantized_wide(tiny_onnx, uniform_slices(4, 12), tmp_path)
    concat = next(n for n in model.graph.node if n.op_type == "Concat")
    producer = {o: n for n in model.graph.node for o in n.output}
    skip_dq = producer[concat.input[1]]
    cat_scale, skip = skip_dq.input[1], producer[skip_dq.input[0]].input[0]
    before = [n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == skip]
    assert len(before) == 2
    _bypass(model, {cat_scale})
    after = [n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == skip]
    assert len(after) == 1 and after[0].input[1] != cat_scale
    concat = next(n for n in model.graph.node if n.name == concat.name)  # _bypass rewrote the graph
    assert skip in concat.input  # the Concat reads the float skip tensor
    onnx.checker.check_model(model, full_check=True)


# --------------------------------------------------------------------------- equalisation


def test_equalize_keeps_the_function_and_evens_the_channels(tiny_onnx):
    calib = uniform_slices(8, 8)
    model = onnx.load(str(tiny_onnx))
    before = {t.name: numpy_helper.to_array(t).copy() for t in model.graph.initializer}
    convs = [n for n in model.graph.node if n.op_type in ("Conv", "ConvTranspose")]
    first = convs[0].output[0]
    spread_before = _spread(model, first, calib)
    n = equalize(model, calib)
    assert n == len(convs) - 1  # every convolution but the head, whose output is the logits
    onnx.checker.check_model(model, full_check=True)
    np.testing.assert_allclose(run(model, calib), run(tiny_onnx, calib), atol=2e-6)
    held_out = uniform_slices(4, 9)
    np.testing.assert_allclose(run(model, held_out), run(tiny_onnx, held_out), atol=2e-6)
    assert any(not np.array_equal(before[t.name], numpy_helper.to_array(t)) for t in model.graph.initializer)
    assert _spread(model, first, calib) < spread_before


def _spread(model, tensor, x):
    """max / min over channels of the per-channel maximum |x|."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    model.graph.output.append(helper.make_tensor_value_info(tensor, TensorProto.FLOAT, None))
    out = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        [tensor], {"image": x})[0]
    per = np.abs(out).max(axis=(0, 2, 3))
    return per.max() / max(per.min(), 1e-12)


def test_equalize_leaves_convolutions_read_by_other_ops_alone(tiny_onnx):
    """A producer whose output reaches anything but a convolution's data input is not rescaled."""
    def graph(extra_reader):
        nodes, inits = [], []
        for node, init in (conv("a", "image", np.ones((2, 1, 1, 1)), [0.0, 0.0], "h"),
                           conv("b", "hr", np.ones((1, 2, 1, 1)), [0.0], "t")):
            nodes.append(node)
            inits += init
        nodes[1:1] = [helper.make_node("Relu", ["h"], ["hr"])]
        if extra_reader:  # hr also goes to a ReduceSum: scaling a's channels would change it
            inits.append(numpy_helper.from_array(np.array([1], np.int64), "axes"))
            nodes += [helper.make_node("ReduceSum", ["hr", "axes"], ["r"]),
                      helper.make_node("Add", ["t", "r"], ["u"]), helper.make_node("Sigmoid", ["u"], ["prob"])]
        else:
            nodes.append(helper.make_node("Sigmoid", ["t"], ["prob"]))
        return liverrt_model(nodes, inits, tiny_onnx)

    calib = uniform_slices(2, 10)
    assert equalize(graph(False), calib) == 1  # 'a' (read by 'b' alone), not 'b' (read by the Sigmoid)
    model = graph(True)
    before = model.SerializeToString()
    assert equalize(model, calib) == 0
    assert model.SerializeToString() == before



def test_a_missed_worst_slice_target_alone_triggers_the_fallback(tiny_onnx, tmp_path):
    calib = uniform_slices(8, 11)
    model = quantized_wide(tiny_onnx, calib, tmp_path)
    fit = fit_ranges(tiny_onnx, model, calib, method="search", sweeps=0, eval_slices=8, max_float=1,
                     target_delta_dice=1.0, target_worst_delta_dice=0.0)
    assert fit.worst_delta_dice_ranges > 0 and len(fit.float_tensors) >= 1
    assert fit.worst_delta_dice < fit.worst_delta_dice_ranges


# --------------------------------------------------------------------------- graph edits


def test_edit_graph_replaces_the_graph_alone_and_keeps_its_annotations(tiny_onnx):
    """onnx-graphsurgeon exports a new model without the metadata: edit_graph writes back the graph only."""
    model = onnx.load(str(tiny_onnx))
    model.graph.initializer.append(numpy_helper.from_array(np.zeros(3, np.float32), "unused"))
    model.graph.input.append(helper.make_tensor_value_info("spare", TensorProto.FLOAT, [1]))
    before = onnx.ModelProto.FromString(model.SerializeToString())
    assert model.metadata_props and model.graph.metadata_props and model.graph.node[0].metadata_props
    with edit_graph(model) as graph:
        relu = next(n for n in graph.nodes if n.op == "Relu")
        relu.op = "LeakyRelu"
    assert "unused" not in {t.name for t in model.graph.initializer}  # the cleanup
    assert [i.name for i in model.graph.input] == ["image", "spare"]  # unused graph inputs stay
    for name in ("ir_version", "opset_import", "metadata_props", "producer_name", "producer_version", "domain",
                 "model_version", "doc_string"):
        assert getattr(model, name) == getattr(before, name), name
    assert model.graph.metadata_props == before.graph.metadata_props
    assert list(model.graph.input) == list(before.graph.input) and list(model.graph.output) == list(before.graph.output)
    assert [(n.name, n.metadata_props) for n in model.graph.node] == [
        (n.name, n.metadata_props) for n in before.graph.node]
    assert [n.op_type for n in model.graph.node] == [
        "LeakyRelu" if n.name == relu.name else n.op_type for n in before.graph.node]
    edited = model.SerializeToString()
    with pytest.raises(RuntimeError), edit_graph(model) as graph:
        graph.nodes.clear()
        raise RuntimeError
    assert model.SerializeToString() == edited  # an error inside the block leaves the model as it was


def test_equalize_balances_the_inputs_of_a_concat_as_one_tensor(tiny_onnx):
    """A decoder's Concat: 'up' reaches ~100 with small reader weights, the skip ~1 with large ones, both
    contributing alike to the convolution that reads them. Balanced per producer, nothing moves (each
    producer's two channels are alike) and one int8 scale for the Concat would leave the skip about one
    level; balanced as one tensor, both halves end with the same range, and the function is unchanged."""
    nodes, inits = [], []
    for node, init in (conv("up", "image", np.full((2, 1, 1, 1), 100.0), [0.0, 0.0], "u"),
                       conv("skip", "image", np.ones((2, 1, 1, 1)), [0.0, 0.0], "k"),
                       conv("head", "c", np.array([0.01, 0.01, 1.0, 1.0]).reshape(1, 4, 1, 1), [-1.0], "t")):
        nodes.append(node)
        inits += init
    nodes[2:2] = [helper.make_node("Relu", ["k"], ["kr"]), helper.make_node("Concat", ["u", "kr"], ["c"], axis=1)]
    nodes.append(helper.make_node("Sigmoid", ["t"], ["prob"]))
    model = liverrt_model(nodes, inits, tiny_onnx)
    reference = onnx.ModelProto.FromString(model.SerializeToString())
    calib = uniform_slices(4, 21)

    def halves(m):
        m = onnx.ModelProto.FromString(m.SerializeToString())
        m.graph.output.append(helper.make_tensor_value_info("c", TensorProto.FLOAT, None))
        c = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(["c"], {"image": calib})[0]
        return np.abs(c[:, :2]).max(), np.abs(c[:, 2:]).max()

    up, skip = halves(model)
    assert up / skip == pytest.approx(100, rel=1e-3)
    assert equalize(model, calib) == 2
    up, skip = halves(model)
    assert up / skip == pytest.approx(1, rel=1e-2)
    np.testing.assert_allclose(run(model, calib), run(reference, calib), atol=2e-6)
