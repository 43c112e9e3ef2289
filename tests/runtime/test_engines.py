"""One contract test, run against every registered engine."""

import numpy as np
import pytest
import torch
from liverrt_test_helpers import tiny_unet

from liverrt.errors import ArtifactError, InputError, LiverrtError
from liverrt.runtime import engine_names, open_engine


@pytest.fixture(params=engine_names())
def engine(request, tiny_checkpoint, tiny_onnx, tmp_path):
    if request.param == "tensorrt":
        pytest.importorskip("tensorrt", reason="needs TensorRT and a CUDA GPU")
        if not torch.cuda.is_available():
            pytest.skip("needs TensorRT and a CUDA GPU")
        return open_engine(request.param, tiny_onnx, cache_dir=tmp_path, batch="1:4:8")
    artifact = {"torch": tiny_checkpoint, "onnxruntime": tiny_onnx}[request.param]
    return open_engine(request.param, artifact)


def test_engine_contract(engine, tiny_spec):
    # cheap construction: metadata without activation
    assert not engine.is_active
    assert engine.info.spec == tiny_spec
    assert engine.input_spec.shape == ("N", 1, 32, 32)
    x = np.random.default_rng(0).random((3, 1, 32, 32), dtype=np.float32)
    with pytest.raises(LiverrtError, match="not active"):
        engine.infer(x)
    with engine as active:
        assert active is engine and engine.is_active
        out = engine.infer(x)
        assert set(out) == {"prob"}
        prob = out["prob"]
        assert prob.shape == (3, 1, 32, 32) and prob.dtype == np.float32
        assert np.all((prob >= 0) & (prob <= 1))
        with torch.no_grad():
            ref = torch.sigmoid(tiny_unet()(torch.from_numpy(x))).numpy()
        assert np.abs(prob - ref).max() < 1e-4
        single = engine.infer(x[:1])["prob"]
        assert np.abs(single - prob[:1]).max() < 1e-5  # batch-size invariant
        with pytest.raises(InputError, match="expected float32"):
            engine.infer(x.astype(np.float64))
        with pytest.raises(InputError, match=r"expected \(N, 1, 32, 32\)"):
            engine.infer(x[:, :, :16])
    assert not engine.is_active
    engine.deactivate()  # idempotent


def test_engines_refuse_the_other_format(tiny_checkpoint, tiny_onnx):
    with pytest.raises(ArtifactError, match="needs an .onnx"):
        open_engine("onnxruntime", tiny_checkpoint)
    with pytest.raises(ArtifactError, match="needs a .pt"):
        open_engine("torch", tiny_onnx)
    with pytest.raises(ArtifactError, match="needs an .onnx or a .plan"):
        open_engine("trt", tiny_checkpoint)
    with pytest.raises(InputError, match="Unknown engine"):
        open_engine("tensorflow", tiny_onnx)


def test_missing_provider_says_what_to_install(tiny_onnx):
    eng = open_engine("onnxruntime", tiny_onnx, providers=["CUDAExecutionProvider"])
    if "CUDAExecutionProvider" in __import__("onnxruntime").get_available_providers():
        pytest.skip("onnxruntime-gpu with CUDA is installed here")
    with pytest.raises(InputError, match="onnxruntime-gpu"):
        eng.activate()
    assert not eng.is_active
