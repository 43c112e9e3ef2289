"""The networks, registered once each with their builders.

``build(name, **kwargs)`` constructs a registered model; ``from_config`` rebuilds
one from the config stored in a checkpoint; ``model_class(kind)`` is the class
that describes a kind (:class:`~liverrt.models.base.LiverrtModel`): its task,
outputs, export wrapper, formats and gate. Adding a model is one module and one
line of ``_REGISTRY``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from torch import nn

from liverrt.artifacts.checkpoint import read_checkpoint
from liverrt.data.preprocess import PreprocessSpec
from liverrt.errors import ArtifactError, InputError
from liverrt.models.base import GATES, LiverrtModel
from liverrt.models.dncnn_sr import DnCNNSR, dncnn_sr
from liverrt.models.maskrcnn import LiverMaskRCNN, maskrcnn_r101_fpn
from liverrt.models.unet import UNet, unet_paper

#: every network, one line each: its class (which describes it, see LiverrtModel) and its named builders
_REGISTRY: tuple[tuple[type[LiverrtModel], dict[str, Callable[..., nn.Module]]], ...] = (
    (UNet, {"unet_paper": unet_paper}),
    (LiverMaskRCNN, {"maskrcnn_r101_fpn": maskrcnn_r101_fpn}),
    (DnCNNSR, {"dncnn_sr": dncnn_sr}),
)
_BUILDERS: dict[str, Callable[..., nn.Module]] = {name: b for _, builders in _REGISTRY for name, b in builders.items()}
#: model kind (what a checkpoint says it holds) -> class that rebuilds it from its config
_KINDS: dict[str, type[LiverrtModel]] = {cls.kind: cls for cls, _ in _REGISTRY}


def names() -> list[str]:
    return sorted(_BUILDERS)


def kinds() -> list[str]:
    return sorted(_KINDS)


#: what each task's artifacts are for (the commands that take them)
TASKS = {"segmentation": "a liver segmentation model (U-Net or Mask R-CNN)",
         "denoising": "a DnCNN-SR denoising model"}


def model_class(kind: str) -> type[LiverrtModel]:
    """The class of a ``kind`` model: what export, the gate, the bench and the engines ask instead of the kind."""
    try:
        return _KINDS[kind]
    except KeyError:
        raise ArtifactError(f"Model kind {kind!r} is unknown; expected one of {kinds()}.") from None


def task_of(kind: str) -> str:
    """``segmentation`` or ``denoising``: what a model of ``kind`` is used for (its class says so)."""
    return model_class(kind).task


def graph_outputs(kind: str) -> tuple[str, ...]:
    """Output names of a one-graph ONNX export of a ``kind`` model (what its class declares)."""
    return tuple(model_class(kind).graph_output_names)


def build(name: str, **kwargs) -> nn.Module:
    """Build a registered model; ``None`` arguments keep the builder's defaults."""
    try:
        builder = _BUILDERS[name]
    except KeyError:
        raise InputError(f"Unknown model {name!r}; expected one of {names()}.") from None
    return builder(**{k: v for k, v in kwargs.items() if v is not None})


def from_config(kind: str, config: dict) -> nn.Module:
    """Rebuild a model of ``kind`` from the ``config`` dict stored in a checkpoint."""
    try:
        cls = _KINDS[kind]
    except KeyError:
        raise ArtifactError(f"Checkpoint holds a model of kind {kind!r}; expected one of {kinds()}.") from None
    if not isinstance(config, dict):
        raise ArtifactError(f"Checkpoint config for {kind!r}: got {type(config).__name__}, expected a dict of "
                            "builder arguments.")
    try:
        return cls(**config)
    except (TypeError, ValueError, AttributeError, KeyError) as exc:  # a config edited by hand
        shown = repr(config) if len(repr(config)) <= 160 else repr(config)[:157] + "..."
        raise ArtifactError(f"Checkpoint config for {kind!r} does not fit the model ({type(exc).__name__}: {exc}); "
                            f"got {shown}, expected the builder arguments of {cls.__name__}.") from exc


def load_model(path: Path, *, expect_kind: str | None = None) -> tuple[nn.Module, PreprocessSpec, dict]:
    """Rebuild a checkpoint's model in eval mode; returns ``(model, spec, checkpoint dict)``."""
    ckpt = read_checkpoint(path, expect_kind=expect_kind)
    model = from_config(ckpt["kind"], ckpt["model_config"])
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as exc:
        first = (str(exc).strip().splitlines() or [""])[0]
        raise ArtifactError(f"{path}: weights do not match the stored model config ({first[:200]}); expected "
                            "the checkpoint written with them.") from exc
    model.eval()
    return model, PreprocessSpec.from_dict(ckpt["preprocess"]), ckpt


__all__ = ["GATES", "TASKS", "DnCNNSR", "LiverMaskRCNN", "LiverrtModel", "UNet", "build", "dncnn_sr", "from_config",
           "graph_outputs", "kinds", "load_model", "maskrcnn_r101_fpn", "model_class", "names", "task_of",
           "unet_paper"]
