import importlib.util
import io
import json
import py_compile
import sys
import types
import warnings
from contextlib import redirect_stdout

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from google.protobuf import (
    text_format,  # tritonclient[grpc] is a dev dependency: imported, not skipped
)
from liverrt_test_helpers import make_volume
from tritonclient.grpc import model_config_pb2

from liverrt.atomic import MARKER
from liverrt.data.preprocess import PreprocessSpec, restore, to_input
from liverrt.errors import InputError
from liverrt.export import triton_repo as triton  # staging and install live there
from liverrt.export.triton import read_config, write_triton_repo
from liverrt.hashing import sha256_file

ONNX_TO_TRITON = {onnx.TensorProto.FLOAT: "TYPE_FP32", onnx.TensorProto.FLOAT16: "TYPE_FP16",
                  onnx.TensorProto.INT64: "TYPE_INT64"}


def parse(path):
    """config.pbtxt -> ModelConfig; a syntax error or an unknown field fails here."""
    config = model_config_pb2.ModelConfig()
    text_format.Parse(path.read_text(), config)
    return config


def graph_io(path):
    """(name, TYPE_*, dims without batch, -1 = dynamic) of the graph's inputs and outputs, read with onnx."""
    model = onnx.load(str(path))

    def spec(v):
        t = v.type.tensor_type
        return v.name, ONNX_TO_TRITON[t.elem_type], [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim][1:]

    inits = {i.name for i in model.graph.initializer}
    return [spec(v) for v in model.graph.input if v.name not in inits], [spec(v) for v in model.graph.output]


def config_io(tensors):
    return [(t.name, model_config_pb2.DataType.Name(t.data_type), list(t.dims)) for t in tensors]


def leftovers(repo):
    """Everything in repo (including hidden staging folders)."""
    return sorted(p.name for p in repo.iterdir() if p.name != MARKER) if repo.exists() else []


def test_repo_config_matches_the_onnx_graph(tiny_onnx, tiny_spec, tmp_path):
    repo = tmp_path / "repo"
    result = write_triton_repo(tiny_onnx, repo)
    assert result.name == "tiny" and result.model_dir == repo / "tiny"
    assert sorted(p.name for p in result.model_dir.iterdir() if p.name != MARKER) == ["1", "client_example.py", "config.pbtxt"]
    config = parse(result.config)
    assert config.name == "tiny"
    assert config.backend == "onnxruntime" and config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 32
    inputs, outputs = graph_io(tiny_onnx)
    assert config_io(config.input) == inputs == [("image", "TYPE_FP32", [1, 32, 32])]
    assert config_io(config.output) == outputs
    assert list(config.dynamic_batching.preferred_batch_size) == [4, 8, 16]
    assert config.dynamic_batching.max_queue_delay_microseconds == 100
    assert [(g.count, model_config_pb2.ModelInstanceGroup.Kind.Name(g.kind)) for g in config.instance_group] == [(1, "KIND_GPU")]
    assert config.version_policy.latest.num_versions == 1
    params = {k: v.string_value for k, v in config.parameters.items()}
    assert PreprocessSpec.from_json(params["liverrt.preprocess"]) == tiny_spec
    assert float(params["liverrt.threshold"]) == 0.5
    assert params["liverrt.artifact_sha256"] == sha256_file(tiny_onnx)
    assert read_config(result.model_dir) == config == read_config(result.config)


def test_model_file_is_a_loadable_copy_of_the_source(tiny_onnx, tmp_path):
    before = sha256_file(tiny_onnx)
    result = write_triton_repo(tiny_onnx, tmp_path / "repo")
    assert result.model == tmp_path / "repo" / "tiny" / "1" / "model.onnx"
    assert sha256_file(result.model) == before == sha256_file(tiny_onnx)
    sess = ort.InferenceSession(str(result.model), providers=["CPUExecutionProvider"])
    (prob,) = sess.run(None, {"image": np.zeros((3, 1, 32, 32), np.float32)})
    assert prob.shape == (3, 1, 32, 32)


def test_options_reach_the_config_and_other_models_are_kept(tiny_onnx, tmp_path):
    repo = tmp_path / "repo"
    (repo / "other" / "1").mkdir(parents=True)
    (repo / "other" / "config.pbtxt").write_text('name: "other"\n')
    result = write_triton_repo(tiny_onnx, repo, name="liver-unet", version=3, max_batch_size=8,
                               preferred_batch_sizes=(2, 8), max_queue_delay_us=500, instances=2, kind="KIND_CPU")
    config = parse(result.config)
    assert config.name == "liver-unet" and config.max_batch_size == 8
    assert list(config.dynamic_batching.preferred_batch_size) == [2, 8]
    assert config.dynamic_batching.max_queue_delay_microseconds == 500
    assert config.instance_group[0].count == 2
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    assert (repo / "liver-unet" / "3" / "model.onnx").is_file()
    assert (repo / "other" / "config.pbtxt").read_text() == 'name: "other"\n'
    assert leftovers(repo) == ["liver-unet", "other"]


