"""onnxruntime engine for ONNX files written by ``liverrt export``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from liverrt.errors import ArtifactError, BackendUnavailableError
from liverrt.runtime.base import Engine


class OnnxRuntimeEngine(Engine):
    name = "onnxruntime"

    def __init__(self, path: Path, *, providers: Sequence[str] | None = None, threads: int | None = None) -> None:
        super().__init__(path)
        if self.path.suffix.lower() != ".onnx":
            raise ArtifactError(f"The onnxruntime engine needs an .onnx file; got {self.path}. "
                                "Run `liverrt export CKPT --format onnx --out model.onnx` first.")
        self.providers = list(providers) if providers else ["CPUExecutionProvider"]
        self.threads = threads
        self._session = None
        self._outputs: list[str] = []

    def _activate(self) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:  # pragma: no cover - onnxruntime is a core dependency
            raise BackendUnavailableError("onnxruntime is not installed; expected `pip install onnxruntime`.") from exc
        available = ort.get_available_providers()
        missing = [p for p in self.providers if p not in available]
        if missing:
            raise BackendUnavailableError(
                f"onnxruntime providers {missing} are not available here (available: {available}); "
                "for CUDA install liverrt[gpu] (onnxruntime-gpu) instead of onnxruntime."
            )
        self.info  # validates the liverrt metadata before a session is built  # noqa: B018
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if self.threads:
            opts.intra_op_num_threads = int(self.threads)
        self._session = ort.InferenceSession(str(self.path), sess_options=opts, providers=self.providers)
        self._input = self._session.get_inputs()[0].name
        self._outputs = [o.name for o in self._session.get_outputs()]

    def _infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        assert self._session is not None
        values = self._session.run(self._outputs, {self._input: batch})
        return {name: np.asarray(v, dtype=np.float32) for name, v in zip(self._outputs, values, strict=True)}

    def _deactivate(self) -> None:
        self._session = None
