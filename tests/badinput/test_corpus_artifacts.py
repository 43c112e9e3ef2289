"""Artifacts: damaged or foreign checkpoints, ONNX files, split Mask R-CNN siblings, TensorRT plans and
Triton repositories, given where a model is expected. A damaged artifact fails at load time: exit 2, one
line, no output folder. Audit findings are marked ``# audit (N)``.
"""

from __future__ import annotations

import json

import pytest

from .builders import (
    copy,
    forged_checkpoint,
    malicious_pickle,
    nifti_file,
    onnx_meta,
    onnx_with_metadata,
    random_bytes,
)
from .harness import Case, Scenario, params, run_case

SIDECAR_FORMAT = "liverrt.trt/1"


def infer_with(make_model, *extra, engine: str | None = None, denoise=None):
    """``infer --model M --input ct.nii.gz --out out`` with the model ``make_model(tmp, art)`` makes."""

    def build(tmp, art):
        model = make_model(tmp, art)
        ct = nifti_file(tmp / "ct.nii.gz")
        out = tmp / "out"
        args = ["infer", "--model", model, "--input", ct, "--out", out, *extra]
        if engine:
            args += ["--engine", engine]
        inputs = [ct, model]
        if denoise is not None:
            d = denoise(tmp, art)
            args += ["--denoise", d]
            inputs.append(d)
        return Scenario(args, inputs=inputs, outs=[out], absent=[tmp / "pwned"])

    return build


def export_of(make_ckpt, *extra):
    """``export CKPT --out m.onnx --no-verify``."""

    def build(tmp, art):
        ckpt = make_ckpt(tmp, art)
        out = tmp / "m.onnx"
        return Scenario(["export", ckpt, "--out", out, "--no-verify", *extra], inputs=[ckpt],
                        outs=[out], absent=[tmp / "pwned", tmp / "m.box.onnx", tmp / "m.mask.onnx"])

    return build


# ----------------------------------------------------------------------------- checkpoints


def junk_pt(tmp, art):
    return random_bytes(tmp / "junk.pt")


def evil_pt(tmp, art):
    return malicious_pickle(tmp / "evil.pt", tmp / "pwned")


def evil_raw_pt(tmp, art):
    return malicious_pickle(tmp / "evil_raw.pt", tmp / "pwned", torch_format=False)


def marker_only(tmp, art):  # the liverrt marker and nothing else: no kind, no config, no weights
    return forged_checkpoint(tmp / "nokind.pt")


def without_kind(tmp, art):
    return forged_checkpoint(tmp / "nokind.pt", art.tiny_checkpoint, drop=("kind",))


def size_string(tmp, art):
    import torch

    spec = torch.load(art.tiny_checkpoint, weights_only=True)["preprocess"]
    return forged_checkpoint(tmp / "sizestr.pt", art.tiny_checkpoint, preprocess={**spec, "size": "32"})


def unknown_kind(tmp, art):
    return forged_checkpoint(tmp / "odd.pt", art.tiny_checkpoint, kind="transformer")


def weights_mismatch(tmp, art):
    import torch

    config = torch.load(art.tiny_checkpoint, weights_only=True)["model_config"]
    return forged_checkpoint(tmp / "mismatch.pt", art.tiny_checkpoint, model_config={**config, "widths": [8, 16, 32]})


def d2_import(make, *extra):
    def build(tmp, art):
        src = make(tmp, art)
        out = tmp / "d2.pt"
        return Scenario(["import-detectron2", src, "--out", out, *extra], inputs=[src], outs=[out],
                        absent=[tmp / "pwned"])

    return build


def evil_pkl(tmp, art):
    return malicious_pickle(tmp / "evil.pkl", tmp / "pwned", torch_format=False)


def evil_pth(tmp, art):
    return malicious_pickle(tmp / "evil.pth", tmp / "pwned")


