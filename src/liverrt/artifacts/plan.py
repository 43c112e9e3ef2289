"""A TensorRT plan's sidecar JSON: what the plan says about itself, readable without TensorRT.

``liverrt export --format tensorrt`` writes ``<plan>.json`` next to every ``.plan``: the engine
key (TensorRT version, GPU, compute capability, profile, precision), the model, its
PreprocessSpec and threshold. :func:`plan_info` validates it with the schema every artifact
shares (:mod:`liverrt.artifacts.metadata`).
"""

from __future__ import annotations

import json
from pathlib import Path

from liverrt.artifacts.metadata import ArtifactInfo, from_sidecar
from liverrt.errors import ArtifactError

SIDECAR_FORMAT = "liverrt.trt/1"


def sidecar_path(plan: Path) -> Path:
    return Path(plan).with_suffix(".json")


def read_sidecar(plan: Path) -> dict:
    """The sidecar JSON of ``plan``; :class:`ArtifactError` when it is missing or not liverrt's."""
    side = sidecar_path(plan)
    if not side.is_file():
        raise ArtifactError(f"TensorRT plan {plan} has no sidecar {side.name}; expected the .json written next to "
                            "it by liverrt (it records the TensorRT version, GPU and PreprocessSpec).")
    try:
        data = json.loads(side.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{side}: unreadable sidecar ({exc}); rebuild the plan from its ONNX file.") from None
    if not isinstance(data, dict) or data.get("format") != SIDECAR_FORMAT:
        got = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise ArtifactError(f"{side}: format {got!r}; expected a liverrt TensorRT sidecar ({SIDECAR_FORMAT}).")
    return data


def plan_info(plan: Path) -> ArtifactInfo:
    """ArtifactInfo of a ``.plan`` from its sidecar (no TensorRT needed)."""
    data = read_sidecar(plan)
    return ArtifactInfo.from_metadata(plan, "tensorrt", from_sidecar(data, source=str(sidecar_path(plan))))
