"""The tensorrt engine: cheap construction and clean errors everywhere; inference where TensorRT and a GPU exist."""

import time

import numpy as np
import pytest

from liverrt.errors import ArtifactError, BackendUnavailableError, InputError
from liverrt.runtime import open_engine
from liverrt.runtime.tensorrt_engine import TensorRTEngine
from liverrt.runtime.tensorrt_loader import EngineCache, build_engine, current_machine, sidecar_path

A10 = {"tensorrt_version": "10.3.0", "compute_capability": "8.6", "gpu_name": "NVIDIA A10"}


def tensorrt_usable() -> bool:
    try:
        import tensorrt  # noqa: F401
    except Exception:
        return False
    import torch

    return torch.cuda.is_available()


def requires_tensorrt() -> dict:
    if not tensorrt_usable():
        pytest.skip("needs TensorRT and a CUDA GPU")
    return current_machine()


def fake_compiler(onnx_path, key, *, input_name, timing_cache):
    return b"not a real plan"


def test_construction_is_cheap_and_reads_the_onnx_metadata(tiny_onnx, tiny_spec, tmp_path):
    for name in ("tensorrt", "trt"):
        eng = open_engine(name, tiny_onnx, cache_dir=tmp_path)
        assert isinstance(eng, TensorRTEngine) and eng.name == "tensorrt" and not eng.is_active
        assert eng.info.spec == tiny_spec and eng.input_spec.shape == ("N", 1, 32, 32)
    assert not any(tmp_path.iterdir())  # nothing built before activation


def test_a_plan_gets_its_info_from_the_sidecar(tiny_onnx, tiny_spec, tmp_path):
    plan = build_engine(tiny_onnx, tmp_path, machine=A10, compiler=fake_compiler).plan
    eng = open_engine("tensorrt", plan)
    assert eng.info.format == "tensorrt" and eng.info.spec == tiny_spec and eng.info.kind == "unet"
    sidecar_path(plan).unlink()
    with pytest.raises(ArtifactError, match="no sidecar"):
        open_engine("tensorrt", plan).info  # noqa: B018


def test_wrong_files_and_options_are_refused(tiny_checkpoint, tiny_onnx):
    with pytest.raises(ArtifactError, match="needs an .onnx or a .plan"):
        open_engine("tensorrt", tiny_checkpoint)
    with pytest.raises(InputError, match="MIN:OPT:MAX"):
        open_engine("tensorrt", tiny_onnx, batch="8:4:1")


def test_activation_without_tensorrt_says_what_to_install(tiny_onnx, tmp_path):
    if tensorrt_usable():
        pytest.skip("TensorRT and a CUDA GPU are available here")
    eng = open_engine("tensorrt", tiny_onnx, cache_dir=tmp_path)
    with pytest.raises(BackendUnavailableError) as err:
        eng.activate()
    assert "pip install liverrt[trt]" in str(err.value) and err.value.exit_code == 2
    assert not eng.is_active and not any(tmp_path.iterdir())


def test_cli_infer_with_tensorrt_exits_2_without_traceback(tiny_onnx, tmp_path):
    from click.testing import CliRunner

    from liverrt.cli import cli
    if tensorrt_usable():
        pytest.skip("TensorRT and a CUDA GPU are available here")
    from liverrt_test_helpers import make_volume

    from liverrt.data.io import write_nifti

    vol = make_volume()
    src = write_nifti(vol.image, vol.affine, tmp_path / "ct.nii.gz")
    r = CliRunner().invoke(cli, ["infer", "--model", str(tiny_onnx), "--engine", "tensorrt", "--input", str(src),
                                 "--out", str(tmp_path / "out")])
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output and "pip install liverrt[trt]" in r.output


# -- with TensorRT and a GPU -----------------------------------------------------
def _onnxruntime_reference(tiny_onnx, x):
    with open_engine("onnxruntime", tiny_onnx) as ort:
        return ort.infer(x)["prob"]


@pytest.mark.trt
@pytest.mark.gpu
@pytest.mark.parametrize("cuda_graph", [False, True])
def test_tensorrt_matches_onnxruntime(tiny_onnx, tmp_path, cuda_graph):
    requires_tensorrt()
    x = np.random.default_rng(0).random((11, 1, 32, 32), dtype=np.float32)
    ref = _onnxruntime_reference(tiny_onnx, x)
    eng = open_engine("tensorrt", tiny_onnx, cache_dir=tmp_path, batch="2:4:4", cuda_graph=cuda_graph)
    with eng:
        for _ in range(2):  # the second pass replays captured graphs
            out = eng.infer(x)  # 11 > max batch 4: split into 4 + 4 + 3
            assert set(out) == {"prob"} and out["prob"].shape == (11, 1, 32, 32)
            assert out["prob"].dtype == np.float32
            assert np.abs(out["prob"] - ref).max() < 1e-3
        one = eng.infer(x[:1])["prob"]  # below the profile min: padded, then trimmed
        assert one.shape == (1, 1, 32, 32) and np.abs(one - ref[:1]).max() < 1e-3
        plan = eng.plan
    assert not eng.is_active and eng.plan is None
    with open_engine("tensorrt", plan) as from_plan:  # the cached .plan on its own, via its sidecar
        assert np.abs(from_plan.infer(x)["prob"] - ref).max() < 1e-3


@pytest.mark.trt
@pytest.mark.gpu
def test_second_activation_reuses_the_cached_plan(tiny_onnx, tmp_path):
    requires_tensorrt()
    times = []
    for _ in range(2):
        t0 = time.perf_counter()
        with open_engine("tensorrt", tiny_onnx, cache_dir=tmp_path, batch="1:2:4") as eng:
            times.append(time.perf_counter() - t0)
    assert len(list(tmp_path.glob("*.plan"))) == 1
    assert times[1] < times[0], times
    assert not EngineCache(tmp_path).get_or_build(tiny_onnx, batch="1:2:4").built
    assert eng.plan is None
