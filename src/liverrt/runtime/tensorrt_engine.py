"""TensorRT engine for a liverrt ``.plan`` (+ sidecar) or an ``.onnx`` file built through the engine cache.

Device buffers and the CUDA stream are torch's: TensorRT reads and writes
torch tensors through ``set_tensor_address(name, tensor.data_ptr())`` and runs
with ``execute_async_v3(stream.cuda_stream)``. Buffers are allocated once, for
the profile's largest batch, and smaller batches use views of them; with
``cuda_graph=True`` each batch size is captured once (after a warm-up run)
and replayed afterwards.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import torch

from liverrt.artifacts import ArtifactInfo, artifact_info
from liverrt.errors import ArtifactError, LiverrtError
from liverrt.runtime.base import Engine
from liverrt.runtime.tensorrt_loader import (
    DEFAULT_BATCH,
    DEFAULT_WORKSPACE_MB,
    EngineCache,
    check_plan,
    check_single_graph,
    current_machine,
    parse_batch_profile,
    plan_info,
)

log = logging.getLogger(__name__)

_TRT_LOGGER = None


def _trt_logger():
    global _TRT_LOGGER
    if _TRT_LOGGER is None:
        import tensorrt as trt  # optional (liverrt[trt]): imported only when a plan is loaded

        _TRT_LOGGER = trt.Logger(trt.Logger.WARNING)
    return _TRT_LOGGER


def _torch_dtype(trt_dtype):
    import tensorrt as trt  # optional, as above

    table = {"FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16, "INT8": torch.int8,
             "UINT8": torch.uint8, "INT32": torch.int32, "INT64": torch.int64, "BOOL": torch.bool}
    for name, dtype in table.items():
        if getattr(trt.DataType, name, None) == trt_dtype:
            return dtype
    raise ArtifactError(f"TensorRT I/O tensor type {trt_dtype} is not supported; expected float32/float16 I/O.")


def _device_index(device: int | str) -> int:
    if isinstance(device, int):
        return device
    text = str(device)
    if text == "cuda":
        return 0
    if text.startswith("cuda:") and text[5:].isdigit():
        return int(text[5:])
    raise LiverrtError(f"TensorRT device {device!r}: expected a CUDA device index or 'cuda:N'.")


class TensorRTEngine(Engine):
    name = "tensorrt"

    def __init__(
        self,
        path: Path,
        *,
        cache_dir: Path | None = None,
        batch: tuple[int, int, int] | str = DEFAULT_BATCH,
        workspace_mb: int = DEFAULT_WORKSPACE_MB,
        rebuild: bool = True,
        cuda_graph: bool = False,
        device: int | str = 0,
    ) -> None:
        """``path``: a ``.plan`` written by liverrt (with its sidecar) or an ``.onnx`` file,
        built on activation into ``cache_dir`` (default ``$LIVERRT_TRT_CACHE`` or
        ``~/.cache/liverrt/trt``) with batch profile ``batch`` (min, opt, max;
        ignored for a ``.plan``). Batches above the profile's max are split."""
        super().__init__(path)
        suffix = self.path.suffix.lower()
        if suffix not in (".onnx", ".plan"):
            raise ArtifactError(f"The tensorrt engine needs an .onnx or a .plan file; got {self.path}. "
                                "Run `liverrt export CKPT --format onnx --out model.onnx` first.")
        self.is_plan = suffix == ".plan"
        if not self.is_plan and self.path.is_file():
            check_single_graph(self.path)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.batch = parse_batch_profile(batch)
        self.workspace_mb = int(workspace_mb)
        self.rebuild = rebuild
        self.cuda_graph = cuda_graph
        self.device = _device_index(device)
        self.plan: Path | None = None  # the plan in use, once active
        self._reset()

    def _reset(self) -> None:
        """Drop everything this engine created, in a safe order: graphs, context, engine, runtime, buffers, stream."""
        self._graphs: dict = {}  # batch -> torch.cuda.CUDAGraph
        self._views: dict = {}  # name -> shaped view for the bound batch
        self._context = None
        self._engine = None
        self._runtime = None
        self._storage: dict = {}  # name -> flat device tensor sized for the max batch
        self._stream = None
        self._graphs_ok = self.cuda_graph
        self._bound: int | None = None

    @property
    def info(self) -> ArtifactInfo:
        if self._info is None:
            self._info = plan_info(self.path) if self.is_plan else artifact_info(self.path)
        return self._info

    # -- lifecycle ----------------------------------------------------------
    def _activate(self) -> None:
        self.info  # noqa: B018 - a damaged artifact fails before TensorRT is looked for
        machine = current_machine(self.device)  # BackendUnavailableError without TensorRT or a GPU
        if self.is_plan:
            key, _ = check_plan(self.path, machine)
            plan = self.path
        else:
            build = EngineCache(self.cache_dir, machine=lambda: machine).get_or_build(
                self.path, batch=self.batch, workspace_mb=self.workspace_mb, rebuild=self.rebuild)
            plan, key = build.plan, build.key
        try:
            self._load(plan, key)
        except BaseException:
            self._reset()
            raise
        self.plan = plan

    def _load(self, plan: Path, key) -> None:
        import tensorrt as trt  # optional, as above

        self._torch_device = torch.device("cuda", self.device)
        with torch.cuda.device(self._torch_device):
            self._stream = torch.cuda.Stream()
            self._runtime = trt.Runtime(_trt_logger())
            self._engine = self._runtime.deserialize_cuda_engine(plan.read_bytes())
            if self._engine is None:
                raise ArtifactError(f"TensorRT could not deserialise {plan}; expected a plan from this TensorRT "
                                    "version. Delete it (and its .json) and build it again from the ONNX file.")
            self._context = self._engine.create_execution_context()
            names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
            inputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
            if len(inputs) != 1:
                raise ArtifactError(f"{plan}: {len(inputs)} inputs {inputs}; expected one image input.")
            self._input, self._outputs = inputs[0], [n for n in names if n != inputs[0]]
            self._min_batch, self._max_batch = key.profile[0][0], key.profile[2][0]
            dtypes = {n: _torch_dtype(self._engine.get_tensor_dtype(n)) for n in names}
            sample = tuple(self.input_spec.shape[1:])
            top = (self._max_batch, *sample)
            self._set_shape(top)
            for name in names:
                shape = top if name == self._input else tuple(self._context.get_tensor_shape(name))
                self._storage[name] = torch.empty(math.prod(shape), dtype=dtypes[name], device=self._torch_device)
        self._sample = sample

    def _deactivate(self) -> None:
        self._reset()
        self.plan = None

    # -- inference ----------------------------------------------------------
    def _infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        parts = [self._run(batch[i:i + self._max_batch]) for i in range(0, len(batch), self._max_batch)]
        if len(parts) == 1:
            return parts[0]
        return {name: np.concatenate([p[name] for p in parts]) for name in self._outputs}

    def _run(self, chunk: np.ndarray) -> dict[str, np.ndarray]:
        n = len(chunk)
        b = max(n, self._min_batch)
        if b > n:  # below the profile's min: pad with zeros, drop them after
            chunk = np.concatenate([chunk, np.zeros((b - n, *chunk.shape[1:]), chunk.dtype)])
        with torch.cuda.device(self._torch_device), torch.cuda.stream(self._stream):
            views = self._bind(b)
            views[self._input].copy_(torch.from_numpy(chunk))
            graph = self._graphs.get(b)
            if graph is not None:
                graph.replay()
            else:
                self._execute()
                if self._graphs_ok:  # the run above was the warm-up TensorRT needs before a capture
                    self._capture(b)
            out = {name: views[name].float().cpu().numpy()[:n] for name in self._outputs}
        return out

    def _set_shape(self, shape: tuple[int, ...]) -> None:
        if not self._context.set_input_shape(self._input, shape):
            raise LiverrtError(f"TensorRT refused input shape {shape} for {self._input!r}; expected a batch within "
                               f"the plan's profile [{self._min_batch}, {self._max_batch}].")

    def _bind(self, b: int) -> dict:
        """Shape the context for batch ``b`` and point it at views of the buffers (no allocation)."""
        if self._bound == b:
            return self._views
        shape = (b, *self._sample)
        self._set_shape(shape)
        views = {}
        for name, flat in self._storage.items():
            s = shape if name == self._input else tuple(self._context.get_tensor_shape(name))
            if any(d < 0 for d in s) or math.prod(s) > flat.numel():
                raise LiverrtError(f"TensorRT output {name!r} has shape {s} for batch {b}; expected a static shape "
                                   "that grows with the batch.")
            views[name] = flat[: math.prod(s)].view(s)
            self._context.set_tensor_address(name, views[name].data_ptr())
        self._views, self._bound = views, b
        return views

    def _execute(self) -> None:
        if not self._context.execute_async_v3(self._stream.cuda_stream):
            raise LiverrtError("TensorRT execute_async_v3 failed (see the TensorRT log above).")

    def _capture(self, b: int) -> None:
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, stream=self._stream, capture_error_mode="thread_local"):
                self._execute()
        except (RuntimeError, LiverrtError) as exc:
            log.warning("CUDA graph capture failed for batch %d (%s); running without CUDA graphs.", b, exc)
            self._graphs_ok = False
            return
        self._graphs[b] = graph
