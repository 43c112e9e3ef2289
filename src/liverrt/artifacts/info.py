"""What every liverrt artifact says about itself (model, PreprocessSpec, threshold).

Checkpoints carry it as dict entries, ONNX files as ``metadata_props`` under
the ``liverrt.`` prefix; :func:`artifact_info` reads either without building
the model or an inference session, and validates it against one schema
(:mod:`liverrt.artifacts.metadata`).
"""

from __future__ import annotations

from pathlib import Path

import onnx

from liverrt.artifacts import metadata
from liverrt.artifacts.checkpoint import read_checkpoint
from liverrt.artifacts.metadata import ArtifactInfo
from liverrt.artifacts.plan import plan_info
from liverrt.errors import ArtifactError, InputError

ONNX_FORMAT = "liverrt.onnx/1"
#: metadata keys of a split Mask R-CNN export (:mod:`liverrt.artifacts.split`): the manifest on its
#: rpn graph, and each of its graphs' part
SPLIT_KEY = "liverrt.split"
PART_KEY = "liverrt.part"


def _onnx_header(path: Path) -> tuple[dict[str, str], tuple[int | str, ...] | None]:
    """The ``metadata_props`` and first input shape of an ONNX file (onnx parses the whole protobuf,
    embedded weights included, to get them: read once per use, see :attr:`ArtifactInfo.props`)."""
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ArtifactError(f"Cannot read {path} as ONNX ({first[:160]}); expected an .onnx file from "
                            "`liverrt export`.") from exc
    return {p.key: p.value for p in model.metadata_props}, _input_shape(model)


def onnx_metadata(path: Path) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file as a dict."""
    return _onnx_header(path)[0]


def _input_shape(model: onnx.ModelProto) -> tuple[int | str, ...] | None:
    """The first graph input's shape: sizes, or the names of dynamic axes."""
    if not model.graph.input:
        return None
    dims = model.graph.input[0].type.tensor_type.shape.dim
    return tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in dims)


def artifact_info(path: Path) -> ArtifactInfo:
    """Read and validate the liverrt metadata of a checkpoint (.pt), an ONNX file or a TensorRT plan.

    Every field is checked against one schema (:mod:`liverrt.artifacts.metadata`); a damaged or
    hand-edited artifact raises :class:`ArtifactError` naming the field (exit code 2).
    """
    path = Path(path)
    if path.is_dir():
        raise InputError(f"Model {path} is a folder; expected a model file: a .pt checkpoint, an .onnx file or a "
                         "TensorRT .plan (a Triton repository is served by tritonserver, not run by liverrt).")
    if not path.is_file():
        raise InputError(f"Model {path} does not exist; expected a .pt checkpoint, an .onnx file or a TensorRT .plan.")
    if path.suffix.lower() == ".plan":
        return plan_info(path)
    if path.suffix.lower() == ".onnx":
        props, input_shape = _onnx_header(path)
        if props.get("liverrt.format") != ONNX_FORMAT:
            raise ArtifactError(
                f"{path} has no liverrt metadata (metadata_props 'liverrt.format' = {props.get('liverrt.format')!r}); "
                f"expected an ONNX file written by `liverrt export` ({ONNX_FORMAT})."
            )
        meta = metadata.from_props(props, source=str(path), input_shape=input_shape)
        if not {SPLIT_KEY, PART_KEY} & set(props):  # split Mask R-CNN graphs: padded image, features
            metadata.check_input_shape(meta, source=str(path))
        return ArtifactInfo.from_metadata(path, "onnx", meta, props=props)
    ckpt = read_checkpoint(path)
    return ArtifactInfo.from_metadata(path, "checkpoint", metadata.from_checkpoint(ckpt, source=str(path)))
