"""The Engine contract every backend implements (Polygraphy-runner style).

* construction is cheap: nothing heavy is loaded before :meth:`Engine.activate`
  (or ``with engine:``);
* :meth:`Engine.infer` takes ``(N, 1, S, S)`` float32 and returns a dict of
  named float32 arrays; the base class checks the input, a backend only fills
  in ``_activate``, ``_infer`` and ``_deactivate``;
* an engine frees only what it created.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from liverrt.artifacts import ArtifactInfo, artifact_info
from liverrt.errors import ArtifactError, InputError, LiverrtError
from liverrt.models import TASKS, kinds, task_of


def require_task(info: ArtifactInfo, task: str, *, role: str) -> None:
    """Refuse, at load time, an artifact whose model is unknown or not for ``task``.

    ``task``: ``segmentation`` | ``denoising`` (what each model class declares); ``role`` names
    where the user gave the artifact (``--model``, ``--denoise``).
    """
    if info.kind not in kinds():
        raise ArtifactError(f"{role} {info.path}: damaged liverrt metadata, field kind: got {info.kind!r}, "
                            f"expected one of {kinds()}.")
    if task_of(info.kind) != task:
        raise ArtifactError(f"{role} {info.path}: holds a {info.kind!r} model ({TASKS[task_of(info.kind)]}); "
                            f"expected {TASKS[task]}.")


@dataclass(frozen=True)
class InputSpec:
    name: str
    dtype: np.dtype
    shape: tuple[int | str, ...]  # "N" marks the dynamic batch axis


class Engine(abc.ABC):
    """A loaded model that maps preprocessed slices to named outputs."""

    #: registry name, e.g. "torch", "onnxruntime"
    name: str = ""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._info: ArtifactInfo | None = None
        self.is_active = False

    # -- metadata (cheap, no session) ---------------------------------------
    @property
    def info(self) -> ArtifactInfo:
        if self._info is None:
            self._info = artifact_info(self.path)
        return self._info

    @property
    def input_spec(self) -> InputSpec:
        return InputSpec("image", np.dtype(np.float32), ("N", *self.info.spec.input_shape(1)[1:]))

    # -- lifecycle ----------------------------------------------------------
    def activate(self) -> Engine:
        if not self.is_active:
            self._activate()
            self.is_active = True
        return self

    def deactivate(self) -> None:
        if self.is_active:
            try:
                self._deactivate()
            finally:
                self.is_active = False

    def __enter__(self) -> Engine:
        return self.activate()

    def __exit__(self, *exc: object) -> None:
        self.deactivate()

    # -- inference ----------------------------------------------------------
    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Run ``batch`` (N, C, S, S) float32 through the model; returns ``{"prob": (N, 1, S, S)}``."""
        if not self.is_active:
            raise LiverrtError(f"{type(self).__name__} is not active; use `with engine:` or call activate() first.")
        spec = self.input_spec
        if not isinstance(batch, np.ndarray):
            raise InputError(f"Input 'image': got {type(batch).__name__}, expected a numpy float32 array.")
        if batch.dtype != np.float32:
            raise InputError(
                f"Input 'image': got {batch.dtype}, expected float32. Note: preprocess first (see PreprocessSpec)."
            )
        expected = spec.shape[1:]
        if batch.ndim != 4 or tuple(batch.shape[1:]) != expected or batch.shape[0] < 1:
            raise InputError(
                f"Input 'image': got shape {tuple(batch.shape)}, expected (N, {', '.join(map(str, expected))})."
                " Note: preprocess first (see PreprocessSpec)."
            )
        return self._infer(np.ascontiguousarray(batch))

    @abc.abstractmethod
    def _activate(self) -> None: ...

    @abc.abstractmethod
    def _infer(self, batch: np.ndarray) -> dict[str, np.ndarray]: ...

    @abc.abstractmethod
    def _deactivate(self) -> None: ...
