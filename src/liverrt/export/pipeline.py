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
from dataclasses import dataclass, field
from pathlib import Path

from liverrt.artifacts.metadata import PRECISIONS
from liverrt.artifacts.split import SplitArtifact
from liverrt.atomic import check_outputs, writes_outputs
from liverrt.data.volume import Volume
from liverrt.errors import ExportError, InputError
from liverrt.models import model_class

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


@writes_outputs("liverrt export")
def run_export(checkpoint: Path, out: Path, *, overwrite: bool = False, **options) -> ExportResult:
    """Export ``checkpoint`` to ``out`` (see :func:`_run_export` for the options).

    Existing artifacts are refused unless ``overwrite``, which also lets the export replace files
    liverrt did not write (:func:`liverrt.atomic.overwrite_allowed`); the checkpoint never.
    """
    return _run_export(checkpoint, out, overwrite=overwrite, **options)


def _run_export(
    checkpoint: Path,
    out: Path,
    *,
    fmt: str = "onnx",
    precision: str = "fp32",
    opset: int = 18,
    exporter: str = "dynamo",
    verify_volumes: list[Volume] | None = None,
    verify: bool = True,
    calib_volumes: list[Volume] | None = None,
    calib_slices: int = 64,
    calib_method: str | None = None,
    int8_target: str | None = None,
    progress: Callable[[int, int, str], None] | None = None,
    atol: float = 1e-4,
    batch: str = "1:8:32",
    workspace_mb: int = 4096,
    triton: dict | None = None,
    limits: dict | None = None,
    overwrite: bool = False,
    maskrcnn_graph: str = "split",
) -> ExportResult:
    """Run the export chain; ``out`` is the ONNX file (format onnx), the plan folder (tensorrt) or the
    Triton repository (triton). Existing ONNX files are not replaced unless ``overwrite``.
    ``calib_method`` sets the INT8 activation ranges (see :func:`liverrt.export.precision.to_int8`); by
    default the model class's ``default_calib_method``: ``search`` for the U-Net and DnCNN-SR, ``minmax``
    for the Mask R-CNN backbone (its ~580 activation scales would take the search very long on a CPU).
    The model's class also says which formats and precisions it supports (``unsupported_formats``).
    ``progress(done, total, info)`` follows the search. ``int8_target`` (``onnxruntime`` | ``tensorrt``; default: ``tensorrt`` for --format
    tensorrt, else ``onnxruntime``) decides whether Relu outputs may use zero point -128 (faster on
    onnxruntime, refused by TensorRT)."""
    from liverrt.artifacts import artifact_info
    from liverrt.export.onnx import export_onnx

    if fmt not in FORMATS:
        raise InputError(f"format {fmt!r}: expected one of {FORMATS}.")
    if precision not in PRECISIONS:
        raise InputError(f"precision {precision!r}: expected one of {PRECISIONS}.")
    if fmt == "tensorrt" and precision == "int8" and int8_target == "onnxruntime":
        raise InputError("--int8-target onnxruntime makes a graph TensorRT refuses (zero points -128); "
                         "--format tensorrt needs --int8-target tensorrt.")
    out = Path(out)
    if fmt == "onnx":
        if out.suffix.lower() != ".onnx":
            raise InputError(f"--out {out}: expected a .onnx file for --format onnx.")
        work = out.parent
        stem = out.name[: -len(".onnx")]
    else:
        if out.suffix:
            raise InputError(f"--out {out}: expected a folder for --format {fmt} (the plan or the repository).")
        work = out if fmt == "tensorrt" else out.parent / f"{out.name}_onnx"
        stem = Path(checkpoint).stem
    described = model_class(artifact_info(checkpoint).kind)
    if fmt in described.unsupported_formats:
        raise InputError(f"--format {fmt}: {described.unsupported_formats[fmt]}.")
    if precision not in described.precisions:
        raise InputError(f"--precision {precision}: a {described.title} exports to {list(described.precisions)}.")
    if maskrcnn_graph == "single" and (not described.split_export or fmt != "onnx" or precision != "fp32"):
        raise InputError("--maskrcnn-graph single is the one-graph Mask R-CNN for onnxruntime: expected a maskrcnn "
                         "checkpoint, --format onnx and --precision fp32 (precision variants use the split graphs).")
    fp32_path = out if fmt == "onnx" and precision == "fp32" else work / f"{stem}.fp32.onnx"
    targets = [fp32_path] + ([out if fmt == "onnx" else work / f"{stem}.{precision}.onnx"]
                             if precision != "fp32" else [])
    existing = [str(p) for t in targets for p in _files(t) if p.exists()]
    if existing and not overwrite:
        raise InputError(f"{', '.join(existing)} already exist(s); pass --overwrite to replace, or choose "
                         "another --out.")
    check_outputs(t.parent / f"{t.name}.verify.{ext}" for t in targets for ext in ("json", "md"))
    work.mkdir(parents=True, exist_ok=True)
    result = ExportResult()

    t0 = time.perf_counter()
    exported = export_onnx(checkpoint, fp32_path, opset=opset, exporter=exporter, verify_volumes=verify_volumes,
                           atol=atol, maskrcnn_graph=maskrcnn_graph)
    result.rows.append(ExportRow("onnx", "fp32", fp32_path, _size(fp32_path), time.perf_counter() - t0,
                                 f"parity {'passed' if exported.parity.passed else 'FAILED'}"))
    artifact = fp32_path
    if precision != "fp32":
        artifact = _convert(checkpoint, fp32_path, out if fmt == "onnx" else work / f"{stem}.{precision}.onnx",
                            precision, calib_volumes, calib_slices, result, calib_method, progress,
                            int8_target or ("tensorrt" if fmt == "tensorrt" else "onnxruntime"))
    if verify:
        _gate(checkpoint, artifact, verify_volumes, result, limits)
    if fmt == "tensorrt":
        from liverrt.runtime.tensorrt_loader import build_engine

        t0 = time.perf_counter()
        build = build_engine(artifact, out, batch=batch, workspace_mb=workspace_mb)
        result.rows.append(ExportRow("tensorrt", precision, build.plan, _size(build.plan), time.perf_counter() - t0,
                                     "not verified" if not verify else ""))
        if verify:  # the plan that gets deployed, not only the ONNX it came from
            _gate(checkpoint, build.plan, verify_volumes, result, limits, engine="tensorrt",
                  extra_files=(build.sidecar,))
    elif fmt == "triton":
        from liverrt.export.triton import write_triton_repo

        t0 = time.perf_counter()
        opts = {k: v for k, v in (triton or {}).items() if v is not None}
        opts.setdefault("name", Path(checkpoint).stem)
        repo = write_triton_repo(artifact, out, **opts)
        size = sum(_size(repo.repo / m) for m in (repo.name, *repo.parts))  # Mask R-CNN: four models
        result.rows.append(ExportRow("triton", precision, repo.model_dir, size,
                                     time.perf_counter() - t0,
                                     "from the verified ONNX" if verify else "from the ONNX (parity only: --no-verify)"))
    return result


