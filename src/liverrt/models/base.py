"""What every liverrt network says about itself (smp's ``SegmentationModel``, torchvision's composition).

Export, the verification gate, the bench and the engines look a model kind up
in the registry (:func:`liverrt.models.model_class`) and read these class
attributes instead of branching on the kind string. A new network subclasses
:class:`LiverrtModel`, fills them in, and adds one line to the registry;
``tests/models/test_registry.py`` then checks its description.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import torch
from torch import nn

from liverrt.artifacts.metadata import PRECISIONS

#: how an exported artifact is compared with its PyTorch source: thresholded masks (ΔDice) or images (PSNR)
GATES = ("masks", "psnr")


class LiverrtModel(nn.Module):
    """Base of the registered networks: capability flags on the class, ``config`` and ``predict`` on the instance.

    * ``kind``: what a checkpoint says it holds (the registry key); ``title``: the name reports give it.
    * ``task``: a key of :data:`liverrt.models.TASKS` (``segmentation`` | ``denoising``).
    * ``gate``: one of :data:`GATES`, how the gate and the export's parity check compare an artifact.
    * ``output_names``: the keys of :meth:`predict`, which every engine returns too;
      ``output_descriptions``: one line per output, written into the ONNX metadata (``liverrt.outputs``).
    * ``graph_output_names``: the outputs of the one-graph ONNX export, the graph :meth:`onnx_wrapper` traces.
    * ``dynamic_spatial``: that graph takes any H and W (multiples of ``input_divisor``), not only the
      PreprocessSpec size.
    * ``split_export``: the ONNX export is the split artifact (:class:`liverrt.artifacts.SplitArtifact`:
      graphs with runtime steps between them); the one graph of :meth:`onnx_wrapper` is exported on request
      only and, holding NMS, runs image by image.
    * ``precisions``; ``unsupported_formats``: export format -> why this model has none.
    * ``default_calib_method``: the INT8 activation-range method export uses unless told otherwise.
    * ``qat_supported``: ``liverrt export --precision int8 --qat`` can fine-tune it
      (:mod:`liverrt.export.qat`: its ONNX graph of convolutions, Relu, MaxPool and Concat ends in a sigmoid
      head whose logits train with Dice + BCE against liver masks).
    """

    kind: ClassVar[str]
    title: ClassVar[str]
    task: ClassVar[str]
    gate: ClassVar[str] = "masks"
    output_names: ClassVar[tuple[str, ...]]
    output_descriptions: ClassVar[Mapping[str, str]]
    graph_output_names: ClassVar[tuple[str, ...]]
    onnx_exportable: ClassVar[bool] = True
    dynamic_spatial: ClassVar[bool] = False
    split_export: ClassVar[bool] = False
    precisions: ClassVar[tuple[str, ...]] = PRECISIONS
    unsupported_formats: ClassVar[Mapping[str, str]] = {}
    default_calib_method: ClassVar[str] = "search"
    qat_supported: ClassVar[bool] = False

    #: the builder arguments that rebuild this model (stored in checkpoints)
    config: dict
    #: input H and W must be multiples of this
    input_divisor: int = 1

    def output(self, raw: torch.Tensor) -> torch.Tensor:
        """A one-output network's last step on :meth:`forward`'s result (the U-Net's sigmoid, DnCNN-SR's
        clamp): :meth:`predict` and the exported graph both end with it."""
        raise NotImplementedError

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``(N, 1, H, W)`` float32 in [0, 1] -> ``{name: tensor}`` for every name of ``output_names``
        (here: the one output, :meth:`output` of :meth:`forward`; several outputs override this)."""
        (name,) = self.output_names
        return {name: self.output(self.forward(x))}

    def onnx_wrapper(self) -> nn.Module:
        """The module the one-graph ONNX export traces: ``image`` -> the ``graph_output_names`` tensors."""
        return _OneOutputGraph(self)


class _OneOutputGraph(nn.Module):
    """The graph a one-output network exports: ``image`` -> ``model.output(model(image))``, as :meth:`predict`."""

    def __init__(self, model: LiverrtModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model.output(self.model(image))
