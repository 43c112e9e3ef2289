"""Artifacts: the files liverrt writes and reads back, and what they say about themselves.

One layer that ``export``, ``runtime``, ``training`` and ``models`` all use and that imports none
of them (checked by the import-linter contract in ``pyproject.toml``):

* :mod:`.metadata` - the one validated schema (kind, model config, PreprocessSpec, threshold,
  precision, versions, input shape) every storage format is mapped onto;
* :mod:`.checkpoint` - ``.pt`` checkpoints, saved atomically, loaded with ``weights_only=True``;
* :mod:`.info` - :func:`artifact_info`: the validated metadata of a checkpoint, an ONNX file or a
  TensorRT plan, without building a model or a session;
* :mod:`.plan` - a TensorRT plan's sidecar JSON;
* :mod:`.split` - :class:`SplitArtifact`, the split Mask R-CNN's three graphs as one artifact.

Building a model from a checkpoint is :func:`liverrt.models.load_model`; checking that an artifact
is of the kind a command needs is :func:`liverrt.runtime.require_task`.
"""

from liverrt.artifacts.checkpoint import average_checkpoints, read_checkpoint, save_checkpoint
from liverrt.artifacts.info import ONNX_FORMAT, ArtifactInfo, artifact_info, onnx_metadata
from liverrt.artifacts.metadata import PRECISIONS, ArtifactMetadata
from liverrt.artifacts.plan import SIDECAR_FORMAT, plan_info, read_sidecar, sidecar_path
from liverrt.artifacts.split import SplitArtifact

__all__ = ["ONNX_FORMAT", "PRECISIONS", "SIDECAR_FORMAT", "ArtifactInfo", "ArtifactMetadata", "artifact_info",
           "average_checkpoints",
           "onnx_metadata", "plan_info", "read_checkpoint", "read_sidecar", "save_checkpoint", "sidecar_path",
           "SplitArtifact"]
