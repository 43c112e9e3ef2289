"""The tensorrt engine's CUDA side on a real GPU, with TensorRT itself replaced by a stand-in.

TensorRT has no wheel that installs on the machines this project tests on,
but the GPU machines have CUDA and torch. Everything of
:class:`~liverrt.runtime.tensorrt_engine.TensorRTEngine` around TensorRT is
checked here on the device: the plan cache and sidecar, device buffers
allocated once (no device allocation once every batch size has run) and
viewed per batch, input and output in separate buffers, execution on the
engine's own stream (not the default one), batches split above the profile's
max and padded below its min (the stand-in refuses shapes outside the
profile, as TensorRT does), CUDA-graph capture and replay with fresh inputs,
and the copy back to the host.

The stand-in reads and writes the buffers at the addresses the engine binds
(through ``__cuda_array_interface__``) and computes ``sigmoid(2x - 1)`` of
each row mirrored left to right, on the current stream, so a wrong address,
a stale view, a replay that reads an old input, rows or pixels out of place,
or padding rows leaking into the output all show up as wrong numbers.
"""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch

from liverrt.runtime import open_engine

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

INPUT, OUTPUT = "image", "prob"


class _DeviceArray:
    """A float32 device array at a raw address, for ``torch.as_tensor`` (no copy)."""

    def __init__(self, ptr: int, shape: tuple[int, ...]) -> None:
        self.__cuda_array_interface__ = {"shape": tuple(shape), "typestr": "<f4", "data": (int(ptr), False),
                                         "version": 2, "strides": None}


class _Context:
    def __init__(self, log: dict, profile: tuple[int, int]) -> None:
        self.log, self.profile = log, profile
        self.shape: tuple[int, ...] | None = None
        self.views: dict[str, torch.Tensor] = {}
        self.mirror: torch.Tensor | None = None

    def set_input_shape(self, name: str, shape) -> bool:
        assert name == INPUT
        shape = tuple(int(d) for d in shape)
        if not self.profile[0] <= shape[0] <= self.profile[1]:  # TensorRT refuses shapes outside the profile
            self.log["refused"].append(shape)
            return False
        self.shape = shape
        if self.mirror is None:  # made here, never inside a CUDA-graph capture
            self.mirror = torch.arange(shape[-1] - 1, -1, -1, device="cuda")
            torch.cuda.synchronize()  # made on the current stream; read later on the engine's
        return True

    def get_tensor_shape(self, name: str):
        return self.shape

    def set_tensor_address(self, name: str, ptr: int) -> bool:
        self.log["addresses"].setdefault(name, set()).add(int(ptr))
        self.views[name] = torch.as_tensor(_DeviceArray(ptr, self.shape), device="cuda")
        return True

    def execute_async_v3(self, stream: int) -> bool:
        self.log["executions"] += 1
        self.log["streams"].add(int(stream))
        if stream != torch.cuda.current_stream().cuda_stream:  # work goes where it is queued: the current stream
            self.log["wrong_stream"] += 1
        x, y = self.views[INPUT], self.views[OUTPUT]
        assert x.shape == y.shape == self.shape
        torch.index_select(x, 3, self.mirror, out=y)  # no allocation: legal inside a CUDA-graph capture
        y.mul_(2.0).sub_(1.0).sigmoid_()
        return True


class _CudaEngine:
    num_io_tensors = 2

    def __init__(self, log: dict, trt, profile: tuple[int, int]) -> None:
        self.log, self.trt, self.profile = log, trt, profile

    def get_tensor_name(self, i: int) -> str:
        return (INPUT, OUTPUT)[i]

    def get_tensor_mode(self, name: str):
        return self.trt.TensorIOMode.INPUT if name == INPUT else self.trt.TensorIOMode.OUTPUT

    def get_tensor_dtype(self, name: str):
        return self.trt.DataType.FLOAT

    def create_execution_context(self) -> _Context:
        return _Context(self.log, self.profile)


def _standin_tensorrt(log: dict) -> types.ModuleType:
    trt = types.ModuleType("tensorrt")
    trt.__version__ = "10.99.0+standin"

    class Logger:
        WARNING = 2

        def __init__(self, level) -> None:
            pass

    class Runtime:
        def __init__(self, logger) -> None:
            pass

        def deserialize_cuda_engine(self, data: bytes):
            log["deserialised"] += 1
            words = data.split()
            if words[:2] != [b"standin", b"plan"]:
                return None
            return _CudaEngine(log, trt, (int(words[2]), int(words[3])))

    trt.Logger, trt.Runtime = Logger, Runtime
    trt.DataType = types.SimpleNamespace(FLOAT="float32", HALF="float16")
    trt.TensorIOMode = types.SimpleNamespace(INPUT="input", OUTPUT="output")
    return trt


