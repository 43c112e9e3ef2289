"""``liverrt export``: checkpoint -> ONNX -> precision variant -> verified -> TensorRT plan / Triton repository.

Every artifact is kept next to its sidecar: the fp32 ONNX (the source of the
others), the fp16/int8 ONNX, ``verify.json``/``verify.md``, the TensorRT plan
and its JSON, the Triton model folder. An artifact that fails the
verification gate is deleted (its report stays, so the failure can be read)
and the export raises :class:`ExportError`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from liverrt.artifacts import artifact_info
from liverrt.artifacts.checkpoint import read_checkpoint
from liverrt.artifacts.metadata import PRECISIONS
from liverrt.artifacts.split import SplitArtifact
from liverrt.atomic import check_outputs, writes_outputs
from liverrt.data.volume import Volume
from liverrt.errors import ExportError, InputError
from liverrt.export import precision as prec
from liverrt.export.gate import GateLimits, default_volumes, verify_artifact
from liverrt.export.onnx import export_onnx
from liverrt.export.qat import QatOptions, check_volumes, qat_to_int8
from liverrt.export.roi_heads import int8_heads
from liverrt.export.triton import TritonOptions, write_triton_repo
from liverrt.models import model_class
from liverrt.models.base import LiverrtModel
from liverrt.runtime.tensorrt_loader import (
    DEFAULT_BATCH,
    DEFAULT_WORKSPACE_MB,
    build_engine,
    parse_batch_profile,
)

log = logging.getLogger(__name__)

FORMATS = ("onnx", "tensorrt", "triton")


@dataclass
class ExportRow:
    format: str
    precision: str
    path: Path
    size_bytes: int
    seconds: float
    verify: str = "-"


@dataclass
class ExportResult:
    rows: list[ExportRow] = field(default_factory=list)
    verify_report: object | None = None

    def table(self) -> str:
        lines = ["| format | precision | artifact | size | verify | time |", "|---|---|---|---|---|---|"]
        for r in self.rows:
            lines.append(f"| {r.format} | {r.precision} | {r.path} | {r.size_bytes / 1e6:.1f} MB | {r.verify} | "
                         f"{r.seconds:.1f} s |")
        return "\n".join(lines)


def _files(artifact: Path) -> list[Path]:
    """The files of an ONNX artifact: itself, and for a split Mask R-CNN its two siblings."""
    return list(SplitArtifact(artifact).paths.values()) if Path(artifact).suffix == ".onnx" else [Path(artifact)]


def _size(path: Path) -> int:
    path = Path(path)
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return sum(p.stat().st_size for p in _files(path) if p.is_file())


@dataclass(frozen=True)
class ExportOptions:
    """What an export makes, apart from the data it reads: format, precision, exporter, INT8 calibration,
    the gate's limits and the TensorRT and Triton settings. Checked when made (before any work).

    ``calib_method`` sets the INT8 activation ranges (:func:`liverrt.export.precision.to_int8`); by default
    the model class's ``default_calib_method``: ``search`` for the U-Net and DnCNN-SR, ``minmax`` for the
    Mask R-CNN backbone (its ~580 activation scales would take the search very long on a CPU).
    ``int8_target`` (``onnxruntime`` | ``tensorrt``; default ``tensorrt`` for format tensorrt, else
    ``onnxruntime``) decides whether Relu outputs may use zero point -128 (faster on onnxruntime, refused
    by TensorRT). ``limits`` default to those of the precision (:data:`liverrt.export.gate.LIMITS`).
    ``batch`` is the TensorRT optimisation profile (MIN:OPT:MAX); ``triton`` the Triton model settings
    (its ``name`` defaults to the checkpoint's stem).
    ``qat``: quantization-aware fine-tuning on the calibration cases before the INT8 graph is written
    (:mod:`liverrt.export.qat`; ``True`` for the default :class:`~liverrt.export.qat.QatOptions`); int8 only,
    for model classes with ``qat_supported``, and its ranges are learned (no ``calib_method``).
    ``int8_heads``: a split Mask R-CNN's RoI heads in INT8 too (:mod:`liverrt.export.roi_heads`), else fp32.
    """

    fmt: str = "onnx"
    precision: str = "fp32"
    opset: int = 18
    exporter: str = "dynamo"
    atol: float = 1e-4
    verify: bool = True
    limits: GateLimits | None = None
    calib_slices: int = 64
    calib_method: str | None = None
    int8_target: str | None = None
    maskrcnn_graph: str = "split"
    batch: tuple[int, int, int] | str = DEFAULT_BATCH
    workspace_mb: int = DEFAULT_WORKSPACE_MB
    triton: TritonOptions = field(default_factory=TritonOptions)
    qat: QatOptions | bool | None = None
    int8_heads: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.qat, bool):
            object.__setattr__(self, "qat", QatOptions() if self.qat else None)
        if self.qat is not None and self.precision != "int8":
            raise InputError(f"--qat fine-tunes for INT8: expected --precision int8, got {self.precision}.")
        if self.qat is not None and self.calib_method is not None:
            raise InputError(f"--calib-method {self.calib_method} sets post-training ranges; --qat learns them "
                             "(expected one of the two).")
        if self.fmt not in FORMATS:
            raise InputError(f"format {self.fmt!r}: expected one of {FORMATS}.")
        if self.precision not in PRECISIONS:
            raise InputError(f"precision {self.precision!r}: expected one of {PRECISIONS}.")
        if self.int8_target is None:
            object.__setattr__(self, "int8_target", "tensorrt" if self.fmt == "tensorrt" else "onnxruntime")
        if self.fmt == "tensorrt" and self.precision == "int8" and self.int8_target == "onnxruntime":
            raise InputError("--int8-target onnxruntime makes a graph TensorRT refuses (zero points -128); "
                             "--format tensorrt needs --int8-target tensorrt.")
        object.__setattr__(self, "batch", parse_batch_profile(self.batch))

    def check_model(self, described: type[LiverrtModel]) -> None:
        """What the model's class supports (its formats, precisions and graph forms)."""
        if self.fmt in described.unsupported_formats:
            raise InputError(f"--format {self.fmt}: {described.unsupported_formats[self.fmt]}.")
        if self.precision not in described.precisions:
            raise InputError(f"--precision {self.precision}: a {described.title} exports to "
                             f"{list(described.precisions)}.")
        if self.qat is not None and not described.qat_supported:
            raise InputError(f"--qat: quantization-aware fine-tuning is not available for a {described.title}; "
                             "expected a model class with qat_supported (the U-Net).")
        if self.maskrcnn_graph == "single" and (not described.split_export or self.fmt != "onnx"
                                                or self.precision != "fp32"):
            raise InputError("--maskrcnn-graph single is the one-graph Mask R-CNN for onnxruntime: expected a "
                             "maskrcnn checkpoint, --format onnx and --precision fp32 (precision variants use the "
                             "split graphs).")


@dataclass(frozen=True)
class _Targets:
    """Where an export writes: the fp32 ONNX (the source of every other artifact) and the precision variant."""

    work: Path
    fp32: Path
    variant: Path | None  # None for fp32

    @classmethod
    def plan(cls, checkpoint: Path, out: Path, options: ExportOptions) -> _Targets:
        if options.fmt == "onnx":
            if out.suffix.lower() != ".onnx":
                raise InputError(f"--out {out}: expected a .onnx file for --format onnx.")
            work, stem = out.parent, out.name[: -len(".onnx")]
        else:
            if out.suffix:
                raise InputError(f"--out {out}: expected a folder for --format {options.fmt} (the plan or the "
                                 "repository).")
            work = out if options.fmt == "tensorrt" else out.parent / f"{out.name}_onnx"
            stem = Path(checkpoint).stem
        onnx_out = out if options.fmt == "onnx" else None
        if options.precision == "fp32":
            return cls(work, onnx_out or work / f"{stem}.fp32.onnx", None)
        return cls(work, work / f"{stem}.fp32.onnx", onnx_out or work / f"{stem}.{options.precision}.onnx")

    @property
    def onnx(self) -> list[Path]:
        return [self.fp32] + ([self.variant] if self.variant else [])

    def check(self, overwrite: bool) -> None:
        """Refuse existing ONNX files unless ``overwrite``, and reports liverrt did not write (before any work)."""
        existing = [str(p) for t in self.onnx for p in _files(t) if p.exists()]
        if existing and not overwrite:
            raise InputError(f"{', '.join(existing)} already exist(s); pass --overwrite to replace, or choose "
                             "another --out.")
        check_outputs(t.parent / f"{t.name}.verify.{ext}" for t in self.onnx for ext in ("json", "md"))


@writes_outputs("liverrt export")
def run_export(checkpoint: Path, out: Path, options: ExportOptions | None = None, *,
               verify_volumes: list[Volume] | None = None, calib_volumes: list[Volume] | None = None,
               progress: Callable[[int, int, str], None] | None = None, overwrite: bool = False,
               **fields) -> ExportResult:
    """Export ``checkpoint`` to ``out``: the ONNX file (format onnx), the plan folder (tensorrt) or the
    Triton repository (triton), as ``options`` say (an :class:`ExportOptions`, or its fields as keywords).

    The gate runs on ``verify_volumes`` (default: phantoms); INT8 calibrates on ``calib_volumes``
    (default: phantoms, with a warning; QAT needs them, with masks). ``progress(done, total, info)`` follows the INT8 search.
    Existing artifacts are refused unless ``overwrite``, which also lets the export replace files
    liverrt did not write (:func:`liverrt.atomic.overwrite_allowed`); the checkpoint never.
    """
    if options is not None and fields:
        raise TypeError("run_export: pass an ExportOptions or its fields as keywords, not both")
    options = options if options is not None else ExportOptions(**fields)
    out = Path(out)
    targets = _Targets.plan(checkpoint, out, options)
    options.check_model(model_class(artifact_info(checkpoint).kind))
    if options.qat is not None:
        check_volumes(calib_volumes, options.qat)
    targets.check(overwrite)
    targets.work.mkdir(parents=True, exist_ok=True)

    result = ExportResult()
    artifact = _export_fp32(checkpoint, targets.fp32, options, verify_volumes, result)
    if targets.variant is not None:
        artifact = _convert(checkpoint, targets.fp32, targets.variant, options, calib_volumes, progress, result)
    if options.verify:
        _gate(checkpoint, artifact, verify_volumes, result, options.limits)
    if options.fmt == "tensorrt":
        _build_plan(checkpoint, artifact, out, options, verify_volumes, result)
    elif options.fmt == "triton":
        _write_triton(checkpoint, artifact, out, options, overwrite, result)
    return result


def _export_fp32(checkpoint: Path, path: Path, options: ExportOptions, verify_volumes, result: ExportResult) -> Path:
    t0 = time.perf_counter()
    exported = export_onnx(checkpoint, path, opset=options.opset, exporter=options.exporter,
                           verify_volumes=verify_volumes, atol=options.atol, maskrcnn_graph=options.maskrcnn_graph)
    result.rows.append(ExportRow("onnx", "fp32", path, _size(path), time.perf_counter() - t0,
                                 f"parity {'passed' if exported.parity.passed else 'FAILED'}"))
    return path


def _build_plan(checkpoint: Path, artifact: Path, out: Path, options: ExportOptions, verify_volumes,
                result: ExportResult) -> None:
    t0 = time.perf_counter()
    build = build_engine(artifact, out, batch=options.batch, workspace_mb=options.workspace_mb)
    result.rows.append(ExportRow("tensorrt", options.precision, build.plan, _size(build.plan),
                                 time.perf_counter() - t0, "" if options.verify else "not verified"))
    if options.verify:  # the plan that gets deployed, not only the ONNX it came from
        _gate(checkpoint, build.plan, verify_volumes, result, options.limits, engine="tensorrt",
              extra_files=(build.sidecar,))


def _write_triton(checkpoint: Path, artifact: Path, out: Path, options: ExportOptions, overwrite: bool,
                  result: ExportResult) -> None:
    t0 = time.perf_counter()
    triton = options.triton if options.triton.name else replace(options.triton, name=Path(checkpoint).stem)
    repo = write_triton_repo(artifact, out, triton, overwrite=overwrite)
    size = sum(_size(repo.repo / m) for m in (repo.name, *repo.parts))  # Mask R-CNN: four models
    result.rows.append(ExportRow("triton", options.precision, repo.model_dir, size, time.perf_counter() - t0,
                                 "from the verified ONNX" if options.verify
                                 else "from the ONNX (parity only: --no-verify)"))


def default_calib_method(kind: str) -> str:
    """The INT8 activation ranges ``run_export`` uses for a model kind when none is asked for (its class says)."""
    return model_class(kind).default_calib_method


def _convert(checkpoint, fp32_path: Path, target: Path, options: ExportOptions, calib_volumes, progress,
             result: ExportResult) -> Path:
    info = artifact_info(fp32_path)
    t0 = time.perf_counter()
    split = SplitArtifact.open(fp32_path)
    with_int8_heads = split is not None and options.precision == "int8" and options.int8_heads
    if split is not None and not with_int8_heads:  # fp16 (and --fp32-heads): the precision is the rpn graph's alone
        SplitArtifact(target).copy_heads_from(split)
    if options.precision == "fp16":
        prec.to_fp16(fp32_path, target)
    else:
        if calib_volumes is None:
            log.warning("--precision int8 without --calib: calibrating on phantom slices; pass --calib with a "
                        "case-level calibration split of your data for real use")
            calib_volumes, source = default_volumes(info.spec.size, cases=2, seed=2000), "phantoms"
        else:
            source = f"{len(calib_volumes)} cases: " + ", ".join(v.case_id for v in calib_volumes[:8])
        if options.qat is not None:
            bce_weight = (read_checkpoint(checkpoint).get("train_config") or {}).get("bce_weight", 1.0)
            qat_to_int8(fp32_path, target, calib_volumes, options=options.qat, target=options.int8_target,
                        calib_slices=options.calib_slices, bce_weight=float(bce_weight),
                        calibration_source=source, progress=progress)
        else:
            slices = prec.calibration_slices(calib_volumes, info.spec, n=options.calib_slices)
            method = options.calib_method or default_calib_method(info.kind)
            heads = None
            if with_int8_heads:  # calibrated on the RoIs the split pipeline makes from the same slices, before
                # anything is written: slices the heads cannot be calibrated on leave no rpn graph behind
                heads = int8_heads(fp32_path, slices, target=options.int8_target, method=method)
            prec.to_int8(fp32_path, target, slices, calibration_source=source, method=method,
                         progress=progress, target=options.int8_target)
            if heads is not None:
                heads.write(target)
    if split is not None and not with_int8_heads:  # the rpn graph names its own (copied) heads
        SplitArtifact(target).relink(heads_precision="fp32")
    result.rows.append(ExportRow("onnx", options.precision, target, _size(target), time.perf_counter() - t0))
    return target


def _gate(checkpoint, artifact: Path, volumes, result: ExportResult, limits: GateLimits | None, *,
          engine: str = "onnxruntime", extra_files: tuple[Path, ...] = ()) -> None:
    """Run the verification gate; on failure delete what this export wrote for ``artifact``."""

    artifact = Path(artifact)
    report = verify_artifact(checkpoint, artifact, volumes, limits=limits, engine=engine)
    result.verify_report = report
    json_path, md_path = report.write(artifact.parent, stem=artifact.name)
    row = next(r for r in result.rows if r.path == artifact)
    row.verify = ("PASSED: " if report.passed else "FAILED: ") + report.summary()
    if not report.passed:
        for p in [*_files(artifact), *extra_files]:
            p.unlink(missing_ok=True)
        raise ExportError(f"verification failed for {artifact} ({'; '.join(report.failures)}); the artifact was "
                          f"removed, the report is in {md_path}.")
