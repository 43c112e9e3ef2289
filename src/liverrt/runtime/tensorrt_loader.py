"""The TensorRT loader: ONNX -> plan (strongly typed, one batch profile), its sidecar and the engine cache.

Building or fetching a plan is a loader (Polygraphy's ``EngineFromNetwork``); running it is
:class:`liverrt.runtime.tensorrt_engine.TensorRTEngine`. ``liverrt export --format tensorrt``
builds plans with the same code. The sidecar format itself is :mod:`liverrt.artifacts.plan`.

A TensorRT plan runs only on the TensorRT version and GPU architecture
(compute capability) that built it. Every plan therefore travels with a
sidecar (``model.<digest>.plan`` + ``model.<digest>.json``) that records what
it was built with and what the ONNX file carried (PreprocessSpec, threshold,
model), and :class:`EngineCache` rebuilds or refuses a plan built elsewhere
instead of letting TensorRT fail on it.

Precision lives in the ONNX graph (fp16 tensors, Q/DQ nodes): networks are
built strongly typed (TensorRT 11 always is) and no FP16/INT8 builder flag is
ever set. TensorRT, Polygraphy and CUDA are imported lazily, inside the few
functions that need them.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper

import liverrt
from liverrt.artifacts import artifact_info, onnx_metadata
from liverrt.artifacts.metadata import PRECISIONS
from liverrt.artifacts.plan import SIDECAR_FORMAT, plan_info, read_sidecar, sidecar_path  # noqa: F401 (API)
from liverrt.artifacts.split import SplitArtifact
from liverrt.atomic import atomic_path, overwrite_allowed
from liverrt.data.preprocess import PreprocessSpec
from liverrt.errors import ArtifactError, BackendUnavailableError, ExportError, InputError
from liverrt.hashing import sha256_bytes, sha256_file

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install liverrt[trt] on a machine with an NVIDIA GPU and driver"
#: the optimisation profile (min, opt, max batch) of every plan unless asked: export, infer, the cache
DEFAULT_BATCH = (1, 8, 32)
DEFAULT_WORKSPACE_MB = 4096

#: what a plan records about the machine that built it
MACHINE_FIELDS = ("tensorrt_version", "compute_capability", "gpu_name")
#: the fields TensorRT cannot deserialise a plan across
BINDING_FIELDS = ("tensorrt_version", "compute_capability")

Shape = tuple[int, ...]
Machine = Mapping[str, str]
#: compiler(onnx_path, key, *, input_name, timing_cache) -> serialised plan bytes
Compiler = Callable[..., bytes]


# -- what a plan is built for ------------------------------------------------
def parse_batch_profile(text: str | tuple[int, ...] | list[int]) -> tuple[int, int, int]:
    """``"1:8:32"`` (or ``(1, 8, 32)``) -> ``(1, 8, 32)``: min/opt/max batch of the optimisation profile
    (:data:`DEFAULT_BATCH` unless asked)."""
    expected = f"expected MIN:OPT:MAX batch sizes with 1 <= MIN <= OPT <= MAX, e.g. '{':'.join(map(str, DEFAULT_BATCH))}'"
    parts = text.split(":") if isinstance(text, str) else list(text)
    try:
        values = tuple(int(p) for p in parts)
    except (TypeError, ValueError):
        raise InputError(f"Batch profile {text!r}: not integers; {expected}.") from None
    if len(values) != 3 or not 1 <= values[0] <= values[1] <= values[2]:
        raise InputError(f"Batch profile {text!r}: {expected}.")
    return values  # type: ignore[return-value]


def profile_shapes(batch: tuple[int, int, int], spec: PreprocessSpec) -> tuple[Shape, Shape, Shape]:
    """min/opt/max input shapes ``(b, channels, S, S)`` for a batch profile and the model's spec."""
    return tuple(spec.input_shape(b) for b in batch)  # type: ignore[return-value]


