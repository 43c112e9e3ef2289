"""The split Mask R-CNN as a Triton model repository: three graph models and a Python (BLS) model.

Triton itself does not run here. ``model.py`` runs against a stand-in for
``triton_python_backend_utils`` that implements the documented calls
(Tensor, InferenceRequest.exec, InferenceResponse, TritonError,
get_input/output_tensor_by_name, PreferredMemory) and serves each BLS
request from the repository: it checks the request against the called
model's ``config.pbtxt`` (names, types, dims, max_batch_size) and runs that
model's ``model.onnx`` with onnxruntime. So the repository's wiring and the
Python model's logic are tested; Triton's scheduling is not.
"""

from __future__ import annotations

import importlib.util
import json
import py_compile
import sys
import types

import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from google.protobuf import json_format, text_format
from liverrt_test_helpers import make_volume
from tritonclient.grpc import model_config_pb2

from liverrt.artifacts import SplitArtifact
from liverrt.atomic import MARKER
from liverrt.cli import cli
from liverrt.data.preprocess import to_input
from liverrt.errors import ArtifactError
from liverrt.export import triton_repo as triton  # staging and install live there
from liverrt.export.triton import read_config, write_triton_repo
from liverrt.hashing import sha256_file
from liverrt.runtime import open_engine

SIZE = 64


def dtype_name(t):
    return model_config_pb2.DataType.Name(t.data_type)


def fits(shape, dims):
    return len(shape) == len(dims) and all(d == -1 or d == s for s, d in zip(shape, dims, strict=True))


def fake_pb_utils(repo):
    """A stand-in ``triton_python_backend_utils`` whose BLS requests run the repository's ONNX models."""
    pb = types.ModuleType("triton_python_backend_utils")
    sessions, calls = {}, []
    made, passed = {}, []  # tensors BLS responses returned (kept, so ids stay unique); per request, inputs that were such

    class Tensor:
        def __init__(self, name, array):
            assert isinstance(name, str) and isinstance(array, np.ndarray), (name, type(array))
            self._name, self._array = name, array

        def name(self):
            return self._name

        def as_numpy(self):
            return self._array

        def is_cpu(self):
            return True

    class TritonError:
        def __init__(self, message):
            self._message = message

        def message(self):
            return self._message

    class TritonModelException(Exception):
        pass

    class InferenceResponse:
        def __init__(self, output_tensors, error=None):
            self._tensors, self._error = list(output_tensors), error

        def has_error(self):
            return self._error is not None

        def error(self):
            return self._error

        def output_tensors(self):
            return self._tensors

    class InferenceRequest:
        """A BLS request: checked against the called model's config, run with onnxruntime."""

        fail = {}  # model name -> error message (a model that fails in the server)

        def __init__(self, model_name, requested_output_names, inputs, preferred_memory=None, model_version=-1):
            self.model_name, self.requested, self._inputs = model_name, list(requested_output_names), list(inputs)
            self.preferred_memory, self.model_version = preferred_memory, model_version

        def inputs(self):
            return self._inputs

        def exec(self):
            if self.model_name in self.fail:
                return InferenceResponse([], TritonError(self.fail[self.model_name]))
            folder = repo / self.model_name
            assert self.model_version in (-1, 1) and (folder / str(max(self.model_version, 1))).is_dir()
            config = read_config(folder / "config.pbtxt")
            assert config.platform == "onnxruntime_onnx" and config.backend == "onnxruntime"
            declared = {t.name: t for t in config.input}
            feed = {t.name(): t.as_numpy() for t in self._inputs}
            assert set(feed) == set(declared), (self.model_name, sorted(feed), sorted(declared))
            batch = None
            for name, x in feed.items():
                assert x.dtype == np.float32 and dtype_name(declared[name]) == "TYPE_FP32"
                if config.max_batch_size > 0:
                    assert 1 <= x.shape[0] <= config.max_batch_size, (self.model_name, x.shape)
                    assert fits(x.shape[1:], declared[name].dims), (self.model_name, name, x.shape)
                    assert batch in (None, x.shape[0])
                    batch = x.shape[0]
                else:
                    assert fits(x.shape, declared[name].dims), (self.model_name, name, x.shape)
            outputs = {t.name: t for t in config.output}
            assert set(self.requested) <= set(outputs)
            if self.model_name not in sessions:
                sessions[self.model_name] = ort.InferenceSession(str(folder / "1" / "model.onnx"),
                                                                 providers=["CPUExecutionProvider"])
            values = sessions[self.model_name].run(self.requested, feed)
            for name, v in zip(self.requested, values, strict=True):
                dims = outputs[name].dims
                assert fits(v.shape[1:] if config.max_batch_size > 0 else v.shape, dims), (name, v.shape, dims)
            calls.append((self.model_name, batch))
            passed.append((self.model_name, sorted(t.name() for t in self._inputs if id(t) in made),
                           self.preferred_memory is not None))
            out = [Tensor(n, v) for n, v in zip(self.requested, values, strict=True)]
            made.update((id(t), t) for t in out)
            return InferenceResponse(out)

    def by_name(tensors, name):
        return next((t for t in tensors if t.name() == name), None)

    pb.Tensor, pb.TritonError, pb.TritonModelException = Tensor, TritonError, TritonModelException
    pb.InferenceRequest, pb.InferenceResponse = InferenceRequest, InferenceResponse
    pb.get_input_tensor_by_name = lambda request, name: by_name(request.inputs(), name)
    pb.get_output_tensor_by_name = lambda response, name: by_name(response.output_tensors(), name)
    pb.TRITONSERVER_MEMORY_CPU = 0
    pb.PreferredMemory = lambda kind, device=0: ("preferred", kind, device)
    pb.calls, pb.passed = calls, passed
    return pb


