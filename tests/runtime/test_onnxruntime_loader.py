"""The onnxruntime engine runs what its loader builds (Polygraphy's SessionFromOnnx / OnnxrtRunner split)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from liverrt.artifacts import info as artifact_info_module
from liverrt.runtime import open_engine
from liverrt.runtime.maskrcnn_split import SplitMaskRCNN
from liverrt.runtime.onnxruntime_engine import OnnxRuntimeEngine
from liverrt.runtime.onnxruntime_loader import GraphRunner, SessionFromOnnx


class _Fixed:
    def __init__(self, value: float) -> None:
        self.value = value

    def predict(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        return {"prob": np.full(batch.shape, self.value, np.float32)}


def test_the_engine_runs_what_a_handed_loader_returns(tiny_onnx):
    seen = []

    def loader(info):
        seen.append(info)
        return _Fixed(0.25)

    engine = OnnxRuntimeEngine(tiny_onnx, loader=loader)
    assert seen == []  # construction is cheap: nothing is built before activation
    with engine:
        out = engine.infer(np.zeros((2, *engine.input_spec.shape[1:]), np.float32))
    assert seen and seen[0].kind == engine.info.kind  # the loader gets the validated metadata
    assert out["prob"].shape[0] == 2 and np.all(out["prob"] == 0.25)


def test_the_default_loader_builds_a_checked_session(tiny_onnx):
    engine = OnnxRuntimeEngine(tiny_onnx)
    assert isinstance(engine.loader, SessionFromOnnx)
    runner = engine.loader(engine.info)
    assert isinstance(runner, GraphRunner) and runner.outputs == ["prob"]


@pytest.mark.slow
def test_a_split_maskrcnn_is_parsed_once_on_activation(maskrcnn_onnx, monkeypatch):
    """The rpn graph's manifest comes with its metadata: activating the engine parses the file once."""
    loads = []
    real = onnx.load

    def counting(path, *args, **kwargs):
        loads.append(str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(artifact_info_module.onnx, "load", counting)
    engine = open_engine("onnxruntime", maskrcnn_onnx.path)
    with engine:
        assert isinstance(engine._runner, SplitMaskRCNN)
    assert loads.count(str(maskrcnn_onnx.path)) == 1, loads
