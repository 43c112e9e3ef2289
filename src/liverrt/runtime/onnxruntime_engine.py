"""onnxruntime engine for ONNX files written by ``liverrt export``.

Providers: CPU (default), CUDA and the TensorRT execution provider when
onnxruntime-gpu is installed (``providers=["TensorrtExecutionProvider",
"CUDAExecutionProvider"]``). What runs is built by a loader
(:class:`~liverrt.runtime.onnxruntime_loader.SessionFromOnnx` unless another is
handed in): one session, or a split Mask R-CNN's three and the pipeline between
them. The engine checks the artifact's metadata, calls the loader on
activation and runs what it returns.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from liverrt.errors import ArtifactError
from liverrt.runtime.base import Engine
from liverrt.runtime.onnxruntime_loader import Loader, Runner, SessionFromOnnx


class OnnxRuntimeEngine(Engine):
    name = "onnxruntime"

    def __init__(self, path: Path, *, providers: Sequence[str] | None = None, threads: int | None = None,
                 loader: Loader | None = None) -> None:
        super().__init__(path)
        if self.path.suffix.lower() != ".onnx":
            raise ArtifactError(f"The onnxruntime engine needs an .onnx file; got {self.path}. "
                                "Run `liverrt export CKPT --format onnx --out model.onnx` first.")
        self.loader = loader or SessionFromOnnx(self.path, providers=providers, threads=threads)
        self._runner: Runner | None = None

    def _activate(self) -> None:
        self._runner = self.loader(self.info)  # the metadata is validated before a session is built

    def _infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        assert self._runner is not None
        return self._runner.predict(batch)

    def _deactivate(self) -> None:
        self._runner = None
