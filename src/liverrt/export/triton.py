"""A liverrt ONNX file or TensorRT plan -> one model of a Triton Inference Server model repository.

Layout written (only ``<repo>/<name>/`` is touched; a repository may hold other models)::

    <repo>/<name>/config.pbtxt        ModelConfig in protobuf text format
    <repo>/<name>/client_example.py   tritonclient.http example matching the config
    <repo>/<name>/<version>/model.onnx   (or model.plan)

A split Mask R-CNN export (its main .onnx, the rpn graph) becomes four models:
``<name>_rpn`` (dynamic batch), ``<name>_box`` and ``<name>_mask``
(max_batch_size 0: they take the whole batch's feature maps and its RoIs, per
FPN level), and
``<name>``, a Python-backend model whose ``model.py`` runs the liverrt split
pipeline between them through BLS (:mod:`liverrt.runtime.triton_maskrcnn`).
Clients talk to ``<name>`` only, as to a U-Net: ``image`` in, ``prob`` out.

Inputs and outputs in ``config.pbtxt`` are read from the ONNX graph (names,
data types, dims without the batch axis, dynamic dims as -1); for a plan they
come from its sidecar JSON. Every ``liverrt.*`` metadata entry (PreprocessSpec,
threshold, ...) is copied into ``parameters`` so a client can preprocess
exactly as in training.
"""

from __future__ import annotations

import logging
from pathlib import Path

from liverrt.artifacts import onnx_metadata
from liverrt.artifacts.info import SPLIT_KEY
from liverrt.atomic import writes_outputs
from liverrt.errors import InputError
from liverrt.export.triton_maskrcnn import write_maskrcnn_models
from liverrt.export.triton_repo import (  # noqa: F401 (the repository writer's public names)
    BACKENDS,
    DEFAULT_MAX_BATCH_SIZE,
    DEFAULT_PREFERRED_BATCH_SIZES,
    KINDS,
    PYTHON_PLATFORM,
    Kind,
    ModelFiles,
    TensorConfig,
    TritonOptions,
    TritonRepo,
    check_targets,
    client_example_text,
    config_text,
    from_onnx,
    from_plan,
    install,
    read_config,
    read_graph,
    record,
)
from liverrt.hashing import sha256_file

log = logging.getLogger(__name__)


@writes_outputs("liverrt export")
def write_triton_repo(artifact: Path, repo: Path, options: TritonOptions | None = None, *,
                      backend: str | None = None, overwrite: bool = False, **fields) -> TritonRepo:
    """Write ``artifact`` as model ``name`` into the Triton model repository ``repo``.

    ``artifact`` is a liverrt ``.onnx`` (backend ``onnxruntime``) or a TensorRT
    ``.plan`` with its sidecar ``<plan>.json`` (backend ``tensorrt``; Triton must
    run the TensorRT version and GPU architecture the plan was built for, which
    the sidecar records and ``parameters`` repeat). ``backend`` is inferred from
    the suffix; if given it must agree. ``options`` (:class:`TritonOptions`, or
    its fields as keywords) say how Triton serves the model; their defaults are
    filled in for the artifact.

    A split Mask R-CNN export (the .onnx that names its box and mask graphs)
    is written as four models (module docstring); its graph models take
    ``kind`` and ``instances``, the Python model runs on the CPU.

    Only ``<repo>/<name>/`` (and a Mask R-CNN's ``<name>_rpn|box|mask/``) is
    written, by :func:`install`: every folder is staged first and moved into
    place, and undone on error. An existing ``<repo>/<name>/<version>`` raises
    :class:`InputError` unless ``overwrite``; the artifact itself is never
    overwritten. Every check runs before anything is written.
    """
    if options is not None and fields:
        raise TypeError("write_triton_repo: pass a TritonOptions or its fields as keywords, not both")
    options = options if options is not None else TritonOptions(**fields)
    artifact, repo = Path(artifact), Path(repo)
    backend = _backend(artifact, backend)
    first = onnx_metadata(artifact) if backend == "onnxruntime" else {}
    split = SPLIT_KEY in first
    if split:  # a split Mask R-CNN: four models, written below
        inputs, outputs, meta, batch_cap = [], [], {}, None
    elif backend == "onnxruntime":
        inputs, outputs, meta, batch_cap = from_onnx(artifact, first.get("liverrt.part"))
    else:
        inputs, outputs, meta, batch_cap = from_plan(artifact)
    options = options.resolved(artifact, batch_cap)
    if split:
        return write_maskrcnn_models(artifact, repo, options, overwrite=overwrite)
    name, version, max_batch_size = options.name, options.version, options.max_batch_size
    model_dir = repo / name
    version_dir = model_dir / str(version)
    model_file = BACKENDS[backend][1]
    parameters = {**meta, "liverrt.artifact_sha256": sha256_file(artifact)}
    text = options.config_text(name, backend, max_batch_size, inputs, outputs, parameters)
    example = client_example_text(name, inputs[0], outputs[0], max_batch_size, parameters)
    model = ModelFiles(name, text, example, {model_file: artifact})
    check_targets(repo, [model], version, overwrite,
                   [artifact, artifact.with_suffix(".json")] if backend == "tensorrt" else [artifact])
    install(repo, [model], version)
    record(repo, [model])
    log.info("wrote Triton model %s version %d (%s, max_batch_size %d) to %s", name, version, backend,
             max_batch_size, repo)
    return TritonRepo(repo=repo, name=name, version=version, platform=BACKENDS[backend][0],
                      max_batch_size=max_batch_size, model_dir=model_dir, config=model_dir / "config.pbtxt",
                      model=version_dir / model_file, client_example=model_dir / "client_example.py",
                      inputs=tuple(inputs), outputs=tuple(outputs))


def _backend(artifact: Path, asked: str | None) -> str:
    """The Triton backend of ``artifact``, by its suffix; ``asked`` (if given) must agree."""
    if not artifact.is_file():
        raise InputError(f"Model {artifact} does not exist; expected a .onnx file or a TensorRT .plan.")
    by_suffix = {v[2]: k for k, v in BACKENDS.items()}
    inferred = by_suffix.get(artifact.suffix.lower())
    if inferred is None:
        raise InputError(f"Model {artifact}: unknown suffix {artifact.suffix!r}; expected one of {sorted(by_suffix)}.")
    if asked is not None and asked != inferred:
        raise InputError(f"backend {asked!r} does not fit {artifact.name}; expected {inferred!r} for a "
                         f"{artifact.suffix} file (one of {sorted(BACKENDS)}).")
    return inferred


# ----------------------------------------------------------------------------- client example

