"""liverrt.artifacts.metadata: one schema for every artifact, checked when it is opened, errors naming the field."""

import json

import onnx
import pytest
import torch

from liverrt.artifacts import artifact_info
from liverrt.artifacts.metadata import from_checkpoint, from_props, from_sidecar
from liverrt.errors import ArtifactError
from liverrt.runtime.base import require_task


def _edited_checkpoint(src, dst, edit):
    ckpt = torch.load(src, map_location="cpu", weights_only=True)
    edit(ckpt)
    torch.save(ckpt, dst)
    return dst


def _edited_onnx(src, dst, edit):
    model = onnx.load(str(src))
    props = {p.key: p.value for p in model.metadata_props}
    edit(props)
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, props)
    onnx.save(model, str(dst))
    return dst


def _model_json(props, **changes):
    model = json.loads(props["liverrt.model"])
    for key, value in changes.items():
        if value is None:
            model.pop(key)
        else:
            model[key] = value
    props["liverrt.model"] = json.dumps(model)


def _spec_json(props, **changes):
    props["liverrt.preprocess"] = json.dumps({**json.loads(props["liverrt.preprocess"]), **changes})


CHECKPOINT_CASES = {
    "no kind": (lambda c: c.pop("kind"), "field kind: got nothing, expected the field to be present"),
    "empty kind": (lambda c: c.update(kind=" "), "field kind: got ' ', expected a non-empty name"),
    "size as text": (lambda c: c["preprocess"].update(size="512"), "field preprocess.size: got '512', "
                                                                     "expected a valid integer"),
    "size not /16": (lambda c: c["preprocess"].update(size=500), "PreprocessSpec.size: got 500"),
    "window as bool": (lambda c: c["preprocess"].update(window_width=True), "field preprocess.window_width"),
    "unknown spec field": (lambda c: c["preprocess"].update(zoom=2), "field preprocess.zoom: got 2, "
                                                                     "expected no such field"),
    "config not a dict": (lambda c: c.update(model_config=[1]), "field model_config: got [1]"),
    "threshold text": (lambda c: c.update(train_config={"threshold": "high"}), "threshold: got 'high'"),
    "threshold 1": (lambda c: c.update(train_config={"threshold": 1.0}), "expected less than 1"),
    "no weights": (lambda c: c.pop("state_dict"), "field state_dict: got NoneType"),
    "version text": (lambda c: c.update(format_version="1"), "field format_version: got '1'"),
}


ONNX_CASES = {
    "model without kind": (lambda p: _model_json(p, kind=None), "field liverrt.model.kind: got nothing"),
    "model not JSON": (lambda p: p.update({"liverrt.model": "{kind: unet"}), "field liverrt.model: got "
                                                                                 "'{kind: unet', expected JSON"),
    "no preprocess": (lambda p: p.pop("liverrt.preprocess"), "field liverrt.preprocess: got nothing"),
    "size as text": (lambda p: _spec_json(p, size="32"), "field liverrt.preprocess.size: got '32'"),
    "threshold text": (lambda p: p.update({"liverrt.threshold": "abc"}), "field liverrt.threshold: got 'abc', "
                                                                         "expected a valid number"),
    "threshold nan": (lambda p: p.update({"liverrt.threshold": "nan"}), "field liverrt.threshold: got 'nan'"),
    "precision": (lambda p: p.update({"liverrt.precision": "bf8"}), "field liverrt.precision: got 'bf8', "
                                                                    "expected one of 'fp32', 'fp16' or 'int8'"),
    "spec size vs graph": (lambda p: _spec_json(p, size=64), "liverrt.preprocess.size is 64 but the graph's input "
                                                             "is (batch, 1, 32, 32)"),
}


DAMAGED = [("checkpoint", name) for name in CHECKPOINT_CASES] + [("onnx", name) for name in ONNX_CASES]


@pytest.mark.parametrize(("fmt", "case"), DAMAGED, ids=[f"{f}: {c}" for f, c in DAMAGED])
def test_a_damaged_artifact_names_the_field(tiny_checkpoint, tiny_onnx, tmp_path, fmt, case):
    if fmt == "checkpoint":
        edit, words = CHECKPOINT_CASES[case]
        path = _edited_checkpoint(tiny_checkpoint, tmp_path / "bad.pt", edit)
    else:
        edit, words = ONNX_CASES[case]
        path = _edited_onnx(tiny_onnx, tmp_path / "bad.onnx", edit)
    with pytest.raises(ArtifactError) as err:
        artifact_info(path)
    message = str(err.value)
    assert words in message and str(path) in message and "\n" not in message