CHECKPOINTS = [
    Case("ckpt-random-bytes-export", export_of(junk_pt), 2, ("junk.pt",)),
    Case("ckpt-random-bytes-infer-torch", infer_with(junk_pt, engine="torch"), 2, ("junk.pt",)),
    # a pickle whose __reduce__ would create tmp/pwned: never executed (absent=[pwned])
    Case("ckpt-malicious-pickle-export", export_of(evil_pt), 2, ("evil.pt",)),
    Case("ckpt-malicious-pickle-infer-torch", infer_with(evil_pt, engine="torch"), 2, ("evil.pt",)),
    Case("ckpt-malicious-bare-pickle-infer-torch", infer_with(evil_raw_pt, engine="torch"), 2, ("evil_raw.pt",)),
    Case("d2-malicious-pkl-import", d2_import(evil_pkl), 2, ("evil.pkl",)),
    Case("d2-malicious-pth-import", d2_import(evil_pth), 2, ("evil.pth",)),
    # audit (2): tracebacks from damaged artifacts
    Case("ckpt-marker-without-kind-export", export_of(marker_only), 2, ("nokind.pt", "kind"), finding=2),
    # audit (2)
    Case("ckpt-without-kind-infer-torch", infer_with(without_kind, engine="torch"), 2, ("nokind.pt", "kind"),
         finding=2),
    # audit (2)
    Case("ckpt-spec-size-string-export", export_of(size_string), 2, ("size",), finding=2),
    # audit (2)
    Case("ckpt-spec-size-string-infer-torch", infer_with(size_string, engine="torch"), 2, ("size",), finding=2),
    Case("ckpt-unknown-kind-infer-torch", infer_with(unknown_kind, engine="torch"), 2, ("transformer",)),
    # audit (10): torch's load_state_dict message is several lines
    Case("ckpt-weights-not-config-infer-torch", infer_with(weights_mismatch, engine="torch"), 2, ("mismatch.pt",),
         finding=10),
]


# ----------------------------------------------------------------------------- ONNX


def junk_onnx(tmp, art):
    return random_bytes(tmp / "junk.onnx")


def plain_onnx(tmp, art):
    keys = [k for k in onnx_meta(art.tiny_onnx) if k.startswith("liverrt.")]
    return onnx_with_metadata(art.tiny_onnx, tmp / "plain.onnx", drop=keys)


def model_without_kind(tmp, art):
    model = json.loads(onnx_meta(art.tiny_onnx)["liverrt.model"])
    model.pop("kind")
    return onnx_with_metadata(art.tiny_onnx, tmp / "nokind.onnx", liverrt_model=json.dumps(model))


def threshold_text(tmp, art):
    return onnx_with_metadata(art.tiny_onnx, tmp / "thr.onnx", liverrt_threshold="high")


def size_vs_graph(tmp, art):
    spec = json.loads(onnx_meta(art.tiny_onnx)["liverrt.preprocess"])
    return onnx_with_metadata(art.tiny_onnx, tmp / "resized.onnx",
                              liverrt_preprocess=json.dumps({**spec, "size": 64}))


def dncnn_says_unet(tmp, art):  # a DnCNN-SR graph whose metadata claims a U-Net
    unet = json.loads(onnx_meta(art.tiny_onnx)["liverrt.model"])
    return onnx_with_metadata(art.dncnn_onnx, tmp / "liar.onnx", liverrt_model=json.dumps(unet))


def dncnn_pt(tmp, art):
    return art.dncnn_ckpt


def dncnn_onnx(tmp, art):
    return art.dncnn_onnx


def tiny_pt(tmp, art):
    return art.tiny_checkpoint


def tiny_onnx(tmp, art):
    return art.tiny_onnx


def mrcnn_copy(tmp, art):
    src = art.maskrcnn_onnx.path
    folder = tmp / "mr"
    for p in src.parent.glob(src.stem + ".*onnx"):
        copy(p, folder / p.name)
    return folder / src.name


def mrcnn_without(part):
    def make(tmp, art):
        rpn = mrcnn_copy(tmp, art)
        sibling = rpn.with_name(f"{rpn.stem}.{part}.onnx")
        assert sibling.is_file(), sorted(p.name for p in rpn.parent.iterdir())
        sibling.unlink()
        return rpn

    return make