def test_new_versions_join_and_overwrite_replaces_only_its_version(tiny_onnx, tmp_path):
    repo = tmp_path / "repo"
    write_triton_repo(tiny_onnx, repo)
    marker = repo / "tiny" / "1" / "note.txt"
    marker.write_text("v1")
    with pytest.raises(InputError, match=r"already exists.*overwrite"):
        write_triton_repo(tiny_onnx, repo, max_batch_size=4)
    assert marker.read_text() == "v1" and parse(repo / "tiny" / "config.pbtxt").max_batch_size == 32
    write_triton_repo(tiny_onnx, repo, version=2, max_batch_size=16)
    assert marker.is_file() and (repo / "tiny" / "2" / "model.onnx").is_file()
    assert parse(repo / "tiny" / "config.pbtxt").max_batch_size == 16
    write_triton_repo(tiny_onnx, repo, overwrite=True)
    assert not marker.exists() and (repo / "tiny" / "1" / "model.onnx").is_file()
    assert sorted(p.name for p in (repo / "tiny").iterdir() if p.name != MARKER) == ["1", "2", "client_example.py", "config.pbtxt"]
    assert leftovers(repo) == ["tiny"]


def test_an_input_inside_the_target_version_is_never_overwritten(tiny_onnx, tmp_path):
    repo = tmp_path / "repo"
    result = write_triton_repo(tiny_onnx, repo)
    before = sha256_file(result.model)
    with pytest.raises(InputError, match="holds the input"):
        write_triton_repo(result.model, repo, name="tiny", overwrite=True)
    assert sha256_file(result.model) == before


def _conv_onnx(path, metadata_from=None, *, dynamic_axes=None, output="prob", extra_metadata=None):
    """A 3x3 conv exported by the TorchScript exporter: batch fixed at 2 unless ``dynamic_axes`` say otherwise."""
    conv = torch.nn.Conv2d(1, 1, 3, padding=1).eval()
    with warnings.catch_warnings():  # the TorchScript exporter's deprecation notice
        warnings.simplefilter("ignore")
        torch.onnx.export(conv, (torch.zeros(2, 1, 32, 32),), str(path), input_names=["image"],
                          output_names=[output], dynamo=False, dynamic_axes=dynamic_axes)
    if metadata_from is not None:
        model = onnx.load(str(path))
        source = onnx.load(str(metadata_from), load_external_data=False)
        onnx.helper.set_model_props(model, {**{p.key: p.value for p in source.metadata_props}, **(extra_metadata or {})})
        onnx.save(model, str(path))
    return path


def test_dynamic_spatial_dims_become_minus_one_and_outputs_follow_the_graph(tiny_onnx, tmp_path):
    axes = {0: "n", 2: "h", 3: "w"}
    artifact = _conv_onnx(tmp_path / "dn.onnx", tiny_onnx, dynamic_axes={"image": axes, "restored": axes},
                          output="restored")
    result = write_triton_repo(artifact, tmp_path / "repo")
    config = parse(result.config)
    inputs, outputs = graph_io(artifact)
    assert config_io(config.input) == inputs == [("image", "TYPE_FP32", [1, -1, -1])]
    assert config_io(config.output) == outputs == [("restored", "TYPE_FP32", [1, -1, -1])]
    py_compile.compile(str(result.client_example), doraise=True)
    assert _load_example(result.client_example).MASK_OUTPUT is False  # no "mask area" for an image output


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("preferred", r"Preferred batch sizes \[64\] exceed max_batch_size 32"),
        ("static_batch", r"batch axis of input 'image', output 'prob' is fixed; expected a dynamic first axis"),
        ("no_metadata", r"no liverrt metadata"),
        ("split_part", r"is the 'rpn' part of a split Mask R-CNN export"),
        ("missing", r"does not exist"),
        ("suffix", r"unknown suffix '\.pt'"),
        ("backend", r"backend 'tensorrt' does not fit"),
        ("kind", r"Instance kind 'GPU'"),
        ("name", r"Model name 'a/b'"),
    ],
)
def test_bad_inputs_raise_and_leave_nothing(case, message, tiny_onnx, tmp_path):
    repo = tmp_path / "repo"
    kwargs, artifact = {}, tiny_onnx
    if case == "preferred":
        kwargs = {"preferred_batch_sizes": (4, 64)}
    elif case == "static_batch":
        artifact = _conv_onnx(tmp_path / "static.onnx", tiny_onnx)
    elif case == "no_metadata":
        artifact = _conv_onnx(tmp_path / "plain.onnx")
    elif case == "split_part":
        artifact = _conv_onnx(tmp_path / "m.rpn.onnx", tiny_onnx, extra_metadata={"liverrt.part": "rpn"})
    elif case == "missing":
        artifact = tmp_path / "nothing.onnx"
    elif case == "suffix":
        artifact = tmp_path / "model.pt"
        artifact.write_bytes(b"x")
    elif case == "backend":
        kwargs = {"backend": "tensorrt"}
    elif case == "kind":
        kwargs = {"kind": "GPU"}
    elif case == "name":
        kwargs = {"name": "a/b"}
    with pytest.raises(InputError, match=message):
        write_triton_repo(artifact, repo, **kwargs)
    assert leftovers(repo) == []


