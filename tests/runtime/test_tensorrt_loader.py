"""TensorRT plans: batch profile, engine key, sidecar and cache decisions (CPU, with a fake machine and compiler);
real builds only where TensorRT and a CUDA GPU exist."""

import dataclasses
import json
import time

import onnx
import pytest

from liverrt.atomic import MARKER
from liverrt.errors import ArtifactError, BackendUnavailableError, InputError
from liverrt.hashing import sha256_file
from liverrt.runtime.tensorrt_loader import (
    SIDECAR_FORMAT,
    EngineCache,
    EngineKey,
    build_engine,
    check_plan,
    current_machine,
    describe_mismatch,
    engine_key,
    parse_batch_profile,
    plan_info,
    read_sidecar,
    sidecar_path,
    write_plan,
)

A10 = {"tensorrt_version": "10.3.0", "compute_capability": "8.6", "gpu_name": "NVIDIA A10"}
H100 = {"tensorrt_version": "10.9.0", "compute_capability": "9.0", "gpu_name": "NVIDIA H100"}


def requires_tensorrt() -> dict:
    """The real machine, or a clean skip."""
    try:
        import tensorrt  # noqa: F401
    except Exception:
        pytest.skip("needs TensorRT and a CUDA GPU (import tensorrt failed)")
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs TensorRT and a CUDA GPU (no CUDA device)")
    return current_machine()


class FakeCompiler:
    """Stands in for TensorRT: returns bytes that name the key, counts calls."""

    def __init__(self) -> None:
        self.calls = []

    def __call__(self, onnx_path, key, *, input_name, timing_cache):
        self.calls.append((key, input_name, timing_cache))
        return f"fake plan {key.digest()}".encode()


def machine_of(m):
    return lambda: dict(m)


# -- batch profile -------------------------------------------------------------
def test_parse_batch_profile():
    assert parse_batch_profile("1:8:32") == (1, 8, 32)
    assert parse_batch_profile((4, 4, 4)) == (4, 4, 4)
    for bad in ("8", "1:8", "0:1:2", "8:4:16", "1:32:8", "a:b:c", "1:8:32:64", ""):
        with pytest.raises(InputError, match="expected MIN:OPT:MAX"):
            parse_batch_profile(bad)


# -- engine key ------------------------------------------------------------------
def _key(**change):
    key = EngineKey(onnx_sha256="ab" * 32, precision="fp32",
                    profile=((1, 1, 32, 32), (8, 1, 32, 32), (32, 1, 32, 32)), workspace_bytes=1 << 30, **A10)
    return dataclasses.replace(key, **change)


def test_engine_key_digest_is_stable_and_covers_every_field():
    key = _key()
    assert key.digest() == _key().digest() == "dc95f194e12b2d33"  # file names must not change between versions
    assert EngineKey.from_dict(json.loads(json.dumps(key.to_dict()))) == key
    changes = {"onnx_sha256": "cd" * 32, "tensorrt_version": "10.9.0", "compute_capability": "9.0",
               "gpu_name": "NVIDIA H100", "precision": "fp16", "workspace_bytes": 1 << 31,
               "profile": ((1, 1, 32, 32), (8, 1, 32, 32), (16, 1, 32, 32))}
    digests = {key.digest()}
    for field, value in changes.items():
        other = _key(**{field: value})
        assert key.diff(other) == [field]
        digests.add(other.digest())
    assert len(digests) == len(changes) + 1
    assert key.diff(_key(**H100)) == ["tensorrt_version", "compute_capability", "gpu_name"]


def test_mismatch_message_names_versions_and_fields():
    msg = describe_mismatch(A10, H100)
    assert "plan built for TensorRT 10.3.0 on compute capability 8.6" in msg
    assert "this machine has TensorRT 10.9.0 on 9.0" in msg
    assert "differing: tensorrt_version, compute_capability, gpu_name" in msg


def test_engine_key_reads_precision_and_size_from_the_onnx(tiny_onnx, tmp_path):
    key = engine_key(tiny_onnx, A10, batch=(2, 4, 8), workspace_mb=64)
    assert key.precision == "fp32" and key.onnx_sha256 == sha256_file(tiny_onnx)
    assert key.profile == ((2, 1, 32, 32), (4, 1, 32, 32), (8, 1, 32, 32))
    assert key.workspace_bytes == 64 << 20 and key.gpu_name == "NVIDIA A10"
    model = onnx.load(str(tiny_onnx))
    for value, ok in (("fp16", True), ("bf8", False)):
        meta = {p.key: p.value for p in model.metadata_props}
        onnx.helper.set_model_props(model, {**meta, "liverrt.precision": value})
        path = tmp_path / f"{value}.onnx"
        onnx.save(model, str(path))
        if ok:
            assert engine_key(path, A10).precision == "fp16"
        else:
            with pytest.raises(ArtifactError, match="expected one of"):
                engine_key(path, A10)