def default_calib_method(kind: str) -> str:
    """The INT8 activation ranges ``run_export`` uses for a model kind when none is asked for (its class says)."""
    return model_class(kind).default_calib_method


def _convert(checkpoint, fp32_path: Path, target: Path, precision: str, calib_volumes, calib_slices: int,
             result: ExportResult, calib_method: str | None = None, progress=None,
             int8_target: str = "onnxruntime") -> Path:
    from liverrt.artifacts import artifact_info
    from liverrt.export import precision as prec

    info = artifact_info(fp32_path)
    t0 = time.perf_counter()
    split = SplitArtifact.open(fp32_path)
    if split is not None:
        # the backbone/FPN/RPN graph holds nearly all the arithmetic: it gets the precision; the RoI heads,
        # fed by RoIAlign on runtime-made boxes, stay fp32 (their calibration would need the runtime's RoIs)
        SplitArtifact(target).copy_heads_from(split)
    if precision == "fp16":
        prec.to_fp16(fp32_path, target)
    else:
        if calib_volumes is None:
            from liverrt.export.gate import default_volumes

            log.warning("--precision int8 without --calib: calibrating on phantom slices; pass --calib with a "
                        "case-level calibration split of your data for real use")
            calib_volumes, source = default_volumes(info.spec.size, cases=2, seed=2000), "phantoms"
        else:
            source = f"{len(calib_volumes)} cases: " + ", ".join(v.case_id for v in calib_volumes[:8])
        slices = prec.calibration_slices(calib_volumes, info.spec, n=calib_slices)
        method = calib_method or default_calib_method(info.kind)
        prec.to_int8(fp32_path, target, slices, calibration_source=source, method=method, progress=progress,
                     target=int8_target)
    if split is not None:  # the rpn graph names its own (copied) heads
        SplitArtifact(target).relink(heads_precision="fp32")
    result.rows.append(ExportRow("onnx", precision, target, _size(target), time.perf_counter() - t0))
    return target


def _gate(checkpoint, artifact: Path, volumes, result: ExportResult, limits: dict | None, *,
          engine: str = "onnxruntime", extra_files: tuple[Path, ...] = ()) -> None:
    """Run the verification gate; on failure delete what this export wrote for ``artifact``."""
    from liverrt.export.gate import verify_artifact

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
