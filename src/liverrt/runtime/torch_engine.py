"""PyTorch eager engine for liverrt checkpoints."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from liverrt.device import resolve_device
from liverrt.errors import ArtifactError
from liverrt.models import load_model
from liverrt.runtime.base import Engine


class TorchEngine(Engine):
    name = "torch"

    def __init__(self, path: Path, *, device: str = "auto") -> None:
        super().__init__(path)
        if self.path.suffix.lower() == ".onnx":
            raise ArtifactError(f"The torch engine needs a .pt checkpoint; got the ONNX file {self.path}. "
                                "Use --engine onnxruntime for ONNX models.")
        self.device_name = device
        self._model: torch.nn.Module | None = None
        self._device: torch.device | None = None

    def _activate(self) -> None:
        self._device = resolve_device(self.device_name)
        model, _, _ = load_model(self.path)
        self._model = model.to(self._device).eval()

    def _infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        assert self._model is not None and self._device is not None
        with torch.inference_mode():
            out = self._model.predict(torch.from_numpy(batch).to(self._device))
        return {k: v.float().cpu().numpy() for k, v in out.items()}

    def _deactivate(self) -> None:
        # drop only our references; emptying the CUDA cache would touch memory others hold
        self._model = None
        self._device = None