@dataclass(frozen=True)
class EngineKey:
    """Everything a plan depends on; its :meth:`digest` names the plan file."""

    onnx_sha256: str
    tensorrt_version: str
    compute_capability: str  # e.g. "9.0"
    gpu_name: str
    precision: str  # fp32 | fp16 | int8, from the ONNX metadata
    profile: tuple[Shape, Shape, Shape]  # min, opt, max input shapes
    workspace_bytes: int

    def to_dict(self) -> dict:
        d = asdict(self)
        d["profile"] = {k: list(s) for k, s in zip(("min", "opt", "max"), self.profile, strict=True)}
        return d

    @classmethod
    def from_dict(cls, data: Mapping) -> EngineKey:
        try:
            p = data["profile"]
            return cls(
                onnx_sha256=str(data["onnx_sha256"]), tensorrt_version=str(data["tensorrt_version"]),
                compute_capability=str(data["compute_capability"]), gpu_name=str(data["gpu_name"]),
                precision=str(data["precision"]),
                profile=tuple(tuple(int(v) for v in p[k]) for k in ("min", "opt", "max")),  # type: ignore[arg-type]
                workspace_bytes=int(data["workspace_bytes"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(f"TensorRT sidecar: missing or damaged field ({exc!r}); "
                                f"expected a sidecar written by liverrt ({SIDECAR_FORMAT}).") from None

    def digest(self) -> str:
        """A short, stable hash of every field (16 hex characters)."""
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return sha256_bytes(text.encode())[:16]

    def diff(self, other: EngineKey) -> list[str]:
        """Names of the fields whose values differ, in declaration order."""
        return [f.name for f in fields(self) if getattr(self, f.name) != getattr(other, f.name)]

    def machine(self) -> dict[str, str]:
        return {f: getattr(self, f) for f in MACHINE_FIELDS}


def describe_mismatch(built: Machine, here: Machine) -> str:
    """One line for messages, e.g. ``plan built for TensorRT 10.3 on compute capability 8.6 (A10);
    this machine has TensorRT 10.9 on 9.0 (H100); differing: tensorrt_version, ...``."""
    differ = [f for f in MACHINE_FIELDS if str(built.get(f)) != str(here.get(f))]
    return (f"plan built for TensorRT {built.get('tensorrt_version')} on compute capability "
            f"{built.get('compute_capability')} ({built.get('gpu_name')}); this machine has TensorRT "
            f"{here.get('tensorrt_version')} on {here.get('compute_capability')} ({here.get('gpu_name')}); "
            f"differing: {', '.join(differ) or 'nothing'}")


def current_machine(device: int = 0) -> dict[str, str]:
    """TensorRT version, GPU name and compute capability here; :class:`BackendUnavailableError` without them."""
    try:
        import tensorrt as trt  # optional (liverrt[trt]): this is where its absence is reported
    except Exception as exc:  # ImportError, or OSError when libnvinfer is missing
        raise BackendUnavailableError(
            f"TensorRT is not usable here (import tensorrt: {type(exc).__name__}: {str(exc)[:120]}); "
            f"expected TensorRT >= 10: {INSTALL_HINT}."
        ) from None

    if not torch.cuda.is_available() or device >= torch.cuda.device_count():
        raise BackendUnavailableError(
            f"TensorRT {trt.__version__} is installed but no CUDA GPU {device} is visible "
            f"(torch.cuda.device_count() = {torch.cuda.device_count()}); expected {INSTALL_HINT}."
        )
    major, minor = torch.cuda.get_device_capability(device)
    return {"tensorrt_version": str(trt.__version__), "compute_capability": f"{major}.{minor}",
            "gpu_name": torch.cuda.get_device_name(device)}


def onnx_input_name(onnx_path: Path, want: tuple[int, ...]) -> str:
    """The single graph input of a liverrt ONNX file; checks its static C, H and W against ``want``."""

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    weights = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in weights]
    if len(inputs) != 1:
        raise ArtifactError(f"{onnx_path}: {len(inputs)} graph inputs; expected one image input (N, 1, S, S).")
    dims = [d.dim_value if d.HasField("dim_value") else None for d in inputs[0].type.tensor_type.shape.dim]
    if len(dims) != 4 or any(d is not None and d != w for d, w in zip(dims[1:], want, strict=True)):
        raise ArtifactError(f"{onnx_path}: input {inputs[0].name!r} has shape {dims}; expected (N, "
                            f"{', '.join(map(str, want))}) as in its PreprocessSpec.")
    return inputs[0].name


def check_single_graph(onnx_path: Path) -> None:
    """Refuse ONNX files a plan cannot stand for: the split Mask R-CNN is three graphs plus a runtime."""

    meta = onnx_metadata(onnx_path)
    if SplitArtifact.is_split(meta):
        raise InputError(f"{onnx_path} is (part of) a split Mask R-CNN export: three graphs with NMS and mask "
                         "pasting between them, which one TensorRT plan cannot hold. Run it with --engine "
                         "onnxruntime (providers CUDA or TensorRT EP on a GPU); TensorRT plans are built for the "
                         "U-Net and DnCNN-SR.")


def check_zero_points(onnx_path: Path) -> None:
    """Refuse an INT8 graph with non-zero zero points: TensorRT's Q/DQ layers take zero points of 0 only."""

    model = onnx.load(str(onnx_path), load_external_data=False)
    inits = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") and len(node.input) > 2 and node.input[2] in inits:
            if np.any(numpy_helper.to_array(inits[node.input[2]])):
                raise InputError(
                    f"{onnx_path} is an int8 graph made for onnxruntime (Relu outputs in [0, max] with zero point "
                    f"-128, e.g. {node.input[0]!r}); TensorRT accepts zero points of 0 only. Export it again with "
                    "`liverrt export CKPT --precision int8 --int8-target tensorrt` (or --format tensorrt).")


def engine_key(onnx_path: Path, machine: Machine, *, batch: tuple[int, int, int] = DEFAULT_BATCH,
               workspace_mb: int = DEFAULT_WORKSPACE_MB) -> EngineKey:
    """The key of a plan for ``onnx_path`` built on ``machine`` (see :func:`current_machine`)."""
    info = artifact_info(onnx_path)
    if info.format != "onnx":
        raise ArtifactError(f"TensorRT plans are built from .onnx files; got {onnx_path}. "
                            "Run `liverrt export CKPT --format onnx --out model.onnx` first.")
    check_single_graph(onnx_path)
    if info.precision == "int8":
        check_zero_points(onnx_path)
    if info.precision not in PRECISIONS:
        raise ArtifactError(f"{onnx_path}: liverrt.precision = {info.precision!r}; expected one of {PRECISIONS}.")
    if workspace_mb < 1:
        raise InputError(f"TensorRT workspace: got {workspace_mb} MB, expected >= 1.")
    return EngineKey(
        onnx_sha256=sha256_file(onnx_path), tensorrt_version=str(machine["tensorrt_version"]),
        compute_capability=str(machine["compute_capability"]), gpu_name=str(machine["gpu_name"]),
        precision=info.precision, profile=profile_shapes(parse_batch_profile(batch), info.spec),
        workspace_bytes=int(workspace_mb) << 20,
    )


# -- plan + sidecar on disk ----------------------------------------------------
@dataclass(frozen=True)
class EngineBuild:
    plan: Path
    sidecar: Path
    key: EngineKey
    seconds: float  # build time; 0.0 when reused
    built: bool  # False when the plan came from the cache





def write_plan(out_dir: Path, onnx_path: Path, key: EngineKey, plan: bytes, *, input_name: str,
               build_seconds: float) -> EngineBuild:
    """Write ``<stem>.<digest>.plan`` and its sidecar atomically (plan first: a sidecar means a complete plan)."""
    onnx_path = Path(onnx_path)
    info = artifact_info(onnx_path)
    path = Path(out_dir) / f"{onnx_path.stem}.{key.digest()}.plan"
    with atomic_path(path, suffix=".plan", protect=(onnx_path,)) as tmp:
        tmp.write_bytes(plan)
    sidecar = {
        "format": SIDECAR_FORMAT,
        "plan": path.name,
        "plan_sha256": sha256_bytes(plan),
        **key.to_dict(),
        "input_name": input_name,
        "build_seconds": round(float(build_seconds), 3),
        "liverrt_version": liverrt.__version__,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "source_onnx": str(onnx_path),
        "model": {"kind": info.kind, "name": info.model_name, "config": info.model_config},
        "preprocess": info.spec.to_dict(),
        "threshold": info.threshold,
        "metrics": info.metrics,
    }
    with atomic_path(sidecar_path(path), suffix=".json", protect=(onnx_path,)) as tmp:
        tmp.write_text(json.dumps(sidecar, indent=2, sort_keys=True) + "\n")
    return EngineBuild(path, sidecar_path(path), key, float(build_seconds), True)





def check_plan(plan: Path, machine: Machine) -> tuple[EngineKey, dict]:
    """Validate a ``.plan`` + sidecar against ``machine`` before TensorRT sees it.

    A different TensorRT version or compute capability raises
    :class:`ArtifactError` naming the field; a different GPU model of the same
    architecture only logs a warning (TensorRT runs such plans, maybe slower).
    """
    plan = Path(plan)
    if not plan.is_file():
        raise InputError(f"TensorRT plan {plan} does not exist; expected a .plan written by liverrt.")
    data = read_sidecar(plan)
    key = EngineKey.from_dict(data)
    if data.get("plan_sha256") != sha256_file(plan):
        raise ArtifactError(f"{plan}: its bytes do not match the sidecar's plan_sha256; expected the plan the sidecar "
                            "describes. Rebuild it from its ONNX file.")
    built, here = key.machine(), {f: str(machine[f]) for f in MACHINE_FIELDS}
    if any(built[f] != here[f] for f in BINDING_FIELDS):
        raise ArtifactError(f"TensorRT plan {plan.name}: {describe_mismatch(built, here)}. Expected a plan built "
                            "here: rebuild it from its ONNX file (open the .onnx with the tensorrt engine).")
    if built["gpu_name"] != here["gpu_name"]:
        log.warning("TensorRT plan %s: %s; it runs, but a plan built on this GPU may be faster.",
                    plan.name, describe_mismatch(built, here))
    return key, data





# -- building ------------------------------------------------------------------
def compile_plan(onnx_path: Path, key: EngineKey, *, input_name: str, timing_cache: Path | None) -> bytes:
    """The TensorRT part: parse the ONNX strongly typed, one profile, workspace limit -> serialised plan."""
    import tensorrt as trt  # optional (liverrt[trt]), with Polygraphy: needed only to build a plan
    from polygraphy.backend.trt import (
        CreateConfig,
        EngineBytesFromNetwork,
        NetworkFromOnnxPath,
        Profile,
    )
    from polygraphy.exception import PolygraphyException
    from polygraphy.logger import G_LOGGER

    # TensorRT 10 opts in; TensorRT 11 is always strongly typed (the flag is kept but ignored).
    typed = True if hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED") else None
    lo, opt, hi = key.profile
    cache = str(timing_cache) if timing_cache else None
    try:
        with G_LOGGER.verbosity(G_LOGGER.WARNING):  # Polygraphy prints INFO to stdout; we log
            config = CreateConfig(
                profiles=[Profile().add(input_name, min=lo, opt=opt, max=hi)],
                memory_pool_limits={trt.MemoryPoolType.WORKSPACE: key.workspace_bytes},
                load_timing_cache=cache,
            )
            network = NetworkFromOnnxPath(str(onnx_path), strongly_typed=typed)
            plan = EngineBytesFromNetwork(network, config=config, save_timing_cache=cache)()
    except PolygraphyException as exc:
        raise ExportError(f"TensorRT {key.tensorrt_version} could not build {onnx_path}: {str(exc)[:300]}") from None
    return bytes(plan)


def build_engine(
    onnx_path: Path,
    out_dir: Path,
    *,
    batch: tuple[int, int, int] | str = DEFAULT_BATCH,
    workspace_mb: int = DEFAULT_WORKSPACE_MB,
    timing_cache: Path | None = None,
    machine: Machine | None = None,
    compiler: Compiler | None = None,
) -> EngineBuild:
    """Build ``onnx_path`` into ``out_dir/<stem>.<digest>.plan`` + sidecar.

    One optimisation profile over input shapes ``(b, C, S, S)`` for ``b`` in
    ``batch`` (min, opt, max), ``C`` and ``S`` from the PreprocessSpec; the network is
    strongly typed, so the ONNX graph decides the precision. ``timing_cache``
    is loaded if it exists and saved after the build. ``machine`` defaults to
    :func:`current_machine` (raises :class:`BackendUnavailableError` without
    TensorRT or a GPU); ``compiler`` defaults to :func:`compile_plan`.
    """
    onnx_path = Path(onnx_path)
    machine = current_machine() if machine is None else machine
    key = engine_key(onnx_path, machine, batch=parse_batch_profile(batch), workspace_mb=workspace_mb)
    input_name = onnx_input_name(onnx_path, tuple(key.profile[0][1:]))
    log.info("building TensorRT %s plan for %s (batch %s, %s)", key.precision, onnx_path.name,
             ":".join(str(s[0]) for s in key.profile), key.gpu_name)
    t0 = time.perf_counter()
    plan = (compiler or compile_plan)(onnx_path, key, input_name=input_name, timing_cache=timing_cache)
    seconds = time.perf_counter() - t0
    build = write_plan(out_dir, onnx_path, key, plan, input_name=input_name, build_seconds=seconds)
    log.info("built %s in %.1fs", build.plan, seconds)
    return build


# -- the cache -----------------------------------------------------------------
def default_cache_dir() -> Path:
    """``$LIVERRT_TRT_CACHE`` or ``~/.cache/liverrt/trt``."""
    env = os.environ.get("LIVERRT_TRT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "liverrt" / "trt"


class EngineCache:
    """Plans under ``root``, one per :class:`EngineKey` (``<stem>.<digest>.plan`` + sidecar).

    ``machine`` (a callable returning :func:`current_machine`'s dict) and
    ``compiler`` (see :func:`compile_plan`) are injectable, so the cache
    decisions are testable without TensorRT.
    """

    def __init__(self, root: Path | None = None, *, machine: Callable[[], Machine] = current_machine,
                 compiler: Compiler | None = None) -> None:
        self.root = Path(root) if root is not None else default_cache_dir()
        self.machine = machine
        self.compiler = compiler

    def key(self, onnx_path: Path, *, batch: tuple[int, int, int] | str = DEFAULT_BATCH,
            workspace_mb: int = DEFAULT_WORKSPACE_MB) -> EngineKey:
        return engine_key(onnx_path, self.machine(), batch=parse_batch_profile(batch), workspace_mb=workspace_mb)

    def plan_path(self, onnx_path: Path, key: EngineKey) -> Path:
        return self.root / f"{Path(onnx_path).stem}.{key.digest()}.plan"

    def timing_cache(self, key: EngineKey) -> Path:
        tag = re.sub(r"[^A-Za-z0-9.]+", "-", f"trt{key.tensorrt_version}-cc{key.compute_capability}")
        return self.root / f"timing.{tag}.cache"

    def lookup(self, onnx_path: Path, key: EngineKey) -> Path | None:
        """The cached plan for exactly ``key``, or None (missing, or plan and sidecar disagree)."""
        plan = self.plan_path(onnx_path, key)
        if not (plan.is_file() and sidecar_path(plan).is_file()):
            return None
        try:
            data = read_sidecar(plan)
            ok = EngineKey.from_dict(data) == key and data.get("plan_sha256") == sha256_file(plan)
        except ArtifactError as exc:
            log.warning("ignoring damaged cache entry %s: %s", plan.name, exc)
            return None
        if not ok:
            log.warning("ignoring cache entry %s: its sidecar does not match the plan or the key", plan.name)
        return plan if ok else None

    def stale(self, key: EngineKey) -> list[tuple[Path, EngineKey]]:
        """Plans of the same ONNX and build settings made for another machine (newest first)."""
        found = []
        for side in self.root.glob("*.json") if self.root.is_dir() else ():
            try:
                other = EngineKey.from_dict(json.loads(side.read_text()))
            except (OSError, json.JSONDecodeError, ArtifactError):
                continue
            plan = side.with_suffix(".plan")
            if plan.is_file() and other != key and set(other.diff(key)) <= set(MACHINE_FIELDS):
                found.append((plan, other))
        return sorted(found, key=lambda pk: pk[0].stat().st_mtime, reverse=True)

    def get_or_build(self, onnx_path: Path, *, batch: tuple[int, int, int] | str = DEFAULT_BATCH,
                     workspace_mb: int = DEFAULT_WORKSPACE_MB, rebuild: bool = True) -> EngineBuild:
        """The plan for ``onnx_path`` on this machine, built if the cache has none.

        A cached plan made for another TensorRT version, compute capability or
        GPU is rebuilt (``rebuild=True``; outdated plans of this same GPU are
        then deleted) or refused with :class:`ArtifactError` naming the field.
        """
        onnx_path = Path(onnx_path)
        key = self.key(onnx_path, batch=batch, workspace_mb=workspace_mb)
        hit = self.lookup(onnx_path, key)
        if hit is not None:
            log.info("reusing TensorRT plan %s", hit)
            return EngineBuild(hit, sidecar_path(hit), key, 0.0, False)
        stale = self.stale(key)
        if stale:
            old_plan, old_key = stale[0]
            message = f"Cached TensorRT plan {old_plan}: {describe_mismatch(old_key.machine(), key.machine())}"
            if not rebuild:
                raise ArtifactError(f"{message}. Expected a plan built on this machine; allow a rebuild "
                                    "(rebuild=True) or point the cache elsewhere.")
            log.warning("%s; rebuilding it here.", message)
        with overwrite_allowed():  # the cache is liverrt's own folder: a damaged entry is rebuilt in place
            build = build_engine(onnx_path, self.root, batch=batch, workspace_mb=workspace_mb,
                                 timing_cache=self.timing_cache(key), machine=key.machine(), compiler=self.compiler)
        for plan, old in stale:  # same GPU, older TensorRT: nothing will load these again
            if (old.gpu_name, old.compute_capability) == (key.gpu_name, key.compute_capability):
                log.info("removing outdated plan %s", plan.name)
                plan.unlink(missing_ok=True)
                sidecar_path(plan).unlink(missing_ok=True)
        return build