def test_a_failure_while_writing_leaves_no_partial_folder(tiny_onnx, tmp_path, monkeypatch):
    repo = tmp_path / "repo"

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(triton.shutil, "copyfile", broken)
    with pytest.raises(OSError, match="disk full"):
        write_triton_repo(tiny_onnx, repo)
    assert leftovers(repo) == []
    monkeypatch.undo()
    write_triton_repo(tiny_onnx, repo)
    monkeypatch.setattr(triton.shutil, "copyfile", broken)
    with pytest.raises(OSError, match="disk full"):
        write_triton_repo(tiny_onnx, repo, overwrite=True)
    assert sorted(p.name for p in (repo / "tiny").iterdir() if p.name != MARKER) == ["1", "client_example.py", "config.pbtxt"]
    assert (repo / "tiny" / "1" / "model.onnx").is_file()


# ----------------------------------------------------------------------------- client example


def _load_example(path):
    spec = importlib.util.spec_from_file_location(f"client_example_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fake_tritonclient_http(repo, config):
    """tritonclient.http stand-in that checks requests against config.pbtxt and runs the model with onnxruntime."""
    fake = types.ModuleType("tritonclient.http")
    inputs = {t.name: t for t in config.input}
    calls = []

    class InferInput:
        def __init__(self, name, shape, datatype):
            assert name in inputs, name
            assert "TYPE_" + datatype == model_config_pb2.DataType.Name(inputs[name].data_type)
            assert list(shape[1:]) == list(inputs[name].dims) and shape[0] <= config.max_batch_size
            self.name, self.shape = name, shape

        def set_data_from_numpy(self, data):
            assert list(data.shape) == list(self.shape)
            self.data = data

    class InferRequestedOutput:
        def __init__(self, name):
            assert name in {t.name for t in config.output}, name
            self.name = name

    class Result:
        def __init__(self, out):
            self.out = out

        def as_numpy(self, name):
            return self.out[name]

    class InferenceServerClient:
        def __init__(self, url):
            self.url = url

        def infer(self, model_name, inputs, outputs):
            assert model_name == config.name
            sess = ort.InferenceSession(str(repo / model_name / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
            names = [o.name for o in outputs]
            calls.append(inputs[0].data.shape[0])
            return Result(dict(zip(names, sess.run(names, {i.name: i.data for i in inputs}), strict=True)))

    fake.InferInput, fake.InferRequestedOutput, fake.InferenceServerClient = InferInput, InferRequestedOutput, InferenceServerClient
    return fake, calls


def test_client_example_compiles_and_talks_to_the_config(tiny_onnx, tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    result = write_triton_repo(tiny_onnx, repo, max_batch_size=4, preferred_batch_sizes=(2, 4))
    py_compile.compile(str(result.client_example), doraise=True)
    config = parse(result.config)
    fake, calls = _fake_tritonclient_http(repo, config)
    import tritonclient

    monkeypatch.setitem(sys.modules, "tritonclient.http", fake)
    monkeypatch.setattr(tritonclient, "http", fake, raising=False)
    example = _load_example(result.client_example)
    assert (example.MODEL_NAME, example.INPUT_NAME, example.OUTPUT_NAME) == ("tiny", "image", "prob")
    assert example.MASK_OUTPUT and example.MAX_BATCH_SIZE == config.max_batch_size
    slices = make_volume((6, 48, 40)).image
    np.save(tmp_path / "ct.npy", slices)
    out = io.StringIO()
    with redirect_stdout(out):
        example.main(["--slices", str(tmp_path / "ct.npy")])
    assert calls == [4, 2]  # split at max_batch_size
    x, placement = to_input(slices, "hu", PreprocessSpec(size=32))
    (prob,) = ort.InferenceSession(str(tiny_onnx), providers=["CPUExecutionProvider"]).run(None, {"image": x})
    expected = (restore(prob[:, 0], placement) >= 0.5).sum(axis=(1, 2))
    lines = out.getvalue().splitlines()
    assert lines[:6] == [f"slice {i}: liver mask area {int(a)} pixels" for i, a in enumerate(expected)]
    assert lines[6].startswith(f"total: {int(expected.sum())} pixels")


def test_client_example_fallback_windowing_matches_liverrt(tiny_onnx, tmp_path):
    example = _load_example(write_triton_repo(tiny_onnx, tmp_path / "repo").client_example)
    hu = np.random.default_rng(0).uniform(-1200, 1500, (3, 32, 32)).astype(np.float32)
    x, _ = to_input(hu, "hu", PreprocessSpec(size=32))
    np.testing.assert_allclose(example.window(hu), x, atol=1e-6)
    with pytest.raises(ValueError, match=r"must be \(32, 32\)"):
        example.window(np.zeros((1, 40, 40), np.float32))


# ----------------------------------------------------------------------------- TensorRT plan


MACHINE = {"tensorrt_version": "10.9.0", "compute_capability": "9.0", "gpu_name": "NVIDIA H100"}


def _fake_plan(tiny_onnx, folder, *, batch=(1, 8, 16)):
    """A fake plan + the real sidecar written by liverrt.runtime.tensorrt_loader (no TensorRT needed)."""
    from liverrt.runtime.tensorrt_loader import engine_key, write_plan

    key = engine_key(tiny_onnx, MACHINE, batch=batch)
    return write_plan(folder, tiny_onnx, key, b"not a real engine", input_name="image", build_seconds=0.0).plan


def test_plan_with_sidecar_gets_tensorrt_platform_and_profile_batch(tiny_onnx, tiny_spec, tmp_path):
    plan = _fake_plan(tiny_onnx, tmp_path / "plans")
    result = write_triton_repo(plan, tmp_path / "repo", name="liver_trt")
    config = parse(result.config)
    assert config.platform == "tensorrt_plan" and config.backend == "tensorrt"
    assert config.max_batch_size == 16 and list(config.dynamic_batching.preferred_batch_size) == [4, 8, 16]
    assert config_io(config.input) == [("image", "TYPE_FP32", [1, 32, 32])]
    assert config_io(config.output) == [("prob", "TYPE_FP32", [1, 32, 32])]
    params = {k: v.string_value for k, v in config.parameters.items()}
    assert PreprocessSpec.from_json(params["liverrt.preprocess"]) == tiny_spec
    assert float(params["liverrt.threshold"]) == 0.5 and params["liverrt.precision"] == "fp32"
    assert (params["liverrt.format"], params["liverrt.tensorrt_version"]) == ("liverrt.trt/1", "10.9.0")
    assert (result.model_dir / "1" / "model.plan").read_bytes() == plan.read_bytes()
    py_compile.compile(str(result.client_example), doraise=True)


def test_plan_batch_limits_and_dynamic_dims(tiny_onnx, tmp_path):
    plan = _fake_plan(tiny_onnx, tmp_path / "plans", batch=(1, 4, 8))
    with pytest.raises(InputError, match=r"max_batch_size 32 exceeds the plan's optimisation profile \(max batch 8\)"):
        write_triton_repo(plan, tmp_path / "repo", max_batch_size=32)
    assert leftovers(tmp_path / "repo") == []
    side = plan.with_suffix(".json")
    data = json.loads(side.read_text())
    data["profile"]["max"] = [8, 1, 64, 64]
    side.write_text(json.dumps(data))
    result = write_triton_repo(plan, tmp_path / "repo")
    assert result.name == "tiny"  # the plan's digest is not part of the default name
    config = parse(result.config)
    assert config.max_batch_size == 8 and list(config.dynamic_batching.preferred_batch_size) == [4, 8]
    assert list(config.input[0].dims) == [1, -1, -1]
    with pytest.raises(InputError, match="smallest batch is 2"):
        write_triton_repo(_fake_plan(tiny_onnx, tmp_path / "b", batch=(2, 4, 8)), tmp_path / "repo2")
    assert leftovers(tmp_path / "repo2") == []


def test_plan_without_its_sidecar_or_with_other_bytes_is_refused(tiny_onnx, tmp_path):
    lonely = tmp_path / "lonely.plan"
    lonely.write_bytes(b"x")
    with pytest.raises(InputError, match="has no sidecar"):
        write_triton_repo(lonely, tmp_path / "repo")
    plan = _fake_plan(tiny_onnx, tmp_path / "plans")
    plan.write_bytes(b"another engine")
    with pytest.raises(InputError, match="do not match plan_sha256"):
        write_triton_repo(plan, tmp_path / "repo")
    assert leftovers(tmp_path / "repo") == []
