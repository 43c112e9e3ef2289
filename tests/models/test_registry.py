"""Every registered model describes itself fully and consistently (see liverrt.models.base.LiverrtModel).

Parametrised over the registry: a new model is checked here without new test code. ``SMALL`` only
shrinks the known models for speed; a new kind runs with its defaults.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

import liverrt
from liverrt.artifacts import PRECISIONS
from liverrt.errors import ArtifactError
from liverrt.export.pipeline import FORMATS, default_calib_method
from liverrt.export.precision import CALIBRATION_METHODS
from liverrt.models import (
    GATES,
    TASKS,
    LiverrtModel,
    from_config,
    graph_outputs,
    kinds,
    model_class,
    task_of,
)

#: small configs of the known kinds, so that the forward passes below take milliseconds
SMALL = {
    "unet": dict(widths=[4, 8], dropout=[0.0, 0.0, 0.0]),
    "dncnn_sr": dict(channels=4, depth=1, dilations=[1, 2]),
    "maskrcnn": dict(depth=18, fpn_channels=32, box_head_dim=64, mask_head_channels=32, image_size=64,
                     rpn_post_nms_top_n_test=50),
}


@pytest.fixture(params=kinds())
def cls(request) -> type[LiverrtModel]:
    return model_class(request.param)


def small_model(cls: type[LiverrtModel]) -> LiverrtModel:
    torch.manual_seed(0)
    return from_config(cls.kind, SMALL.get(cls.kind, {})).eval()


def _names(value) -> bool:
    return isinstance(value, tuple) and bool(value) and all(isinstance(n, str) and n for n in value) \
        and len(set(value)) == len(value)


def test_every_model_declares_its_full_description(cls):
    assert issubclass(cls, LiverrtModel) and model_class(cls.kind) is cls
    assert isinstance(cls.title, str) and cls.title
    assert cls.task in TASKS and task_of(cls.kind) == cls.task
    assert cls.gate in GATES
    assert _names(cls.output_names) and _names(cls.graph_output_names)
    assert list(cls.output_descriptions) == list(cls.output_names)  # written into the ONNX metadata as is
    assert all(isinstance(d, str) and d for d in cls.output_descriptions.values())
    assert graph_outputs(cls.kind) == cls.graph_output_names
    assert "fp32" in cls.precisions and set(cls.precisions) <= set(PRECISIONS)
    assert set(cls.unsupported_formats) <= set(FORMATS) - {"onnx"}  # every model exports ONNX
    assert all(isinstance(why, str) and why for why in cls.unsupported_formats.values())
    assert cls.default_calib_method in CALIBRATION_METHODS and default_calib_method(cls.kind) == cls.default_calib_method
    assert cls.onnx_exportable
    if not cls.split_export:  # engines return the graph's outputs as they are
        assert cls.graph_output_names == cls.output_names
    if cls.gate == "psnr":  # an image: one output, compared pixel by pixel
        assert len(cls.output_names) == 1


def test_predict_returns_the_declared_outputs(cls):
    model = small_model(cls)
    x = torch.rand(2, 1, 64, 64)
    out = model.predict(x)
    assert tuple(out) == cls.output_names
    assert all(isinstance(v, torch.Tensor) and v.shape[0] == 2 for v in out.values())
    if cls.task == "segmentation":  # what the Segmenter thresholds
        assert out["prob"].shape == (2, 1, 64, 64) and 0 <= out["prob"].min() <= out["prob"].max() <= 1
    # the config it stores rebuilds the same network
    again = from_config(cls.kind, model.config)
    assert again.config == model.config
    assert [p.shape for p in again.parameters()] == [p.shape for p in model.parameters()]


def test_export_wrapper_returns_the_declared_graph_outputs(cls):
    model = small_model(cls)
    wrapper = model.onnx_wrapper().eval()
    x = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        y = wrapper(x)
    y = y if isinstance(y, tuple) else (y,)
    assert len(y) == len(cls.graph_output_names)
    if not cls.split_export:  # the graph computes predict() itself
        (name,) = cls.output_names
        torch.testing.assert_close(y[0], model.predict(x)[name])
    if cls.dynamic_spatial:  # any H and W divisible by input_divisor, not only a square of the spec's size
        d = model.input_divisor
        with torch.no_grad():
            h, w = wrapper(torch.rand(1, 1, 4 * d, 6 * d)).shape[-2:]
        assert 6 * h == 4 * w


def test_an_unknown_kind_is_an_artifact_error_naming_the_known_ones():
    with pytest.raises(ArtifactError, match=r"'resnet' is unknown; expected one of \['dncnn_sr', 'maskrcnn', 'unet'\]"):
        model_class("resnet")


def kind_branches(source: str, known: set[str]) -> list[int]:
    """Lines of ``source`` that compare with, index by or key a dict on a model kind string literal."""

    def literals(node) -> set[str]:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return {node.value}
        if isinstance(node, ast.Tuple | ast.List | ast.Set):
            return {e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)}
        return set()

    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            found = set().union(*(literals(n) for n in (node.left, *node.comparators)))
        elif isinstance(node, ast.Subscript):
            found = literals(node.slice)
        elif isinstance(node, ast.Dict):
            found = set().union(*(literals(k) for k in node.keys if k is not None))
        else:
            continue
        if found & known:
            lines.append(node.lineno)
    return lines


def test_no_code_outside_the_models_branches_on_a_kind_string():
    package = Path(liverrt.__file__).parent
    known = set(kinds())
    assert kind_branches('if info.kind == "unet":\n    pass\nTITLES = {"maskrcnn": "Mask R-CNN"}\n', known) == [1, 3]
    found = {str(p.relative_to(package)): lines for p in sorted(package.rglob("*.py"))
             if p.relative_to(package).parts[0] != "models"
             and (lines := kind_branches(p.read_text(encoding="utf-8"), known))}
    assert not found, f"ask liverrt.models.model_class(kind) instead of branching on the kind string: {found}"
