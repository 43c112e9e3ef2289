"""What ``liverrt bench`` times, and what it can do with it.

Without a model named, the bench times the bundled default model (what ``liverrt infer`` and
``liverrt.segment`` use). A bundled model ships as an fp32 ONNX only: onnxruntime runs it as it is
installed, and its fp16/int8 variants are built from that graph. The torch row and the verification
gate need the PyTorch checkpoint the ONNX was exported from; a clone of the repository keeps it where
the model card says (``models/<name>.pt``), and it is used when its sha256 is the one the ONNX
records. An installed package has no checkpoint: the torch row is skipped and the variants are not
gated, each with its reason in the report.

``--model`` names another bundled model, a checkpoint (exported to ONNX here) or an ONNX file (no
checkpoint: no torch row, no gate). :class:`RandomWeights` times a registered network with seeded
random weights (the study's U-Net by default, or a kind with no bundled weights); it is timed, never
gated: its masks mean nothing, so neither would the gate's verdict.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from liverrt.artifacts import artifact_info, onnx_metadata
from liverrt.artifacts.checkpoint import save_checkpoint
from liverrt.data.preprocess import PreprocessSpec
from liverrt.errors import InputError
from liverrt.export.onnx import export_onnx
from liverrt.hashing import sha256_file
from liverrt.models import build
from liverrt.models.bundled import DEFAULT, BundledModel, resolve_model


@dataclass(frozen=True)
class RandomWeights:
    """Time a registered network (``liverrt.models.names()``) with seeded random weights at ``size``²."""

    network: str = "unet_paper"
    size: int = 512
    seed: int = 0


@dataclass(frozen=True)
class Subject:
    """The network the engines section times: its fp32 ONNX, and its checkpoint when there is one."""

    name: str  # what the report calls it
    origin: str  # where it came from, one line
    onnx: Path  # the fp32 graph onnxruntime runs and fp16/int8 are built from
    checkpoint: Path | None  # torch's row and the gate's reference
    no_checkpoint: str | None = None  # why there is none (the torch row and the gate say it)
    random_weights: bool = False
    export_seconds: float | None = None  # when the ONNX was exported here

    def describe(self) -> dict:
        """The JSON-safe fields ``results.json`` keeps."""
        return {"name": self.name, "origin": self.origin, "onnx": str(self.onnx),
                "checkpoint": None if self.checkpoint is None else str(self.checkpoint),
                "no_checkpoint": self.no_checkpoint, "random_weights": self.random_weights}


def prepare_subject(work: Path, *, model: str | Path | None = None, random_weights: RandomWeights | None = None,
                    on_step: Callable[[str], None] | None = None) -> Subject:
    """Resolve what to time: ``random_weights``, else ``model`` (a file or a bundled model's name; default:
    the bundled default model). Checkpoints are exported to ONNX in ``work``."""
    step = on_step or (lambda _: None)
    if random_weights is not None:
        if model is not None:
            raise InputError(f"Got both a model ({model}) and random weights; expected one of them.")
        return _random_subject(work, random_weights, step)
    path, bundled = resolve_model(model)
    if bundled is not None:
        return _bundled_subject(bundled)
    fmt = artifact_info(path).format
    if fmt == "checkpoint":
        return _exported(work, path, path.name, f"checkpoint {path}, exported to ONNX here", step)
    if fmt == "onnx":
        return Subject(path.name, f"ONNX file {path}", path, None,
                       "an ONNX file was given; pass the checkpoint (.pt) it came from to time torch and gate "
                       "the variants")
    raise InputError(f"{path} is a {fmt} artifact; expected a checkpoint (.pt), an ONNX file or a bundled "
                     "model's name (`liverrt models`).")


def _exported(work: Path, checkpoint: Path, name: str, origin: str, step, random_weights: bool = False) -> Subject:
    step(f"exporting {name} to ONNX")
    t0 = time.perf_counter()
    export = export_onnx(checkpoint, work / f"{artifact_info(checkpoint).kind}.onnx")
    return Subject(name, origin, export.path, checkpoint, random_weights=random_weights,
                   export_seconds=time.perf_counter() - t0)


def _random_subject(work: Path, rw: RandomWeights, step) -> Subject:
    torch.manual_seed(rw.seed)
    net = build(rw.network).eval()
    params = sum(p.numel() for p in net.parameters())
    ckpt = save_checkpoint(work / f"{rw.network}_random.pt", net, model_name=rw.network,
                           spec=PreprocessSpec(size=rw.size))
    return _exported(work, ckpt, f"{rw.network} ({params:,} parameters, seeded random weights)",
                     f"built here with torch.manual_seed({rw.seed}) at {rw.size}x{rw.size}", step,
                     random_weights=True)


def _bundled_subject(bundled: BundledModel) -> Subject:
    which = "the bundled default model" if bundled.name == DEFAULT else "a bundled model"
    checkpoint, why_not = bundled_checkpoint(bundled)
    origin = f"{which}, {bundled.path}"
    if checkpoint is not None:
        origin += f"; torch and the gate use the checkpoint it was exported from, {checkpoint} (sha256 matches)"
    return Subject(bundled.name, origin, bundled.path, checkpoint, why_not)


def bundled_checkpoint(bundled: BundledModel) -> tuple[Path | None, str | None]:
    """The checkpoint ``bundled`` was exported from, where a clone of the repository keeps it (the card's
    ``checkpoint``, beside ``src/``, or under the working folder), if its sha256 is the one the ONNX records;
    else ``None`` and why."""
    rel = bundled.card.get("checkpoint")
    recorded = onnx_metadata(bundled.path).get("liverrt.checkpoint_sha256")
    if not rel or not recorded:
        return None, f"{bundled.name} names no source checkpoint; it ships as ONNX only"
    repo = bundled.path.resolve().parents[4]  # src/liverrt/models/bundled/<file> in a clone
    candidates = list(dict.fromkeys(p.resolve() for p in (repo / rel, Path.cwd() / rel) if p.is_file()))
    for path in candidates:
        if sha256_file(path) == recorded:
            return path, None
    if candidates:
        return None, (f"{candidates[0]} is not the checkpoint {bundled.name} was exported from (its sha256 "
                      f"differs from the ONNX's {recorded[:12]}…)")
    return None, (f"the checkpoint {bundled.name} was exported from ({rel}) is kept in the repository, not in "
                  "the installed package")