def load_python_model(repo, name, monkeypatch):
    """Import ``<repo>/<name>/1/model.py`` with the stand-in and initialise it as Triton would."""
    pb = fake_pb_utils(repo)
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", pb)
    spec = importlib.util.spec_from_file_location(f"triton_model_{name}", repo / name / "1" / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = json_format.MessageToJson(read_config(repo / name / "config.pbtxt"), preserving_proto_field_name=True)
    model = module.TritonPythonModel()
    model.initialize({"model_config": config, "model_instance_kind": "CPU", "model_name": name,
                      "model_version": "1", "model_repository": str(repo / name)})
    return model, pb


def request(pb, **tensors):
    """A client's request as execute() receives it."""
    return pb.InferenceRequest("client", [], [pb.Tensor(k, v) for k, v in tensors.items()])


@pytest.fixture(scope="module")
def images(maskrcnn_onnx):
    from liverrt.artifacts import artifact_info

    spec = artifact_info(maskrcnn_onnx.path).spec
    vol = make_volume(shape=(5, SIZE, SIZE))
    return to_input(vol.image, vol.intensity, spec)[0]


@pytest.fixture(scope="module")
def reference(maskrcnn_onnx, images):
    with open_engine("onnxruntime", maskrcnn_onnx.path) as eng:
        return eng.infer(images)


# ----------------------------------------------------------------------------- the repository


def test_four_models_whose_configs_match_their_graphs(maskrcnn_onnx, tmp_path):
    repo = tmp_path / "repo"
    result = write_triton_repo(maskrcnn_onnx.path, repo, name="liver", max_batch_size=8, instances=2)
    assert sorted(p.name for p in repo.iterdir() if p.name != MARKER) == ["liver", "liver_box", "liver_mask", "liver_rpn"]
    assert result.parts == ("liver_rpn", "liver_box", "liver_mask") and result.platform == "python"
    graphs = {"rpn": maskrcnn_onnx.path, **{p: SplitArtifact(maskrcnn_onnx.path).paths[p] for p in ("box", "mask")}}
    for part, graph in graphs.items():
        folder = repo / f"liver_{part}"
        assert sorted(p.name for p in folder.iterdir() if p.name != MARKER) == ["1", "config.pbtxt"]
        assert sha256_file(folder / "1" / "model.onnx") == sha256_file(graph)
        config = read_config(folder / "config.pbtxt")
        assert config.platform == "onnxruntime_onnx" and config.instance_group[0].count == 2
        assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
        sess = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
        io = [(t.name, list(t.dims)) for t in (*config.input, *config.output)]
        shapes = [(v.name, [d if isinstance(d, int) else -1 for d in v.shape])
                  for v in (*sess.get_inputs(), *sess.get_outputs())]
        if part == "rpn":  # Triton batches along the first axis
            assert config.max_batch_size == 8 and config.HasField("dynamic_batching")
            assert io == [(n, s[1:]) for n, s in shapes] and all(s[0] == -1 for _, s in shapes)
        else:  # the first axis counts RoIs: no Triton batching
            assert config.max_batch_size == 0 and not config.HasField("dynamic_batching")
            assert io == shapes
        params = {k: v.string_value for k, v in config.parameters.items()}
        assert params["liverrt.part"] == part and "liverrt.split" not in params
    config = read_config(repo / "liver" / "config.pbtxt")
    assert config.backend == "python" and config.platform == "" and config.max_batch_size == 8
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    assert [(t.name, dtype_name(t), list(t.dims)) for t in config.input] == [("image", "TYPE_FP32", [1, SIZE, SIZE])]
    assert [(t.name, list(t.dims)) for t in config.output] == [("prob", [1, SIZE, SIZE]), ("scores", [8]),
                                                               ("boxes", [8, 4])]
    params = {k: v.string_value for k, v in config.parameters.items()}
    parts = json.loads(params["liverrt.triton_parts"])
    assert {p: v["model"] for p, v in parts.items()} == {"rpn": "liver_rpn", "box": "liver_box", "mask": "liver_mask"}
    assert json.loads(params["liverrt.model"])["kind"] == "maskrcnn"
    assert sorted(p.name for p in (repo / "liver").iterdir() if p.name != MARKER) == ["1", "client_example.py", "config.pbtxt"]
    for f in (repo / "liver" / "1" / "model.py", result.client_example):
        py_compile.compile(str(f), doraise=True)


def test_the_python_model_answers_like_the_onnxruntime_engine(maskrcnn_onnx, images, reference, tmp_path,
                                                              monkeypatch):
    repo = tmp_path / "repo"
    write_triton_repo(maskrcnn_onnx.path, repo, name="liver")
    model, pb = load_python_model(repo, "liver", monkeypatch)
    # dynamic batching hands two requests (2 + 3 slices) to one execute: one pass through the graphs
    responses = model.execute([request(pb, image=images[:2]), request(pb, image=images[2:])])
    assert [r.has_error() for r in responses] == [False, False]
    assert pb.calls == [("liver_rpn", 5), ("liver_box", None), ("liver_mask", None)]
    # the feature maps go from the rpn response to the heads as they are; only head outputs are asked in CPU memory
    feats = [f"feat_{i}" for i in range(4)]
    assert pb.passed == [("liver_rpn", [], False), ("liver_box", feats, True), ("liver_mask", feats, True)]
    assert reference["prob"].max() > 0.5  # detections exist, so the mask graph ran on real boxes
    for key in ("prob", "scores", "boxes"):
        got = np.concatenate([pb.get_output_tensor_by_name(r, key).as_numpy() for r in responses])
        assert got.dtype == np.float32 and got.shape == reference[key].shape
        np.testing.assert_array_equal(got, reference[key])


def test_a_bad_request_gets_its_error_and_the_others_their_answers(maskrcnn_onnx, images, reference, tmp_path,
                                                                   monkeypatch):
    repo = tmp_path / "repo"
    write_triton_repo(maskrcnn_onnx.path, repo, name="liver")
    model, pb = load_python_model(repo, "liver", monkeypatch)
    nan = images[:1].copy()
    nan[0, 0, 3, 3] = np.nan
    bad = [request(pb, image=images[:2, :, :32]), request(pb, image=images[:2].astype(np.float64)),
           request(pb, ct=images[:2]), request(pb, image=nan)]
    responses = model.execute([bad[0], request(pb, image=images[:3]), *bad[1:]])
    messages = [r.error().message() if r.has_error() else None for r in responses]
    assert messages[1] is None
    assert "got shape (2, 1, 32, 64), expected (N, 1, 64, 64)" in messages[0]
    assert "got float64, expected float32" in messages[2]
    assert "'image' is missing" in messages[3]
    assert "NaN or infinite" in messages[4]
    np.testing.assert_array_equal(pb.get_output_tensor_by_name(responses[1], "prob").as_numpy(),
                                  reference["prob"][:3])
    assert model.execute([bad[0]])[0].has_error() and pb.calls[-1][0] == "liver_mask"  # nothing ran for it


def test_a_failing_graph_model_answers_every_request_with_its_message(maskrcnn_onnx, images, tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    write_triton_repo(maskrcnn_onnx.path, repo, name="liver")
    model, pb = load_python_model(repo, "liver", monkeypatch)
    pb.InferenceRequest.fail["liver_box"] = "out of memory"
    responses = model.execute([request(pb, image=images[:1]), request(pb, image=images[1:2])])
    for r in responses:
        assert r.has_error() and "'liver_box' (box graph) failed: out of memory" in r.error().message()


def test_a_config_without_liverrt_parameters_is_refused_at_load(maskrcnn_onnx, tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    write_triton_repo(maskrcnn_onnx.path, repo, name="liver")
    config = read_config(repo / "liver" / "config.pbtxt")
    del config.parameters["liverrt.triton_parts"]
    (repo / "liver" / "config.pbtxt").write_text(text_format.MessageToString(config))
    with pytest.raises(Exception, match="lacks liverrt's parameters.*liverrt.triton_parts") as err:
        load_python_model(repo, "liver", monkeypatch)
    assert type(err.value).__name__ == "TritonModelException"


# ----------------------------------------------------------------------------- writing safely


def test_a_missing_or_foreign_graph_writes_nothing(maskrcnn_onnx, tmp_path):
    copy = tmp_path / "src"
    copy.mkdir()
    for p in SplitArtifact(maskrcnn_onnx.path).paths.values():
        (copy / p.name).write_bytes(p.read_bytes())
    main = copy / maskrcnn_onnx.path.name
    box = copy / SplitArtifact(maskrcnn_onnx.path).paths["box"].name
    box.write_bytes(box.read_bytes() + b"\0")
    with pytest.raises(ArtifactError, match="sha256 differs"):
        write_triton_repo(main, tmp_path / "repo")
    box.unlink()
    with pytest.raises(ArtifactError, match="missing"):
        write_triton_repo(main, tmp_path / "repo")
    assert not (tmp_path / "repo").exists() or list((tmp_path / "repo").iterdir()) == []


def test_a_failure_while_writing_undoes_every_model(maskrcnn_onnx, tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    real_rename, real_replace = triton.os.rename, triton.os.replace
    renames = []

    def third_rename_fails(a, b):
        renames.append(b)
        if len(renames) == 3:
            raise OSError("disk full")
        return real_rename(a, b)

    # into a new repository: two model folders are in place when the third rename fails
    monkeypatch.setattr(triton.os, "rename", third_rename_fails)
    with pytest.raises(OSError, match="disk full"):
        write_triton_repo(maskrcnn_onnx.path, repo, name="liver")
    assert not repo.exists()  # it did not exist before
    monkeypatch.undo()

    # existing folders: one without a config, one with a version another export wrote
    (repo / "liver_box" / "7").mkdir(parents=True)
    write_triton_repo(maskrcnn_onnx.path, repo, name="liver")
    (repo / "liver_rpn" / "1" / "mine.txt").write_text("v1")
    (repo / "liver_box" / "config.pbtxt").unlink()
    before = {p.relative_to(repo): p.read_bytes() for p in repo.rglob("*") if p.is_file()}
    dirs = sorted(p.relative_to(repo) for p in repo.rglob("*") if p.is_dir())

    def last_replace_fails(a, b):  # overwrite fails at the very last step
        if str(b).endswith("liver_mask/config.pbtxt"):
            raise OSError("disk full")
        return real_replace(a, b)

    monkeypatch.setattr(triton.os, "replace", last_replace_fails)
    with pytest.raises(OSError, match="disk full"):
        write_triton_repo(maskrcnn_onnx.path, repo, name="liver", max_batch_size=4, overwrite=True)
    after = {p.relative_to(repo): p.read_bytes() for p in repo.rglob("*") if p.is_file()}
    assert after == before  # the old version 1 (with mine.txt), configs, and no config where there was none
    assert sorted(p.relative_to(repo) for p in repo.rglob("*") if p.is_dir()) == dirs  # no staging left
    monkeypatch.undo()
    write_triton_repo(maskrcnn_onnx.path, repo, name="liver", max_batch_size=4, overwrite=True)
    assert all(read_config(repo / m / "config.pbtxt").max_batch_size == 4 for m in ("liver", "liver_rpn"))
    assert not (repo / "liver_rpn" / "1" / "mine.txt").exists() and (repo / "liver_box" / "7").is_dir()
    assert sorted(p.name for p in repo.iterdir() if p.name != MARKER) == ["liver", "liver_box", "liver_mask", "liver_rpn"]


def test_an_existing_version_of_any_of_the_four_models_is_kept(maskrcnn_onnx, tmp_path):
    repo = tmp_path / "repo"
    (repo / "liver_mask" / "1").mkdir(parents=True)
    (repo / "liver_mask" / "1" / "note.txt").write_text("mine")
    with pytest.raises(Exception, match=r"liver_mask/1 already exists"):
        write_triton_repo(maskrcnn_onnx.path, repo, name="liver")
    assert sorted(p.name for p in repo.iterdir() if p.name != MARKER) == ["liver_mask"]
    assert (repo / "liver_mask" / "1" / "note.txt").read_text() == "mine"


def test_the_cli_writes_the_mask_rcnn_repository(maskrcnn_ckpt, tmp_path):
    r = CliRunner().invoke(cli, ["export", str(maskrcnn_ckpt), "--format", "triton", "--out", str(tmp_path / "repo"),
                                 "--name", "liver", "--no-verify"])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "repo").iterdir() if p.name != MARKER) == ["liver", "liver_box", "liver_mask", "liver_rpn"]
    assert "triton" in r.output and "parity only: --no-verify" in r.output and "verified ONNX" not in r.output


def test_graph_outputs_left_on_a_gpu_are_copied_to_the_host():
    import torch

    from liverrt.runtime.triton_maskrcnn import _to_numpy

    class GpuTensor:  # what pb_utils gives for an output in GPU memory: no as_numpy, a DLPack capsule
        def __init__(self, t):
            self.t = t

        def is_cpu(self):
            return False

        def to_dlpack(self):
            return torch.utils.dlpack.to_dlpack(self.t)

    x = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    np.testing.assert_array_equal(_to_numpy(GpuTensor(x)), x.numpy())


def test_a_model_exported_by_another_liverrt_version_is_served_with_a_warning(maskrcnn_onnx, tmp_path,
                                                                                monkeypatch):
    repo = tmp_path / "repo"
    write_triton_repo(maskrcnn_onnx.path, repo, name="liver")
    config = read_config(repo / "liver" / "config.pbtxt")
    config.parameters["liverrt.version"].string_value = "0.0.1"
    (repo / "liver" / "config.pbtxt").write_text(text_format.MessageToString(config))
    warnings = []
    pb = fake_pb_utils(repo)
    pb.Logger = types.SimpleNamespace(log_warn=warnings.append)
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", pb)
    from liverrt.runtime.triton_maskrcnn import MaskRCNNBLS

    MaskRCNNBLS(pb, {"model_config": json_format.MessageToJson(config, preserving_proto_field_name=True),
                     "model_version": "1"})
    assert len(warnings) == 1 and "exported by liverrt 0.0.1" in warnings[0]
