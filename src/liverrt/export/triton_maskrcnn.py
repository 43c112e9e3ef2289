"""A split Mask R-CNN export as Triton models: three ONNX graphs and a Python-backend model between them.

See :mod:`liverrt.export.triton` for the layout and :mod:`liverrt.runtime.triton_maskrcnn`
for what the Python model does.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import liverrt
from liverrt.artifacts import SplitArtifact
from liverrt.artifacts.info import SPLIT_KEY
from liverrt.export.triton_repo import (
    PYTHON_PLATFORM,
    ModelFiles,
    TensorConfig,
    TritonOptions,
    TritonRepo,
    check_targets,
    client_example_text,
    install,
    read_graph,
    record,
)
from liverrt.hashing import sha256_file
from liverrt.runtime.triton_maskrcnn import INPUT, MODEL_PY, OUTPUTS, PARTS_PARAMETER

log = logging.getLogger(__name__)


def write_maskrcnn_models(artifact: Path, repo: Path, options: TritonOptions, *, overwrite: bool) -> TritonRepo:
    """Write the split Mask R-CNN whose rpn graph is ``artifact`` as models ``name`` and ``name_rpn|box|mask``.

    ``options`` come resolved and checked (:func:`liverrt.export.triton.write_triton_repo`).
    """
    name, version, max_batch_size = options.name, options.version, options.max_batch_size
    paths = SplitArtifact.open(artifact).paths  # the box and mask graphs beside it, checked against their sha256
    models, parts = [], {}
    params = {}
    for part, path in paths.items():
        batched = part == "rpn"  # box/mask: the first axis counts RoIs of the whole batch
        inputs, outputs, meta = read_graph(path, batched=batched)
        model_name = f"{name}_{part}"
        parts[part] = {"model": model_name, "inputs": [t.name for t in inputs], "outputs": [t.name for t in outputs]}
        meta = {key: v for key, v in meta.items() if key != SPLIT_KEY}
        if part == "rpn":
            params = dict(meta)
        text = options.config_text(model_name, "onnxruntime", max_batch_size if batched else 0, inputs, outputs,
                                   {**meta, "liverrt.artifact_sha256": sha256_file(path)})
        models.append(ModelFiles(model_name, text, None, {"model.onnx": path}))
    config = json.loads(params["liverrt.model"])["config"]  # read and checked with the rpn graph above
    size = int(config["image_size"])  # what the Python model checks requests by
    k = int(config.get("max_instances", 8))
    inputs = [TensorConfig(INPUT, "TYPE_FP32", (1, size, size))]
    shapes = {"prob": (1, size, size), "scores": (k,), "boxes": (k, 4)}
    outputs = [TensorConfig(o, "TYPE_FP32", shapes[o]) for o in OUTPUTS]
    params.pop("liverrt.part", None)
    params.update({PARTS_PARAMETER: json.dumps(parts, sort_keys=True), "liverrt.artifact_sha256": sha256_file(artifact)})
    text = options.config_text(name, PYTHON_PLATFORM, max_batch_size, inputs, outputs, params, kind="KIND_CPU")
    example = client_example_text(name, inputs[0], outputs[0], max_batch_size, params)
    models.insert(0, ModelFiles(name, text, example, {"model.py": MODEL_PY.replace("__VERSION__", liverrt.__version__)}))
    check_targets(repo, models, version, overwrite, list(paths.values()))
    install(repo, models, version)
    record(repo, models)
    log.info("wrote Triton models %s (Python, BLS) and %s version %d to %s", name,
             ", ".join(p["model"] for p in parts.values()), version, repo)
    model_dir = repo / name
    return TritonRepo(repo=repo, name=name, version=version, platform=PYTHON_PLATFORM, max_batch_size=max_batch_size,
                      model_dir=model_dir, config=model_dir / "config.pbtxt", model=model_dir / str(version) / "model.py",
                      client_example=model_dir / "client_example.py", inputs=tuple(inputs), outputs=tuple(outputs),
                      parts=tuple(p["model"] for p in parts.values()))
