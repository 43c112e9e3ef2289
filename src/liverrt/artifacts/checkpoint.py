"""Checkpoints: weights + model config + PreprocessSpec + metrics, loaded safely.

A checkpoint is a plain dict of tensors, strings and numbers saved with
``torch.save`` and read with ``torch.load(..., weights_only=True)``; nothing a
user hands us is ever unpickled.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Sequence
from pathlib import Path

import torch

import liverrt
from liverrt.artifacts import metadata
from liverrt.atomic import atomic_path
from liverrt.data.preprocess import PreprocessSpec
from liverrt.errors import ArtifactError, InputError

FORMAT = "liverrt.checkpoint"
FORMAT_VERSION = 1


def save_checkpoint(
    path: Path,
    model: torch.nn.Module,
    *,
    model_name: str,
    spec: PreprocessSpec,
    metrics: dict | None = None,
    split: dict | None = None,
    train_config: dict | None = None,
    extra: dict | None = None,
) -> Path:
    """Write a checkpoint atomically (temp file + rename)."""
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "liverrt_version": liverrt.__version__,
        "torch_version": str(torch.__version__),
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "kind": model.kind,
        "model_name": model_name,
        "model_config": dict(model.config),
        "state_dict": state,
        "preprocess": spec.to_dict(),
        "metrics": dict(metrics or {}),
        "split": dict(split or {}),
        "train_config": dict(train_config or {}),
        **(extra or {}),
    }
    with atomic_path(Path(path), suffix=".pt") as tmp:
        torch.save(payload, tmp)
    return Path(path)


def read_checkpoint(path: Path, *, expect_kind: str | None = None) -> dict:
    """Read and validate a checkpoint dict (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"Checkpoint {path} does not exist; expected a .pt file written by `liverrt train`.")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ArtifactError(
            f"Cannot load {path} as a liverrt checkpoint ({first[:160]}); expected a .pt file written by "
            "`liverrt train` (loaded with weights_only=True, so pickled objects are refused)."
        ) from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ArtifactError(f"{path} is not a liverrt checkpoint (no '{FORMAT}' marker); expected a file from `liverrt train`.")
    version = ckpt.get("format_version", 0)
    if not isinstance(version, int) or isinstance(version, bool):
        raise ArtifactError(f"{path}: damaged liverrt metadata, field format_version: got {version!r}, expected an "
                            f"integer; expected a checkpoint written by `liverrt train`.")
    if version > FORMAT_VERSION:
        raise ArtifactError(
            f"{path} has checkpoint format {version}, newer than this liverrt reads ({FORMAT_VERSION}); upgrade liverrt."
        )
    meta = metadata.from_checkpoint(ckpt, source=str(path))  # kind, config, PreprocessSpec, threshold: one schema
    if not isinstance(ckpt.get("state_dict"), dict):
        raise ArtifactError(f"{path}: damaged checkpoint, field state_dict: got {type(ckpt.get('state_dict')).__name__}, "
                            "expected the model's weights; expected a checkpoint written by `liverrt train`.")
    if expect_kind is not None and meta.kind != expect_kind:
        raise ArtifactError(f"{path} holds a {meta.kind!r} model; expected a {expect_kind!r} checkpoint.")
    return ckpt


def average_checkpoints(paths: Sequence[Path], out: Path) -> Path:
    """Write the uniform average of the weights of ``paths`` to ``out`` (a "model soup", Wortsman et al.,
    ICML 2022): runs fine-tuned from one starting point, e.g. with other seeds, averaged into one network
    that costs no more to run than each of them.

    Every checkpoint must hold the same network (kind, model options, weight names and shapes) and the
    same PreprocessSpec. Floating-point weights and buffers (BatchNorm statistics too) are averaged in
    float64; integer buffers are the first checkpoint's. ``out`` keeps the first checkpoint's metadata
    without its training state, no metrics (the average was not validated) and ``averaged_from``: each
    source's path, creation time and metrics. Averaging runs from different starting points gives a
    network that works like none of them; this function cannot tell, so score the result.
    """
    paths = [Path(p) for p in paths]
    if len(paths) < 2:
        raise InputError(f"averaging needs at least two checkpoints; got {len(paths)}.")
    first = read_checkpoint(paths[0])
    shapes = {k: tuple(v.shape) for k, v in first["state_dict"].items()}
    total = {k: v.double() if v.is_floating_point() else v for k, v in first["state_dict"].items()}
    averaged_from = [_source(paths[0], first)]
    for path in paths[1:]:
        ckpt = read_checkpoint(path)
        for field in ("kind", "model_config", "preprocess"):
            if ckpt.get(field) != first.get(field):
                raise InputError(f"{path}: its {field} ({ckpt.get(field)!r}) differs from {paths[0]}'s "
                                 f"({first.get(field)!r}); expected checkpoints of one network and preprocessing.")
        theirs = {k: tuple(v.shape) for k, v in ckpt["state_dict"].items()}
        if theirs != shapes:
            diff = sorted(set(theirs.items()) ^ set(shapes.items()))[:1]
            raise InputError(f"{path}: its weights differ in names or shapes from {paths[0]}'s (e.g. {diff[0][0]}); "
                             "expected checkpoints of one network.")
        for k, v in ckpt["state_dict"].items():
            if v.is_floating_point():
                total[k] += v.double()
        averaged_from.append(_source(path, ckpt))
    state = {k: (v / len(paths)).to(first["state_dict"][k].dtype) if v.is_floating_point() else v.clone()
             for k, v in total.items()}
    payload = {k: v for k, v in first.items() if k != "train_state"}
    payload.update(
        liverrt_version=liverrt.__version__, torch_version=str(torch.__version__),
        created=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"), state_dict=state, metrics={},
        averaged_from=averaged_from)
    with atomic_path(Path(out), suffix=".pt") as tmp:
        torch.save(payload, tmp)
    return Path(out)


def _source(path: Path, ckpt: dict) -> dict:
    """What an averaged checkpoint records of one of its sources (not its weights: those are summed and dropped)."""
    return {"path": str(path), "created": ckpt.get("created"), "metrics": ckpt.get("metrics", {})}