def test_a_valid_artifact_reads_the_same_in_every_format(tiny_checkpoint, tiny_onnx):
    ckpt, onnx_info = artifact_info(tiny_checkpoint), artifact_info(tiny_onnx)
    assert (ckpt.kind, ckpt.spec, ckpt.threshold) == (onnx_info.kind, onnx_info.spec, onnx_info.threshold)
    assert onnx_info.input_shape == ("batch", 1, 32, 32)
    props = {p.key: p.value for p in onnx.load(str(tiny_onnx)).metadata_props}
    assert from_props(props, source="triton", fmt="triton").spec == ckpt.spec
    sidecar = {"model": json.loads(props["liverrt.model"]), "preprocess": json.loads(props["liverrt.preprocess"]),
               "threshold": 0.5, "precision": "fp16", "metrics": {}}
    assert from_sidecar(sidecar, source="x.json").precision == "fp16"
    raw = torch.load(tiny_checkpoint, map_location="cpu", weights_only=True)
    assert from_checkpoint(raw, source="c").config == ckpt.model_config


def test_sidecar_and_triton_parameters_use_the_same_schema(tiny_onnx):
    props = {p.key: p.value for p in onnx.load(str(tiny_onnx)).metadata_props}
    with pytest.raises(ArtifactError, match=r"plan\.json: damaged liverrt metadata, field preprocess\.size: got "
                                            r"'32'.*rebuild the plan"):
        from_sidecar({"model": json.loads(props["liverrt.model"]), "preprocess": {"size": "32"}},
                     source="plan.json")
    with pytest.raises(ArtifactError, match="field model: got None"):
        from_sidecar({"preprocess": {}}, source="plan.json")
    del props["liverrt.preprocess"]
    with pytest.raises(ArtifactError, match=r"Triton model 'liver'.*field liverrt\.preprocess.*liverrt export "
                                            r"--format triton"):
        from_props(props, source="Triton model 'liver'", fmt="triton")


def test_the_task_is_checked_at_load(tiny_checkpoint, tmp_path):
    from liverrt.artifacts.checkpoint import save_checkpoint
    from liverrt.models.dncnn_sr import DnCNNSR

    info = artifact_info(tiny_checkpoint)
    require_task(info, "segmentation", role="--model")
    with pytest.raises(ArtifactError, match=r"--denoise .*tiny\.pt: holds a 'unet' model .* expected a DnCNN-SR"):
        require_task(info, "denoising", role="--denoise")
    dn = save_checkpoint(tmp_path / "dn.pt", DnCNNSR(), model_name="dncnn_sr", spec=info.spec)
    with pytest.raises(ArtifactError, match="holds a 'dncnn_sr' model .* expected a liver segmentation model"):
        require_task(artifact_info(dn), "segmentation", role="--model")
    unknown = _edited_checkpoint(tiny_checkpoint, tmp_path / "resnet.pt", lambda c: c.update(kind="resnet"))
    with pytest.raises(ArtifactError, match=r"--model .*resnet\.pt: damaged liverrt metadata, field kind: got 'resnet', "
                                            r"expected one of \['dncnn_sr', 'maskrcnn', 'unet'\]"):
        require_task(artifact_info(unknown), "segmentation", role="--model")


def test_a_folder_given_as_a_model_says_so(tmp_path):
    with pytest.raises(Exception, match="is a folder; expected a model file"):
        artifact_info(tmp_path)


def test_the_split_manifest_is_checked_when_opened(tmp_path):
    from liverrt.artifacts import SplitArtifact

    rpn = tmp_path / "mr.onnx"
    assert SplitArtifact(rpn).paths == {"rpn": rpn, "box": tmp_path / "mr.box.onnx", "mask": tmp_path / "mr.mask.onnx"}
    assert SplitArtifact.open(rpn, meta={"liverrt.format": "liverrt.onnx/1"}) is None  # a one-graph export
    for manifest in ("{not json", '{"parts": {}}', '{"parts": {"box": 1}, "sha256": {}}', '[1]'):
        with pytest.raises(ArtifactError, match=r"mr\.onnx: damaged liverrt metadata, field liverrt\.split"):
            SplitArtifact.open(rpn, meta={"liverrt.split": manifest})
    (tmp_path / "mr.box.onnx").write_bytes(b"box")
    manifest = json.dumps({"parts": {"box": "mr.box.onnx", "mask": "mr.mask.onnx"}, "sha256": {"box": "0" * 64}})
    with pytest.raises(ArtifactError, match=r"mr\.box\.onnx is not the box graph exported with .*sha256 differs"):
        SplitArtifact.open(rpn, meta={"liverrt.split": manifest})