@pytest.fixture
def standin(monkeypatch):
    import liverrt.runtime.tensorrt_engine as trt_engine
    import liverrt.runtime.tensorrt_loader as trt_export

    log = {"executions": 0, "wrong_stream": 0, "deserialised": 0, "compiled": 0, "addresses": {}, "streams": set(),
           "refused": []}

    def compile_plan(onnx_path, key, *, input_name, timing_cache):  # the plan records the batch profile
        log["compiled"] += 1
        return f"standin plan {key.profile[0][0]} {key.profile[2][0]}".encode()

    monkeypatch.setitem(__import__("sys").modules, "tensorrt", _standin_tensorrt(log))
    monkeypatch.setattr(trt_export, "compile_plan", compile_plan)
    monkeypatch.setattr(trt_engine, "_TRT_LOGGER", None)
    return log


def _expected(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-(2.0 * x[..., ::-1].astype(np.float64) - 1.0)))


@pytest.mark.parametrize("cuda_graph", [False, True])
def test_buffers_streams_batches_and_graphs_on_the_gpu(tiny_onnx, tmp_path, standin, cuda_graph):
    rng = np.random.default_rng(0)
    eng = open_engine("tensorrt", tiny_onnx, cache_dir=tmp_path, batch="2:4:4", cuda_graph=cuda_graph)
    with eng:
        allocations = []
        for round_ in range(3):  # fresh inputs every round: a replay must read the new ones
            x = rng.standard_normal((11, 1, 32, 32), dtype=np.float32)
            out = eng.infer(x)  # 11 > max batch 4: 4 + 4 + 3
            assert set(out) == {"prob"} and out["prob"].shape == x.shape and out["prob"].dtype == np.float32
            np.testing.assert_allclose(out["prob"], _expected(x), atol=1e-6, err_msg=f"round {round_}")
            allocations.append(torch.cuda.memory_stats()["allocation.all.allocated"])
        one = rng.standard_normal((1, 1, 32, 32), dtype=np.float32)
        np.testing.assert_allclose(eng.infer(one)["prob"], _expected(one), atol=1e-6)  # padded to 2, trimmed
        engine_stream = eng._stream.cuda_stream
        plan = eng.plan
        if cuda_graph:
            # one run before each capture plus the captured one, for batches 4, 3 and 2; replays after that
            assert standin["executions"] == 6 and sorted(eng._graphs) == [2, 3, 4]
        else:
            assert standin["executions"] == 3 * 3 + 1
    assert allocations[1] == allocations[2], "device memory was allocated again for batch sizes already seen"
    assert standin["wrong_stream"] == 0 and standin["refused"] == []
    assert standin["streams"] == {engine_stream} and engine_stream != torch.cuda.default_stream().cuda_stream
    # buffers are allocated once, for the max batch; every batch size binds views at the same two addresses
    assert {name: len(a) for name, a in standin["addresses"].items()} == {INPUT: 1, OUTPUT: 1}
    assert standin["addresses"][INPUT].isdisjoint(standin["addresses"][OUTPUT])
    assert standin["compiled"] == 1 and plan is not None and plan.is_file()
    assert not eng.is_active and eng.plan is None

    with open_engine("tensorrt", plan) as from_plan:  # the cached plan alone, through its sidecar
        x = rng.standard_normal((5, 1, 32, 32), dtype=np.float32)
        np.testing.assert_allclose(from_plan.infer(x)["prob"], _expected(x), atol=1e-6)
    assert standin["compiled"] == 1 and standin["deserialised"] == 2


def test_a_plan_tensorrt_cannot_read_is_refused_and_nothing_stays_allocated(tiny_onnx, tmp_path, standin,
                                                                             monkeypatch):
    import liverrt.runtime.tensorrt_loader as trt_export
    from liverrt.errors import ArtifactError

    monkeypatch.setattr(trt_export, "compile_plan", lambda *a, **k: b"damaged plan")
    eng = open_engine("tensorrt", tiny_onnx, cache_dir=tmp_path, batch="1:2:4")
    with pytest.raises(ArtifactError, match="could not deserialise"):
        eng.activate()
    assert not eng.is_active and eng._stream is None and eng._context is None
