"""The split Mask R-CNN export: three ONNX graphs that travel together, as one artifact.

``model.onnx`` (the backbone/FPN/RPN graph, ``liverrt.part`` = ``rpn``) is the file users name; its
``liverrt.split`` metadata names the RoI-head siblings ``model.box.onnx`` and ``model.mask.onnx``
and records their sha256, so a sibling from another export is refused instead of silently run.
:class:`SplitArtifact` owns that naming, the manifest and its check: export writes it, every engine
and the Triton writer read it, and a precision variant re-links its own siblings through it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import onnx

from liverrt.artifacts.info import PART_KEY, SPLIT_KEY, onnx_metadata
from liverrt.atomic import atomic_path
from liverrt.errors import ArtifactError
from liverrt.hashing import sha256_file

#: the graphs, in the order the pipeline runs them; the heads are the rpn graph's siblings
PARTS = ("rpn", "box", "mask")
HEADS = ("box", "mask")
#: what runs the graphs (recorded in the manifest)
RUNTIME = "liverrt.runtime.maskrcnn_split"


@dataclass(frozen=True)
class SplitArtifact:
    """A split Mask R-CNN export named by its rpn graph ``rpn`` (``<stem>.onnx``).

    ``heads``: the RoI-head files its manifest names (set by :meth:`open`, which checked them); a new
    artifact being written names them ``<stem>.box.onnx`` and ``<stem>.mask.onnx``.
    """

    rpn: Path
    heads: tuple[tuple[str, Path], ...] = ()

    @property
    def paths(self) -> dict[str, Path]:
        """``{"rpn", "box", "mask"}`` -> file."""
        rpn = Path(self.rpn)
        if self.heads:
            return {"rpn": rpn, **dict(self.heads)}
        stem = rpn.name[: -len(".onnx")] if rpn.name.lower().endswith(".onnx") else rpn.stem
        return {"rpn": rpn, **{part: rpn.with_name(f"{stem}.{part}.onnx") for part in HEADS}}

    def manifest(self, files: Mapping[str, Path] | None = None) -> str:
        """The ``liverrt.split`` value for this artifact; ``files``: where the heads are now (a temporary
        file while they are written), default their final paths."""
        files = files or self.paths
        return json.dumps({"parts": {part: self.paths[part].name for part in HEADS},
                           "sha256": {part: sha256_file(files[part]) for part in HEADS},
                           "runtime": RUNTIME}, sort_keys=True)

    @staticmethod
    def is_split(meta: Mapping[str, str]) -> bool:
        """Whether ONNX metadata ``meta`` is a split export's (its rpn graph or one of its heads)."""
        return SPLIT_KEY in meta or PART_KEY in meta

    @classmethod
    def open(cls, path: Path, meta: Mapping[str, str] | None = None) -> SplitArtifact | None:
        """The split artifact whose rpn graph is ``path``, its siblings checked; None for a one-graph ONNX."""
        meta = onnx_metadata(path) if meta is None else meta
        if SPLIT_KEY not in meta:
            return None
        try:
            split = json.loads(meta[SPLIT_KEY])
            names, hashes = split["parts"], split["sha256"]
            heads = {part: Path(path).with_name(names[part]) for part in HEADS}
            for part, p in heads.items():
                if not p.is_file():
                    raise ArtifactError(f"{path} is a split Mask R-CNN export; its {part} graph {p} is missing "
                                        "(keep the three .onnx files together).")
                if sha256_file(p) != hashes[part]:
                    raise ArtifactError(f"{p} is not the {part} graph exported with {path} (sha256 differs); "
                                        "re-export the model.")
        except (ValueError, KeyError, TypeError) as exc:
            raise ArtifactError(f"{path}: damaged liverrt metadata, field {SPLIT_KEY}: {exc!r:.80}; expected the "
                                "manifest `liverrt export` writes; re-export the model.") from None
        return cls(Path(path), tuple(heads.items()))

    def copy_heads_from(self, source: SplitArtifact) -> None:
        """Copy ``source``'s RoI-head graphs beside this rpn graph (a precision variant keeps fp32 heads)."""
        for part in HEADS:
            with atomic_path(self.paths[part], suffix=".onnx", protect=(source.paths[part],)) as tmp:
                tmp.write_bytes(source.paths[part].read_bytes())

    def relink(self, *, heads_precision: str = "fp32") -> None:
        """Point the rpn graph's manifest at this artifact's own siblings (names and sha256)."""
        model = onnx.load(str(self.rpn))
        meta = {p.key: p.value for p in model.metadata_props}
        split = json.loads(self.manifest())
        split["heads_precision"] = heads_precision
        meta[SPLIT_KEY] = json.dumps(split, sort_keys=True)
        del model.metadata_props[:]
        onnx.helper.set_model_props(model, meta)
        with atomic_path(self.rpn, suffix=".onnx") as tmp:
            onnx.save(model, str(tmp))

    def remove(self) -> None:
        """Delete the three graphs (an export that failed its gate)."""
        for p in self.paths.values():
            p.unlink(missing_ok=True)