def test_int8_graphs_for_onnxruntime_are_refused_and_those_for_tensorrt_keyed(tiny_onnx, tmp_path):
    from liverrt_test_helpers import make_volume

    from liverrt.data.preprocess import PreprocessSpec
    from liverrt.export.precision import calibration_slices, to_int8

    calib = calibration_slices([make_volume(seed=1)], PreprocessSpec(size=32), n=4)
    ort_graph = to_int8(tiny_onnx, tmp_path / "ort.onnx", calib, method="minmax")
    with pytest.raises(InputError, match="--int8-target tensorrt"):
        engine_key(ort_graph, A10)
    trt_graph = to_int8(tiny_onnx, tmp_path / "trt.onnx", calib, method="minmax", target="tensorrt")
    assert engine_key(trt_graph, A10).precision == "int8"


# -- plan + sidecar --------------------------------------------------------------
def test_build_writes_plan_and_sidecar(tiny_onnx, tiny_spec, tmp_path):
    compiler = FakeCompiler()
    build = build_engine(tiny_onnx, tmp_path, batch="1:2:4", workspace_mb=16, machine=A10, compiler=compiler)
    assert build.built and build.plan.name == f"tiny.{build.key.digest()}.plan"
    assert build.sidecar == sidecar_path(build.plan) and build.sidecar.name.endswith(".json")
    assert compiler.calls[0][1] == "image"
    side = read_sidecar(build.plan)
    assert side["format"] == SIDECAR_FORMAT and EngineKey.from_dict(side) == build.key
    assert side["tensorrt_version"] == "10.3.0" and side["compute_capability"] == "8.6"
    assert side["gpu_name"] == "NVIDIA A10" and side["precision"] == "fp32"
    assert side["profile"] == {"min": [1, 1, 32, 32], "opt": [2, 1, 32, 32], "max": [4, 1, 32, 32]}
    assert side["onnx_sha256"] == sha256_file(tiny_onnx) and side["workspace_bytes"] == 16 << 20
    assert side["plan_sha256"] == sha256_file(build.plan) and side["build_seconds"] >= 0
    assert side["model"]["kind"] == "unet" and side["threshold"] == 0.5
    assert side["liverrt_version"] and side["created"] and side["input_name"] == "image"
    info = plan_info(build.plan)
    assert info.format == "tensorrt" and info.spec == tiny_spec and info.kind == "unet"
    assert info.precision == "fp32" and info.metrics == {"val_mask_iou": 0.5}
    # no temporary files left behind: only liverrt's list of what it wrote (liverrt.atomic.MARKER)
    assert [p.name for p in tmp_path.glob(".*")] == [MARKER]


def test_a_failed_build_writes_nothing(tiny_onnx, tmp_path):
    def broken(*a, **k):
        raise RuntimeError("builder crashed")

    with pytest.raises(RuntimeError):
        build_engine(tiny_onnx, tmp_path / "out", machine=A10, compiler=broken)
    assert not (tmp_path / "out").exists()


def test_check_plan_names_the_field_that_differs(tiny_onnx, tmp_path, caplog):
    plan = build_engine(tiny_onnx, tmp_path, machine=A10, compiler=FakeCompiler()).plan
    key, side = check_plan(plan, A10)
    assert key.tensorrt_version == "10.3.0"
    with pytest.raises(ArtifactError, match=r"differing: tensorrt_version\."):
        check_plan(plan, {**A10, "tensorrt_version": "10.9.0"})
    with pytest.raises(ArtifactError, match="compute_capability") as err:
        check_plan(plan, {**A10, "compute_capability": "9.0"})
    assert "plan built for TensorRT 10.3.0 on compute capability 8.6" in str(err.value)
    with caplog.at_level("WARNING"):  # another GPU model of the same architecture: runs, with a warning
        check_plan(plan, {**A10, "gpu_name": "NVIDIA A40"})
    assert "gpu_name" in caplog.text
    side_path = sidecar_path(plan)
    plan.write_bytes(b"something else")
    with pytest.raises(ArtifactError, match="plan_sha256"):
        check_plan(plan, A10)
    side_path.unlink()
    with pytest.raises(ArtifactError, match="no sidecar"):
        check_plan(plan, A10)
    side_path.write_text(json.dumps({"format": "other"}))
    with pytest.raises(ArtifactError, match="expected a liverrt TensorRT sidecar"):
        check_plan(plan, A10)