def mrcnn_modified(part):
    def make(tmp, art):
        rpn = mrcnn_copy(tmp, art)
        sibling = rpn.with_name(f"{rpn.stem}.{part}.onnx")
        with sibling.open("ab") as f:
            f.write(b"\0")
        return rpn

    return make


def plan(sidecar: str | None):
    def make(tmp, art):
        path = random_bytes(tmp / "plans" / "model.0123abcd.plan")
        if sidecar is not None:
            path.with_suffix(".json").write_text(sidecar)
        return path

    return make


def triton(pick, damage=True):
    def make(tmp, art):
        repo = copy(art.triton_repo, tmp / "repo")
        if damage:
            (repo / "tri_unet" / "config.pbtxt").write_text('name: "tri_unet"\nplatform: {{{ not protobuf\n')
        return pick(repo)

    return make


ONNX = [
    Case("onnx-random-bytes-infer", infer_with(junk_onnx), 2, ("junk.onnx",)),
    Case("onnx-no-liverrt-metadata-infer", infer_with(plain_onnx), 2, ("plain.onnx",)),
    # audit (2)
    Case("onnx-model-metadata-without-kind-infer", infer_with(model_without_kind), 2, ("nokind.onnx", "kind"),
         finding=2),
    # audit (2)
    Case("onnx-threshold-not-a-number-infer", infer_with(threshold_text), 2, ("threshold",), finding=2),
    # audit (5): spec size contradicts the graph's input shape: refused at load, naming the size
    # (before: onnxruntime's several-line shape error, per case: audit (10))
    Case("onnx-spec-size-vs-graph-infer", infer_with(size_vs_graph), 2, ("size", "64"), finding=5),
    # audit (5): wrong model kind not caught at load
    Case("dncnn-checkpoint-as-model-infer", infer_with(dncnn_pt, engine="torch"), 2, ("segmentation model",),
         finding=5),
    # audit (5)
    Case("dncnn-onnx-as-model-infer", infer_with(dncnn_onnx), 2, ("segmentation model",), finding=5),
    # audit (5): ONNX metadata lying about the kind
    Case("onnx-metadata-lies-about-kind-infer", infer_with(dncnn_says_unet), 2, ("liar.onnx",), finding=5),
    Case("unet-checkpoint-as-denoise-infer", infer_with(tiny_onnx, denoise=tiny_pt), 2, ("DnCNN-SR",)),
    Case("unet-onnx-as-denoise-infer", infer_with(tiny_onnx, denoise=tiny_onnx), 2, ("DnCNN-SR",)),
]

SPLIT_AND_SERVING = [
    Case("maskrcnn-missing-box-sibling-infer", infer_with(mrcnn_without("box")), 2, (".box.onnx",)),
    Case("maskrcnn-missing-mask-sibling-infer", infer_with(mrcnn_without("mask")), 2, (".mask.onnx",)),
    Case("maskrcnn-modified-mask-sibling-infer", infer_with(mrcnn_modified("mask")), 2, (".mask.onnx",)),
    Case("trt-plan-missing-sidecar-infer", infer_with(plan(None), engine="trt"), 2, ("model.0123abcd.json",)),
    Case("trt-plan-sidecar-not-json-infer", infer_with(plan("{not json"), engine="trt"), 2,
         ("model.0123abcd.json",)),
    Case("trt-plan-sidecar-without-model-infer",
         infer_with(plan(json.dumps({"format": SIDECAR_FORMAT})), engine="trt"), 2, ("model.0123abcd.json",)),
    Case("triton-model-folder-as-model-infer", infer_with(triton(lambda r: r / "tri_unet")), 2, ("tri_unet",)),
    Case("triton-repository-as-model-infer", infer_with(triton(lambda r: r)), 2, ("repo",)),
    Case("triton-config-as-checkpoint-export", export_of(triton(lambda r: r / "tri_unet" / "config.pbtxt")), 2,
         ("config.pbtxt",)),
]


@pytest.mark.parametrize("case", params(*CHECKPOINTS, *ONNX, *SPLIT_AND_SERVING))
def test_artifact(case, tmp_path, art):
    run_case(case, tmp_path, art)
