"""The Triton model-repository writer's parts: config text, graph readers, staging and install.

:mod:`liverrt.export.triton` writes one model with them and :mod:`liverrt.export.triton_maskrcnn`
the split Mask R-CNN's four; see the former for the layout written.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import onnx
from google.protobuf import text_encoding, text_format  # protobuf ships with onnx
from onnx import TensorProto as T
from onnx.external_data_helper import uses_external_data

import liverrt
from liverrt.artifacts import artifact_info
from liverrt.artifacts.plan import plan_info, read_sidecar, sidecar_path
from liverrt.atomic import check_outputs, record_written, set_default_mode, temp_name
from liverrt.errors import ArtifactError, BackendUnavailableError, InputError
from liverrt.hashing import sha256_file

log = logging.getLogger(__name__)

Kind = Literal["KIND_GPU", "KIND_CPU", "KIND_AUTO"]
KINDS = ("KIND_GPU", "KIND_CPU", "KIND_AUTO")
#: backend -> (Triton platform, model file name, artifact suffix)
BACKENDS = {"onnxruntime": ("onnxruntime_onnx", "model.onnx", ".onnx"),
            "tensorrt": ("tensorrt_plan", "model.plan", ".plan")}
PYTHON_PLATFORM = "python"  # TritonRepo.platform of a Python-backend model (Triton's config has no platform)
DEFAULT_MAX_BATCH_SIZE = 32
DEFAULT_PREFERRED_BATCH_SIZES = (4, 8, 16)
_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*")


@dataclass(frozen=True)
class TensorConfig:
    """One input or output of the config: dims exclude the batch axis, -1 = dynamic."""

    name: str
    data_type: str  # "TYPE_FP32", ...
    dims: tuple[int, ...]


@dataclass(frozen=True)
class TritonRepo:
    repo: Path
    name: str
    version: int
    platform: str
    max_batch_size: int
    model_dir: Path  # <repo>/<name>
    config: Path  # <repo>/<name>/config.pbtxt
    model: Path  # <repo>/<name>/<version>/model.onnx | model.plan
    client_example: Path
    inputs: tuple[TensorConfig, ...]
    outputs: tuple[TensorConfig, ...]
    parts: tuple[str, ...] = ()  # a split Mask R-CNN: the models of its three graphs (``model`` is model.py)


# ----------------------------------------------------------------------------- reading the artifact


def _onnx_type_names() -> dict[int, str]:
    return {T.FLOAT: "TYPE_FP32", T.FLOAT16: "TYPE_FP16", T.BFLOAT16: "TYPE_BF16", T.DOUBLE: "TYPE_FP64",
            T.INT8: "TYPE_INT8", T.INT16: "TYPE_INT16", T.INT32: "TYPE_INT32", T.INT64: "TYPE_INT64",
            T.UINT8: "TYPE_UINT8", T.UINT16: "TYPE_UINT16", T.UINT32: "TYPE_UINT32", T.UINT64: "TYPE_UINT64",
            T.BOOL: "TYPE_BOOL", T.STRING: "TYPE_STRING"}


def _onnx_tensor(value, path: Path, role: str) -> tuple[TensorConfig, int]:
    """(config without the first axis, the first axis: -1 if dynamic) of a graph input/output."""
    ttype = value.type.tensor_type if value.type.HasField("tensor_type") else None
    if ttype is None or not ttype.HasField("shape"):
        raise InputError(f"{path}: {role} {value.name!r} is not a tensor of known rank; "
                         "expected (N, ...) tensors as written by `liverrt export`.")
    names = _onnx_type_names()
    if ttype.elem_type not in names:
        raise InputError(f"{path}: {role} {value.name!r} has ONNX element type {ttype.elem_type}, "
                         f"which Triton cannot serve; expected one of {sorted(set(names.values()))}.")
    dims = [d.dim_value if d.WhichOneof("value") == "dim_value" and d.dim_value > 0 else -1
            for d in ttype.shape.dim]
    if not dims:
        raise InputError(f"{path}: {role} {value.name!r} is a scalar; expected a batch axis first.")
    return TensorConfig(value.name, names[ttype.elem_type], tuple(dims[1:])), dims[0]


def read_graph(path: Path, *, batched: bool = True):
    """(inputs, outputs, liverrt metadata) of a liverrt ONNX file; dims without the batch axis if ``batched``.

    With ``batched`` every input and output must have a dynamic first axis (Triton batches requests
    along it); without, dims are the whole shape (Triton's max_batch_size 0).
    """

    artifact_info(path)  # raises ArtifactError unless it carries liverrt metadata
    model = onnx.load(str(path), load_external_data=False)
    meta = {p.key: p.value for p in model.metadata_props if p.key.startswith("liverrt.")}
    if any(uses_external_data(t) for t in model.graph.initializer):
        raise InputError(f"{path} keeps its weights in external data files; expected a self-contained .onnx "
                         "(re-export it with `liverrt export`, which writes one file).")
    initializers = {t.name for t in model.graph.initializer}
    tensors, static = {"input": [], "output": []}, []
    for role, values in (("input", [v for v in model.graph.input if v.name not in initializers]),
                         ("output", model.graph.output)):
        for value in values:
            tensor, first = _onnx_tensor(value, path, role)
            if not batched:
                tensor = TensorConfig(tensor.name, tensor.data_type, (first, *tensor.dims))
            elif first != -1:
                static.append(f"{role} {value.name!r}")
            tensors[role].append(tensor)
    if static:
        raise InputError(f"{path}: the batch axis of {', '.join(static)} is fixed; expected a dynamic first axis "
                         "so Triton can batch requests. Note: re-export with `liverrt export` (dynamic batch).")
    return tensors["input"], tensors["output"], meta


def from_onnx(path: Path, part: str | None) -> tuple[list[TensorConfig], list[TensorConfig], dict[str, str], None]:
    """Inputs/outputs of a single-graph liverrt ONNX; ``part``: its ``liverrt.part`` metadata, if any."""
    if part is not None:
        raise InputError(f"{path} is the {part!r} part of a split Mask R-CNN export; expected a "
                         "single-graph liverrt ONNX (U-Net, DnCNN-SR), or the split export's main .onnx file "
                         "(its rpn graph, which names the other two).")
    inputs, outputs, meta = read_graph(path)
    return inputs, outputs, meta, None


def from_plan(plan: Path) -> tuple[list[TensorConfig], list[TensorConfig], dict[str, str], int]:
    """Inputs/outputs of a TensorRT plan from its sidecar (see :mod:`liverrt.runtime.tensorrt_loader`)."""
    data = read_sidecar(plan)  # ArtifactError when missing or not liverrt's
    info = plan_info(plan)
    side = sidecar_path(plan)
    if data.get("plan_sha256") != sha256_file(plan):
        raise ArtifactError(f"{plan}: its bytes do not match plan_sha256 in {side.name}; expected the plan the "
                            "sidecar describes. Rebuild it from its ONNX file.")
    try:
        lo, hi = ([int(v) for v in data["profile"][k]] for k in ("min", "max"))
    except (KeyError, TypeError, ValueError) as exc:
        raise ArtifactError(f"{side}: missing or damaged optimisation profile ({exc!r}); expected "
                            "'profile': {'min', 'opt', 'max'} input shapes (N, C, S, S).") from None
    if len(lo) != len(hi) or len(lo) < 2:
        raise ArtifactError(f"{side}: profile min {lo} / max {hi}; expected two (N, ...) shapes of one rank.")
    if lo[0] > 1:
        raise InputError(f"{plan}: the optimisation profile's smallest batch is {lo[0]}; expected 1, since Triton "
                         "sends batches of any size from 1 to max_batch_size. Rebuild the plan with batch 1:OPT:MAX.")
    dims = tuple(a if a == b else -1 for a, b in zip(lo[1:], hi[1:], strict=True))
    # liverrt graphs keep float32 I/O at every precision (see liverrt.export.precision)
    inputs = [TensorConfig(str(data.get("input_name", "image")), "TYPE_FP32", dims)]
    # one output channel (prob, restored) whatever the input's (adjacent slices of a 2.5-D model)
    outputs = [TensorConfig(str(data.get("output_name", "prob")), "TYPE_FP32", (1, *dims[1:]))]
    meta = {"liverrt.format": str(data["format"]), "liverrt.preprocess": info.spec.to_json(),
            "liverrt.threshold": str(info.threshold), "liverrt.precision": info.precision,
            "liverrt.model": json.dumps(data.get("model", {}), sort_keys=True),
            "liverrt.metrics": json.dumps(info.metrics, sort_keys=True)}
    for key in ("tensorrt_version", "compute_capability", "gpu_name", "onnx_sha256", "liverrt_version"):
        if key in data:
            meta[f"liverrt.{key}"] = str(data[key])
    return inputs, outputs, meta, hi[0]


# ----------------------------------------------------------------------------- config.pbtxt


def _q(text: str) -> str:
    return '"' + text_encoding.CEscape(text.encode("utf-8"), as_utf8=True) + '"'


def _tensors(key: str, tensors: list[TensorConfig]) -> list[str]:
    lines = [f"{key} ["]
    for i, t in enumerate(tensors):
        lines += ["  {", f"    name: {_q(t.name)}", f"    data_type: {t.data_type}",
                  f"    dims: [ {', '.join(map(str, t.dims))} ]", "  }" + ("," if i < len(tensors) - 1 else "")]
    return [*lines, "]"]


def config_text(name: str, backend: str, max_batch_size: int, inputs: list[TensorConfig],
                outputs: list[TensorConfig], *, preferred_batch_sizes: tuple[int, ...], max_queue_delay_us: int,
                instances: int, kind: str, parameters: dict[str, str]) -> str:
    """The ``config.pbtxt`` text (Triton ModelConfig in protobuf text format)."""
    platform = [f"platform: {_q(BACKENDS[backend][0])}"] if backend in BACKENDS else []  # python: backend only
    lines = [f"# Written by liverrt {liverrt.__version__}; inputs/outputs read from the model itself.",
             f"name: {_q(name)}", *platform, f"backend: {_q(backend)}",
             f"max_batch_size: {max_batch_size}", "version_policy: { latest: { num_versions: 1 } }"]
    lines += _tensors("input", inputs) + _tensors("output", outputs)
    if max_batch_size > 0:  # 0: the model takes whole tensors, Triton does not batch them
        lines += ["dynamic_batching {"]
        if preferred_batch_sizes:
            lines += [f"  preferred_batch_size: [ {', '.join(map(str, preferred_batch_sizes))} ]"]
        lines += [f"  max_queue_delay_microseconds: {max_queue_delay_us}", "}"]
    lines += ["instance_group [", "  {", f"    count: {instances}", f"    kind: {kind}", "  }", "]"]
    for key in sorted(parameters):
        lines += ["parameters {", f"  key: {_q(key)}", f"  value: {{ string_value: {_q(parameters[key])} }}", "}"]
    return "\n".join(lines) + "\n"


def read_config(path: Path):
    """Parse a ``config.pbtxt`` (or a model folder holding one) into ``tritonclient``'s ModelConfig protobuf."""
    path = Path(path)
    if path.is_dir():
        path = path / "config.pbtxt"
    if not path.is_file():
        raise InputError(f"{path} does not exist; expected a Triton config.pbtxt or a model folder holding one.")
    try:
        # optional (tritonclient): only reading a config needs it
        from tritonclient.grpc import model_config_pb2
    except ImportError as exc:
        raise BackendUnavailableError(f"Reading Triton configs needs tritonclient ({exc}); expected "
                                      "`pip install 'tritonclient[grpc]'`.") from exc
    config = model_config_pb2.ModelConfig()
    try:
        text_format.Parse(path.read_text(encoding="utf-8"), config)
    except text_format.ParseError as exc:
        raise ArtifactError(f"{path} is not a valid Triton ModelConfig: {exc}.") from exc
    return config


# ----------------------------------------------------------------------------- writing


@dataclass(frozen=True)
class TritonOptions:
    """How Triton serves a model: what ``config.pbtxt`` says beyond the model's own inputs and outputs.

    ``None`` fields are filled for the artifact by :meth:`resolved`: ``name`` from its file stem (less a
    cached plan's digest), ``max_batch_size`` 32 (for a plan at most its profile's max batch),
    ``preferred_batch_sizes`` those of (4, 8, 16) that fit.
    """

    name: str | None = None
    version: int = 1
    max_batch_size: int | None = None
    preferred_batch_sizes: tuple[int, ...] | None = None
    max_queue_delay_us: int = 100
    instances: int = 1
    kind: Kind = "KIND_GPU"

    def resolved(self, artifact: Path, batch_cap: int | None) -> TritonOptions:
        """Every default filled in for ``artifact`` (whose engine takes at most ``batch_cap``), and checked."""
        name = self.name
        if name is None:  # the file stem, without the digest of a cached plan (<stem>.<16 hex>.plan)
            stem = re.sub(r"\.[0-9a-f]{16}$", "", Path(artifact).stem)
            name = re.sub(r"[^A-Za-z0-9_.\-]", "_", stem).lstrip(".") or "model"
        max_batch = self.max_batch_size
        if max_batch is None:
            max_batch = min(DEFAULT_MAX_BATCH_SIZE, batch_cap or DEFAULT_MAX_BATCH_SIZE)
        if batch_cap is not None and max_batch > batch_cap:
            raise InputError(f"max_batch_size {max_batch} exceeds the plan's optimisation profile (max batch "
                             f"{batch_cap}); expected <= {batch_cap}, or rebuild the plan with a larger profile.")
        preferred = self.preferred_batch_sizes
        if preferred is None:
            preferred = tuple(b for b in DEFAULT_PREFERRED_BATCH_SIZES if b <= max_batch)
        options = replace(self, name=name, max_batch_size=max_batch,
                          preferred_batch_sizes=tuple(int(b) for b in preferred))
        options._check()
        return options

    def _check(self) -> None:
        if not _NAME_RE.fullmatch(self.name):
            raise InputError(f"Model name {self.name!r}: expected letters, digits, '_', '-' or '.' (a folder name "
                             "for Triton).")
        if self.version < 1:
            raise InputError(f"Model version {self.version}: expected an integer >= 1 (Triton's version folders).")
        if self.max_batch_size < 1:
            raise InputError(f"max_batch_size {self.max_batch_size}: expected >= 1 (liverrt models batch slices).")
        bad = [b for b in self.preferred_batch_sizes if not 1 <= b <= self.max_batch_size]
        if bad:
            raise InputError(f"Preferred batch sizes {bad} exceed max_batch_size {self.max_batch_size} (or are < 1); "
                             f"expected sizes in 1..{self.max_batch_size}.")
        if self.max_queue_delay_us < 0:
            raise InputError(f"max_queue_delay_us {self.max_queue_delay_us}: expected >= 0 microseconds.")
        if self.instances < 1:
            raise InputError(f"instances {self.instances}: expected at least 1 model instance.")
        if self.kind not in KINDS:
            raise InputError(f"Instance kind {self.kind!r}: expected one of {KINDS}.")

    def config_text(self, name: str, backend: str, max_batch_size: int, inputs: list[TensorConfig],
                    outputs: list[TensorConfig], parameters: dict[str, str], *, kind: str | None = None) -> str:
        """``config.pbtxt`` of model ``name`` with these options (``kind`` overrides the instance kind)."""
        return config_text(name, backend, max_batch_size, inputs, outputs,
                           preferred_batch_sizes=self.preferred_batch_sizes,
                           max_queue_delay_us=self.max_queue_delay_us, instances=self.instances,
                           kind=kind or self.kind, parameters=parameters)


@dataclass(frozen=True)
class ModelFiles:
    """One model folder to write: its config, client example (or None) and version-folder files."""

    name: str
    config: str
    example: str | None
    files: dict[str, Path | str]  # file name in <version>/ -> a file to copy, or the text to write


def check_targets(repo: Path, models: list[ModelFiles], version: int, overwrite: bool, inputs: list[Path]) -> None:
    for m in models:
        model_dir = repo / m.name
        version_dir = model_dir / str(version)
        for p in inputs:
            if version_dir.resolve() in p.resolve().parents:
                raise InputError(f"Refusing to write {version_dir}: it holds the input {p}; choose another repo, "
                                 "name or version.")
        if version_dir.exists() and not overwrite:
            raise InputError(f"{version_dir} already exists; expected a new version (pass overwrite=True / "
                             "--overwrite to replace it).")
        if not overwrite:  # a new version rewrites the model's config: only one liverrt wrote, never a user's edit
            check_outputs(model_dir / name for name in ("config.pbtxt", "client_example.py"))
        if model_dir.exists() and not model_dir.is_dir():
            raise InputError(f"{model_dir} exists and is not a folder; expected a Triton model folder or nothing.")


def record(repo: Path, models: list[ModelFiles]) -> None:
    """List the files liverrt just wrote beside each model's versions, so a later version may replace them."""
    for m in models:
        for name in ("config.pbtxt", "client_example.py"):
            if (repo / m.name / name).is_file():
                record_written(repo / m.name / name)


def install(repo: Path, models: list[ModelFiles], version: int) -> None:
    """Write ``models`` into ``repo``: all staged first, then moved into place; on an error all is undone.

    A new model folder is staged beside it in ``repo`` and appears in one rename. For an existing
    model folder the version is staged inside it (a hidden folder, which Triton does not take for a
    version) and renamed into place; a replaced version waits there until every model is in, and
    ``config.pbtxt`` / ``client_example.py`` are replaced atomically. Other models and versions are
    never touched. A Python exception undoes every step (a killed process can still leave some of
    the models written).
    """
    created_repo = not repo.exists()
    repo.mkdir(parents=True, exist_ok=True)
    stages: list[Path] = []
    undo: list = []
    try:
        for m in models:  # stage every model before anything moves
            model_dir = repo / m.name
            # same file system as the target: renames; listed before it exists, so a signal cannot slip between
            stage = temp_name(model_dir if model_dir.is_dir() else repo, f".{m.name}.liverrt-stage.")
            stages.append(stage)
            stage.mkdir(mode=0o700)
            folder = stage / "model"
            files = [folder / "config.pbtxt"]
            (folder / str(version)).mkdir(parents=True)
            for name, src in m.files.items():
                if isinstance(src, Path):
                    shutil.copyfile(src, folder / str(version) / name)
                else:
                    (folder / str(version) / name).write_text(src, encoding="utf-8")
                files.append(folder / str(version) / name)
            (folder / "config.pbtxt").write_text(m.config, encoding="utf-8")
            if m.example is not None:
                (folder / "client_example.py").write_text(m.example, encoding="utf-8")
                files.append(folder / "client_example.py")
            for f in (*files, folder / str(version), folder):
                set_default_mode(f)
        for m, stage in zip(models, stages, strict=True):
            folder, model_dir = stage / "model", repo / m.name
            if stage.parent == repo:  # a new model folder
                os.rename(folder, model_dir)  # refuses to replace a folder that appeared meanwhile
                undo.append(lambda a=model_dir, b=folder: os.rename(a, b))
                continue
            version_dir = model_dir / str(version)
            if version_dir.exists():  # overwrite: the old version waits in the stage until all are in
                os.rename(version_dir, stage / "old")
                undo.append(lambda a=stage / "old", b=version_dir: os.rename(a, b))
            os.rename(folder / str(version), version_dir)
            undo.append(lambda a=version_dir, b=folder / str(version): os.rename(a, b))
            for name in ("config.pbtxt", "client_example.py"):
                if not (folder / name).exists():
                    continue
                target = model_dir / name
                if target.exists():
                    shutil.copy2(target, stage / f"{name}.old")
                    undo.append(lambda a=stage / f"{name}.old", b=target: os.replace(a, b))
                else:
                    undo.append(lambda b=target: b.unlink(missing_ok=True))
                os.replace(folder / name, target)
    except BaseException:
        for step in reversed(undo):
            try:
                step()
            except OSError as exc:  # pragma: no cover - the file system failed twice
                log.error("could not undo a Triton repository step: %s", exc)
        for stage in stages:
            shutil.rmtree(stage, ignore_errors=True)
        if created_repo and not any(repo.iterdir()):
            repo.rmdir()
        raise
    finally:
        for stage in stages:
            shutil.rmtree(stage, ignore_errors=True)


_CLIENT_TEMPLATE = '''\
#!/usr/bin/env python3
"""Send CT slices to the Triton model __NAME__ and print the liver mask area per slice.

Written by liverrt __VERSION__ together with config.pbtxt; the constants below
match that config. Needs ``pip install "tritonclient[http]" numpy``.

    tritonserver --model-repository <this repository>
    python client_example.py [--url localhost:8000] [--slices ct_hu.npy]

Preprocessing must be the one the model was trained with (its PreprocessSpec,
also in config.pbtxt parameter "liverrt.preprocess"). With liverrt installed,
liverrt.data.preprocess.to_input applies it (window, resize/letterbox/pad, or
resampling to PIXEL_MM mm per pixel, which needs --spacing) and the mask is
restored to the source grid. Without liverrt the documented windowing formula
is used, and slices must already be SIZE x SIZE pixels (of PIXEL_MM mm when set):
    x = clip((HU - (window_center - window_width / 2)) / window_width, 0, 1)
    (8-bit slices: x = pixel / 255; with quantize_8bit: x = round(255 x) / 255)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

MODEL_NAME = __NAME__
INPUT_NAME = __INPUT__
INPUT_DATATYPE = __DATATYPE__
OUTPUT_NAME = __OUTPUT__
MASK_OUTPUT = OUTPUT_NAME == "prob"  # a liver probability map; other models (DnCNN-SR) return images
MAX_BATCH_SIZE = __MAX_BATCH__
PREPROCESS = json.loads(__SPEC__)
THRESHOLD = __THRESHOLD__
SIZE = int(PREPROCESS["size"])
PIXEL_MM = PREPROCESS.get("pixel_mm")  # None: the model fits the field of view


def window(slices: np.ndarray, intensity: str = "hu") -> np.ndarray:
    """(N, SIZE, SIZE) HU or 8-bit slices -> (N, 1, SIZE, SIZE) float32 in [0, 1] (the formula above)."""
    s = np.asarray(slices, dtype=np.float32)
    if PREPROCESS.get("context"):
        raise ValueError("this model takes adjacent slices as input channels; install liverrt to stack them "
                         "like training did")
    if s.shape[1:] != (SIZE, SIZE):
        raise ValueError(f"slices are {s.shape[1:]}; without liverrt they must be ({SIZE}, {SIZE}) "
                         "(install liverrt to letterbox/resize them like training did)")
    if intensity == "hu":
        lo = np.float32(PREPROCESS["window_center"] - PREPROCESS["window_width"] / 2.0)
        x = (s - lo) / np.float32(PREPROCESS["window_width"])
        x = np.clip(np.nan_to_num(x, nan=0.0, posinf=1.0, neginf=0.0), 0.0, 1.0)
        if PREPROCESS.get("quantize_8bit"):
            x = np.round(x * 255.0) / 255.0
    else:
        x = np.clip(np.nan_to_num(s / 255.0), 0.0, 1.0)
    return np.ascontiguousarray(x[:, None], dtype=np.float32)


def preprocess(slices: np.ndarray, intensity: str = "hu", spacing=None):
    """(N, H, W) contiguous slices of (dy, dx) mm pixels -> ((N, C, SIZE, SIZE) float32, liverrt Placement or None)."""
    try:
        from liverrt.data.preprocess import PreprocessSpec, to_input
    except ImportError:
        return window(slices, intensity), None
    return to_input(np.asarray(slices), intensity, PreprocessSpec.from_dict(PREPROCESS), spacing)


def mask_area(prob: np.ndarray, placement=None) -> np.ndarray:
    """Pixels per slice with probability >= THRESHOLD, on the source grid when placement is known."""
    prob = np.asarray(prob, dtype=np.float32)[:, 0]
    if placement is not None:
        from liverrt.data.preprocess import restore

        prob = restore(prob, placement)
    return (prob >= THRESHOLD).sum(axis=(1, 2))


def phantom(n: int = 2) -> np.ndarray:
    """(n, SIZE, SIZE) HU slices: air, a soft-tissue body and a brighter 'liver' ellipse."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    body = ((yy - 0.5) / 0.45) ** 2 + ((xx - 0.5) / 0.45) ** 2 <= 1
    liver = ((yy - 0.45) / 0.2) ** 2 + ((xx - 0.35) / 0.24) ** 2 <= 1
    hu = np.where(body, 30.0, -1000.0) + np.where(liver & body, 80.0, 0.0)
    return np.repeat(hu[None], n, axis=0).astype(np.float32)


def infer(client, x: np.ndarray) -> np.ndarray:
    """Run the model on (N, 1, SIZE, SIZE) input, MAX_BATCH_SIZE slices per request."""
    import tritonclient.http as httpclient

    out = []
    for i in range(0, len(x), MAX_BATCH_SIZE):
        batch = np.ascontiguousarray(x[i : i + MAX_BATCH_SIZE])
        inp = httpclient.InferInput(INPUT_NAME, list(batch.shape), INPUT_DATATYPE)
        inp.set_data_from_numpy(batch)
        result = client.infer(MODEL_NAME, inputs=[inp], outputs=[httpclient.InferRequestedOutput(OUTPUT_NAME)])
        out.append(result.as_numpy(OUTPUT_NAME))
    return np.concatenate(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="localhost:8000", help="Triton HTTP endpoint")
    parser.add_argument("--slices", type=Path, help=".npy of (N, H, W) slices; default: 2 phantom slices")
    parser.add_argument("--intensity", choices=("hu", "8bit"), default="hu")
    parser.add_argument("--spacing", nargs=2, type=float, metavar=("DY", "DX"),
                        help="pixel size of --slices in mm (needed when the model has a fixed PIXEL_MM)")
    args = parser.parse_args(argv)
    import tritonclient.http as httpclient

    slices = np.load(args.slices) if args.slices else phantom()
    slices = slices[None] if slices.ndim == 2 else slices
    spacing = args.spacing or (None if args.slices else (PIXEL_MM or 1.0, PIXEL_MM or 1.0))
    x, placement = preprocess(slices, args.intensity, spacing)
    client = httpclient.InferenceServerClient(url=args.url)
    out = infer(client, x)
    if not MASK_OUTPUT:
        print(f"{OUTPUT_NAME}: shape {out.shape}, values {out.min():.3f}..{out.max():.3f}")
        return
    areas = mask_area(out, placement)
    for i, area in enumerate(areas):
        print(f"slice {i}: liver mask area {int(area)} pixels")
    print(f"total: {int(areas.sum())} pixels (threshold {THRESHOLD})")


if __name__ == "__main__":
    main()
'''


def client_example_text(name: str, inp: TensorConfig, out: TensorConfig, max_batch_size: int,
                        parameters: dict[str, str]) -> str:
    """Source of ``client_example.py`` for a model with these input/output and liverrt parameters."""
    datatype = "BYTES" if inp.data_type == "TYPE_STRING" else inp.data_type.removeprefix("TYPE_")
    values = {"__NAME__": repr(name), "__VERSION__": liverrt.__version__, "__INPUT__": repr(inp.name),
              "__DATATYPE__": repr(datatype), "__OUTPUT__": repr(out.name), "__MAX_BATCH__": str(max_batch_size),
              "__SPEC__": repr(parameters["liverrt.preprocess"]),
              "__THRESHOLD__": repr(float(parameters.get("liverrt.threshold", 0.5)))}
    text = _CLIENT_TEMPLATE
    for key, value in values.items():
        text = text.replace(key, value)
    return text