# -- the cache -------------------------------------------------------------------
def test_cache_reuses_rebuilds_and_refuses(tiny_onnx, tmp_path, caplog):
    compiler = FakeCompiler()
    cache = EngineCache(tmp_path, machine=machine_of(A10), compiler=compiler)
    first = cache.get_or_build(tiny_onnx, batch="1:2:4")
    assert first.built and len(compiler.calls) == 1
    assert compiler.calls[0][2] == tmp_path / "timing.trt10.3.0-cc8.6.cache"
    again = cache.get_or_build(tiny_onnx, batch="1:2:4")
    assert not again.built and again.plan == first.plan and len(compiler.calls) == 1
    assert cache.lookup(tiny_onnx, first.key) == first.plan
    other_profile = cache.get_or_build(tiny_onnx, batch="1:8:32")  # other settings: another plan, not stale
    assert other_profile.built and other_profile.plan != first.plan and len(compiler.calls) == 2

    upgraded = EngineCache(tmp_path, machine=machine_of({**A10, "tensorrt_version": "10.9.0"}), compiler=compiler)
    with pytest.raises(ArtifactError, match="differing: tensorrt_version") as err:
        upgraded.get_or_build(tiny_onnx, batch="1:2:4", rebuild=False)
    assert "plan built for TensorRT 10.3.0" in str(err.value) and "this machine has TensorRT 10.9.0" in str(err.value)
    assert len(compiler.calls) == 2
    with caplog.at_level("WARNING"):
        rebuilt = upgraded.get_or_build(tiny_onnx, batch="1:2:4")
    assert rebuilt.built and rebuilt.key.tensorrt_version == "10.9.0" and "rebuilding" in caplog.text
    assert not first.plan.exists() and not first.sidecar.exists()  # outdated plan of this same GPU removed

    h100 = EngineCache(tmp_path, machine=machine_of(H100), compiler=compiler)
    with pytest.raises(ArtifactError, match="compute_capability"):
        h100.get_or_build(tiny_onnx, batch="1:2:4", rebuild=False)
    on_h100 = h100.get_or_build(tiny_onnx, batch="1:2:4")
    assert on_h100.built and rebuilt.plan.exists()  # another GPU's plan stays for that GPU


def test_cache_ignores_an_entry_whose_plan_changed(tiny_onnx, tmp_path):
    compiler = FakeCompiler()
    cache = EngineCache(tmp_path, machine=machine_of(A10), compiler=compiler)
    first = cache.get_or_build(tiny_onnx)
    first.plan.write_bytes(b"truncated")
    assert cache.lookup(tiny_onnx, first.key) is None
    again = cache.get_or_build(tiny_onnx)
    assert again.built and len(compiler.calls) == 2 and check_plan(again.plan, A10)


def test_cache_dir_default_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("LIVERRT_TRT_CACHE", str(tmp_path / "trtcache"))
    assert EngineCache().root == tmp_path / "trtcache"
    monkeypatch.delenv("LIVERRT_TRT_CACHE")
    assert EngineCache().root.parts[-3:] == (".cache", "liverrt", "trt")


def test_without_tensorrt_the_error_says_what_to_install(tiny_onnx, tmp_path):
    try:
        import tensorrt  # noqa: F401

        pytest.skip("TensorRT is installed here")
    except ImportError:
        pass
    with pytest.raises(BackendUnavailableError) as err:
        current_machine()
    assert "pip install liverrt[trt] on a machine with an NVIDIA GPU and driver" in str(err.value)
    assert err.value.exit_code == 2
    with pytest.raises(BackendUnavailableError):
        EngineCache(tmp_path).get_or_build(tiny_onnx)
    assert not any(tmp_path.iterdir())


# -- with TensorRT and a GPU -----------------------------------------------------
@pytest.mark.trt
@pytest.mark.gpu
def test_real_build_is_cached_and_reused(tiny_onnx, tmp_path):
    machine = requires_tensorrt()
    cache = EngineCache(tmp_path)
    t0 = time.perf_counter()
    first = cache.get_or_build(tiny_onnx, batch="1:4:8", workspace_mb=256)
    t_build = time.perf_counter() - t0
    t0 = time.perf_counter()
    again = cache.get_or_build(tiny_onnx, batch="1:4:8", workspace_mb=256)
    t_reuse = time.perf_counter() - t0
    assert first.built and not again.built and again.plan == first.plan
    assert t_reuse < t_build, (t_reuse, t_build)
    assert cache.timing_cache(first.key).is_file()
    key, _ = check_plan(first.plan, machine)
    assert key.tensorrt_version == machine["tensorrt_version"]


@pytest.mark.trt
@pytest.mark.gpu
def test_real_plan_from_another_tensorrt_version_is_rebuilt(tiny_onnx, tmp_path):
    machine = requires_tensorrt()
    real = build_engine(tiny_onnx, tmp_path / "real", batch="1:2:4", workspace_mb=256)
    fake_key = dataclasses.replace(real.key, tensorrt_version="9.9.9")
    stale = write_plan(tmp_path / "cache", tiny_onnx, fake_key, real.plan.read_bytes(), input_name="image",
                       build_seconds=0.0)
    with pytest.raises(ArtifactError, match="tensorrt_version"):
        check_plan(stale.plan, machine)
    cache = EngineCache(tmp_path / "cache")
    with pytest.raises(ArtifactError, match="tensorrt_version"):
        cache.get_or_build(tiny_onnx, batch="1:2:4", workspace_mb=256, rebuild=False)
    rebuilt = cache.get_or_build(tiny_onnx, batch="1:2:4", workspace_mb=256)
    assert rebuilt.built and rebuilt.key == real.key and not stale.plan.exists()
