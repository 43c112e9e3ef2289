"""One validated schema for what every liverrt artifact says about itself.

A checkpoint (dict entries), an ONNX file (``metadata_props`` under the
``liverrt.`` prefix), a TensorRT plan's sidecar JSON and a Triton model's
``config.pbtxt`` parameters all carry the same facts: the model's kind, name
and config, its :class:`~liverrt.data.preprocess.PreprocessSpec`, the mask
threshold, the precision, validation metrics and the versions that wrote it.
Each storage format is mapped onto :class:`ArtifactMetadata`, validated with
pydantic when the artifact is opened, so a damaged or hand-edited artifact is
refused with one line naming the field, the value found and what was expected,
instead of a ``KeyError`` deep in the runtime.

pydantic (v2) was chosen over msgspec and hand-written checks: its strict mode
tells ``"512"`` from ``512`` and ``True`` from ``1``, it reports the path of
the failing field, and it is a small, well-kept wheel that the stack's other
tools already use.
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator

from liverrt.data.preprocess import PreprocessSpec
from liverrt.errors import ArtifactError, LiverrtError

#: numeric precision an artifact's graph computes in
PRECISIONS = ("fp32", "fp16", "int8")

_STRICT = ConfigDict(strict=True, extra="forbid", frozen=True)


def _spec_fields() -> type[BaseModel]:
    """The PreprocessSpec's fields as a strict pydantic model (derived from the dataclass, not copied)."""
    hints = typing.get_type_hints(PreprocessSpec)
    fields = {f.name: (hints[f.name], f.default) for f in dataclasses.fields(PreprocessSpec)}
    return create_model("preprocess", __config__=_STRICT, **fields)


_PreprocessFields = _spec_fields()


