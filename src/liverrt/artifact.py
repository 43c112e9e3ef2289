"""What every liverrt artifact says about itself (model, PreprocessSpec, threshold).

Checkpoints carry it as dict entries, ONNX files as ``metadata_props`` under
the ``liverrt.`` prefix; :func:`artifact_info` reads either without building
the model or an inference session.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from liverrt.data.preprocess import PreprocessSpec
from liverrt.errors import ArtifactError, InputError

ONNX_FORMAT = "liverrt.onnx/1"


@dataclass(frozen=True)
class ArtifactInfo:
    path: Path
    format: str  # "checkpoint" | "onnx" | "tensorrt"
    kind: str  # model kind: "unet", ...
    model_name: str
    model_config: dict
    spec: PreprocessSpec
    threshold: float = 0.5
    precision: str = "fp32"
    metrics: dict = field(default_factory=dict)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def onnx_metadata(path: Path) -> dict[str, str]:
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise ArtifactError(f"Cannot read {path} as ONNX ({str(exc)[:160]}); expected an .onnx file from `liverrt export`.") from exc
    return {p.key: p.value for p in model.metadata_props}


def artifact_info(path: Path) -> ArtifactInfo:
    """Read the liverrt metadata of a checkpoint (.pt) or an ONNX file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"Model {path} does not exist; expected a .pt checkpoint, an .onnx file or a TensorRT .plan.")
    if path.suffix.lower() == ".plan":
        from liverrt.export.tensorrt import plan_info

        return plan_info(path)
    if path.suffix.lower() == ".onnx":
        meta = onnx_metadata(path)
        if meta.get("liverrt.format") != ONNX_FORMAT:
            raise ArtifactError(
                f"{path} has no liverrt metadata (metadata_props 'liverrt.format' = {meta.get('liverrt.format')!r}); "
                f"expected an ONNX file written by `liverrt export` ({ONNX_FORMAT})."
            )
        try:
            model = json.loads(meta["liverrt.model"])
            spec = PreprocessSpec.from_json(meta["liverrt.preprocess"])
            metrics = json.loads(meta.get("liverrt.metrics", "{}"))
        except (KeyError, json.JSONDecodeError) as exc:
            raise ArtifactError(f"{path}: damaged liverrt metadata ({exc}); re-export the model.") from exc
        return ArtifactInfo(
            path=path, format="onnx", kind=model["kind"], model_name=model.get("name", model["kind"]),
            model_config=model.get("config", {}), spec=spec,
            threshold=float(meta.get("liverrt.threshold", 0.5)),
            precision=meta.get("liverrt.precision", "fp32"), metrics=metrics,
        )
    from liverrt.training.checkpoint import read_checkpoint

    ckpt = read_checkpoint(path)
    return ArtifactInfo(
        path=path, format="checkpoint", kind=ckpt["kind"], model_name=ckpt.get("model_name", ckpt["kind"]),
        model_config=ckpt["model_config"], spec=PreprocessSpec.from_dict(ckpt["preprocess"]),
        threshold=float(ckpt["model_config"].get("mask_threshold",  # Mask R-CNN: its mask threshold
                                                 ckpt.get("train_config", {}).get("threshold", 0.5))),
        metrics=ckpt.get("metrics", {}),
    )