class ArtifactMetadata(BaseModel):
    """What an artifact says about itself, validated (field names as in ONNX ``liverrt.model``)."""

    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)

    kind: str
    name: str
    config: dict[str, Any]
    preprocess: _PreprocessFields  # type: ignore[valid-type]
    # ONNX metadata and Triton parameters store numbers as text: parsed here (lax), range-checked
    threshold: Annotated[float, Field(strict=False, gt=0.0, lt=1.0)] = 0.5
    precision: Literal[PRECISIONS] = "fp32"  # the tuple's values
    metrics: dict[str, Any] = Field(default_factory=dict)
    versions: dict[str, str | None] = Field(default_factory=dict)
    input_shape: tuple[int | str, ...] | None = None

    @field_validator("kind", "name")
    @classmethod
    def _named(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("a non-empty name")
        return value

    @field_validator("threshold")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("a finite number")
        return value

    @property
    def spec(self) -> PreprocessSpec:
        return PreprocessSpec(**self.preprocess.model_dump())


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
    input_shape: tuple[int | str, ...] | None = None
    #: an ONNX file's raw ``metadata_props`` (the split manifest among them), so that whoever opens the
    #: artifact next does not parse the file again; empty for other formats
    props: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_metadata(cls, path: Path, fmt: str, meta: ArtifactMetadata, *,
                      props: Mapping[str, str] | None = None) -> ArtifactInfo:
        return cls(path=Path(path), format=fmt, kind=meta.kind, model_name=meta.name, model_config=dict(meta.config),
                   spec=meta.spec, threshold=float(meta.threshold), precision=meta.precision,
                   metrics=dict(meta.metrics), input_shape=meta.input_shape, props=dict(props or {}))



#: where each field lives in each storage format, for error messages
FIELD_NAMES = {
    "checkpoint": {"kind": "kind", "name": "model_name", "config": "model_config", "preprocess": "preprocess",
                   "threshold": "model_config.mask_threshold / train_config.threshold", "metrics": "metrics"},
    "onnx": {"kind": "liverrt.model.kind", "name": "liverrt.model.name", "config": "liverrt.model.config",
             "preprocess": "liverrt.preprocess", "threshold": "liverrt.threshold", "precision": "liverrt.precision",
             "metrics": "liverrt.metrics", "input_shape": "graph input"},
    "tensorrt": {"kind": "model.kind", "name": "model.name", "config": "model.config", "preprocess": "preprocess",
                 "threshold": "threshold", "precision": "precision", "metrics": "metrics"},
}
FIELD_NAMES["triton"] = {**FIELD_NAMES["onnx"], "input_shape": "input dims"}


def _expected(error: dict) -> str:
    msg = str(error.get("msg", "")).removeprefix("Value error, ")
    if error.get("type") == "missing":
        return "the field to be present"
    if error.get("type") == "extra_forbidden":
        return "no such field"
    if error.get("type") == "literal_error":
        return f"one of {error.get('ctx', {}).get('expected', msg)}"
    return msg.removeprefix("Input should be ").rstrip(".")


def _describe(error: dict, fmt: str) -> str:
    loc = [str(p) for p in error.get("loc", ())]
    names = FIELD_NAMES.get(fmt, {})
    field = ".".join([names.get(loc[0], loc[0]), *loc[1:]]) if loc else "(whole metadata)"
    got = "nothing" if error.get("type") == "missing" else repr(error.get("input"))
    if len(got) > 60:
        got = got[:57] + "..."
    return f"field {field}: got {got}, expected {_expected(error)}"


def validate(raw: Mapping[str, Any], *, source: str, fmt: str, hint: str) -> ArtifactMetadata:
    """Validate ``raw`` (the fields of :class:`ArtifactMetadata`); ``source`` names the artifact in errors.

    ``fmt`` (checkpoint | onnx | tensorrt | triton) picks how fields are named in the message;
    ``hint`` says what to do about it (re-export, retrain).
    """
    try:
        meta = ArtifactMetadata.model_validate(dict(raw))
        meta.spec  # the PreprocessSpec's own range checks (size a multiple of 16, window > 0)  # noqa: B018
    except ValidationError as exc:
        errors = exc.errors()
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise ArtifactError(f"{source}: damaged liverrt metadata, {_describe(errors[0], fmt)}{more}; {hint}") from None
    except LiverrtError as exc:
        raise ArtifactError(f"{source}: damaged liverrt metadata, {exc} {hint}".rstrip()) from None
    return meta


def _json_field(props: Mapping[str, str], key: str, source: str, hint: str, default: str | None = None) -> Any:
    text = props.get(key, default)
    if text is None:
        raise ArtifactError(f"{source}: damaged liverrt metadata, field {key}: got nothing, expected JSON; {hint}")
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        shown = text if len(text) <= 60 else text[:57] + "..."
        raise ArtifactError(f"{source}: damaged liverrt metadata, field {key}: got {shown!r}, expected JSON; "
                            f"{hint}") from None


def from_props(props: Mapping[str, str], *, source: str, fmt: str = "onnx",
               input_shape: tuple[int | str, ...] | None = None) -> ArtifactMetadata:
    """Validate ``liverrt.*`` key/value text pairs: ONNX ``metadata_props`` or Triton config parameters."""
    hint = ("re-export the model with `liverrt export`." if fmt == "onnx"
            else "re-write the repository with `liverrt export --format triton`.")
    raw = _model_fields(_json_field(props, "liverrt.model", source, hint), "liverrt.model", source, hint)
    raw["preprocess"] = _json_field(props, "liverrt.preprocess", source, hint)
    raw["metrics"] = _json_field(props, "liverrt.metrics", source, hint, default="{}")
    for key in ("threshold", "precision"):
        if f"liverrt.{key}" in props:
            raw[key] = props[f"liverrt.{key}"]
    raw["versions"] = {"liverrt": props.get("liverrt.version")}
    raw["input_shape"] = input_shape
    return validate(raw, source=source, fmt=fmt, hint=hint)


def from_checkpoint(ckpt: Mapping[str, Any], *, source: str) -> ArtifactMetadata:
    """Validate the metadata entries of a checkpoint dict (what ``liverrt train`` saves)."""
    raw: dict[str, Any] = {}
    for name, key in (("kind", "kind"), ("config", "model_config"), ("preprocess", "preprocess")):
        if key in ckpt:
            raw[name] = ckpt[key]
    if "kind" in ckpt:
        raw["name"] = ckpt.get("model_name", ckpt["kind"])
    config, train = ckpt.get("model_config"), ckpt.get("train_config")
    threshold = config.get("mask_threshold") if isinstance(config, dict) else None  # Mask R-CNN: its mask threshold
    if threshold is None and isinstance(train, dict):
        threshold = train.get("threshold")
    if threshold is not None:
        raw["threshold"] = threshold
    raw["metrics"] = ckpt.get("metrics", {})
    raw["versions"] = {"liverrt": _text(ckpt.get("liverrt_version")), "torch": _text(ckpt.get("torch_version"))}
    return validate(raw, source=source, fmt="checkpoint", hint="expected a checkpoint written by `liverrt train`.")


def from_sidecar(data: Mapping[str, Any], *, source: str) -> ArtifactMetadata:
    """Validate a TensorRT plan's sidecar JSON (what ``liverrt export --format tensorrt`` writes)."""
    hint = "rebuild the plan from its ONNX file."
    raw = _model_fields(data.get("model"), "model", source, hint)
    for key in ("preprocess", "threshold", "precision", "metrics"):
        if key in data:
            raw[key] = data[key]
    raw["versions"] = {"liverrt": _text(data.get("liverrt_version")), "tensorrt": _text(data.get("tensorrt_version"))}
    return validate(raw, source=source, fmt="tensorrt", hint=hint)


def _model_fields(model: Any, field: str, source: str, hint: str) -> dict[str, Any]:
    """``kind``, ``name`` and ``config`` from the ``{"kind", "name", "config"}`` object ONNX and sidecars store."""
    if not isinstance(model, dict):
        raise ArtifactError(f"{source}: damaged liverrt metadata, field {field}: got {model!r:.60}, expected an "
                            f"object with kind, name and config; {hint}")
    raw: dict[str, Any] = {k: model[k] for k in ("kind", "config") if k in model}
    if "kind" in model:
        raw["name"] = model.get("name", model["kind"])
    return raw


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def check_input_shape(meta: ArtifactMetadata, *, source: str) -> None:
    """The graph's spatial input size must be the PreprocessSpec's size where the graph fixes it."""
    shape = meta.input_shape
    if not shape or len(shape) != 4:
        return
    size = meta.spec.size
    fixed = [d for d in shape[2:] if isinstance(d, int) and d > 0]
    if fixed and any(d != size for d in fixed):
        dims = ", ".join(str(d) for d in shape)
        raise ArtifactError(f"{source}: liverrt.preprocess.size is {size} but the graph's input is ({dims}); "
                            "expected the same size: the metadata does not belong to this graph, re-export it.")


__all__ = ["PRECISIONS", "ArtifactInfo", "ArtifactMetadata", "check_input_shape", "from_checkpoint", "from_props", "from_sidecar",
           "validate"]
