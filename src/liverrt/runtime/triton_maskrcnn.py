"""The split Mask R-CNN served by Triton: a Python-backend model that calls its graphs through BLS.

``liverrt export --format triton`` writes a Mask R-CNN as four models
(:func:`liverrt.export.triton.write_triton_repo`): ``<name>_rpn``,
``<name>_box`` and ``<name>_mask`` are the three ONNX graphs of the split
export (onnxruntime backend, on the GPU or CPU the config asks for), and
``<name>`` is a Python-backend model whose ``model.py`` hands every batch to
:class:`MaskRCNNBLS`. That class runs :class:`liverrt.runtime.maskrcnn_split.SplitMaskRCNN`
(anchor decoding, top-k, NMS, mask pasting in NumPy/Numba) and sends each
graph call to Triton with Business Logic Scripting: the same pipeline as
``liverrt infer --engine onnxruntime`` on the split export, with Triton
scheduling the graphs.

Requests to ``<name>``: ``image`` (N, 1, S, S) float32, preprocessed with the
model's PreprocessSpec (config parameter ``liverrt.preprocess``). Responses:
``prob`` (N, 1, S, S), ``scores`` (N, K), ``boxes`` (N, K, 4) float32, as
:meth:`liverrt.models.maskrcnn.LiverMaskRCNN.predict`. Dynamic batching may
put several requests into one ``execute``; they run as one batch, and a
request that is malformed gets its own error response while the others are
answered.

Triton's Python environment needs liverrt (and so NumPy, Numba, PyTorch, and
Python >= 3.11): this repository or its wheel installed in the server image,
or a conda-pack archive named by the model's ``EXECUTION_ENV_PATH`` parameter
(with a Python backend stub built for its Python version where that differs
from the image's). ``pb`` (the ``triton_python_backend_utils`` module) is
passed in, so this module imports without Triton.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from torch.utils import dlpack

import liverrt
from liverrt.artifacts.metadata import from_props
from liverrt.errors import ArtifactError
from liverrt.kernels.detection import batched_nms, paste_masks
from liverrt.runtime.maskrcnn_split import SplitMaskRCNN

INPUT = "image"
OUTPUTS = ("prob", "scores", "boxes")
#: config parameter naming the three graph models and their outputs
PARTS_PARAMETER = "liverrt.triton_parts"


class MaskRCNNBLS:
    """The body of the ``TritonPythonModel`` written for a split Mask R-CNN.

    ``args`` is what Triton passes to ``initialize`` (``model_config`` is the
    model's config as a JSON string, ``model_version`` the version being
    loaded, which the three graph models share); ``pb`` is
    ``triton_python_backend_utils``.

    The FPN feature maps stay with Triton: the rpn response's ``feat_*``
    tensors are handed to the box and mask requests as they are (on the GPU
    when the graph models run there). Only what the NumPy/Numba steps read
    comes to this process: objectness and box deltas, class logits, box
    regression and mask logits.
    """

    def __init__(self, pb: Any, args: dict[str, str]) -> None:
        self.pb = pb
        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        try:  # the same schema as every artifact (liverrt.artifacts.metadata): kind, config, PreprocessSpec, threshold
            meta = from_props(params, source=f"Triton model {config.get('name')!r} (config.pbtxt)", fmt="triton")
        except ArtifactError as exc:
            raise pb.TritonModelException(str(exc)) from None
        try:
            self.parts: dict[str, dict] = json.loads(params[PARTS_PARAMETER])
            model = {"config": meta.config}
            self.size = int(model["config"]["image_size"])
        except (KeyError, TypeError, ValueError) as exc:
            raise pb.TritonModelException(
                f"Model {config.get('name')!r}: config.pbtxt lacks liverrt's parameters ({exc!r}); expected the "
                f"config written by `liverrt export --format triton` ({PARTS_PARAMETER}, liverrt.model).") from None
        if set(self.parts) != {"rpn", "box", "mask"}:
            raise pb.TritonModelException(f"{PARTS_PARAMETER} names {sorted(self.parts)}; expected rpn, box and mask.")
        self.version = int(args.get("model_version") or -1)  # -1: the graphs' latest version
        self.split = SplitMaskRCNN(model["config"], self._run, per_level="rois" not in self.parts["box"]["inputs"])
        self._cpu = None
        if hasattr(pb, "PreferredMemory"):  # newer Triton releases: ask for outputs in CPU memory
            self._cpu = pb.PreferredMemory(pb.TRITONSERVER_MEMORY_CPU, 0)
        wrote = params.get("liverrt.version")
        if wrote and wrote != liverrt.__version__ and hasattr(pb, "Logger"):
            pb.Logger.log_warn(f"liverrt {liverrt.__version__} serves a model exported by liverrt {wrote}")
        _warm_up()  # compile (or load) the Numba kernels now, not on the first request

    # -- one graph through BLS ----------------------------------------------
    def _run(self, part: str, feed: dict[str, Any]) -> dict[str, Any]:
        """Run graph ``part``; ``feed`` values are arrays or tensors of an earlier response (``feat_*``)."""
        pb, spec = self.pb, self.parts[part]
        keep = [n for n in spec["outputs"] if n.startswith("feat_")] if part == "rpn" else []
        kwargs = {"model_version": self.version}
        if self._cpu is not None and not keep:  # the rpn's features may stay where the graph made them
            kwargs["preferred_memory"] = self._cpu
        inputs = [feed[k] if not isinstance(feed[k], np.ndarray) else pb.Tensor(k, np.ascontiguousarray(feed[k]))
                  for k in spec["inputs"]]
        request = pb.InferenceRequest(model_name=spec["model"], requested_output_names=list(spec["outputs"]),
                                      inputs=inputs, **kwargs)
        response = request.exec()
        if response.has_error():
            raise RuntimeError(f"Triton model {spec['model']!r} ({part} graph) failed: {response.error().message()}")
        out = {}
        for name in spec["outputs"]:
            tensor = pb.get_output_tensor_by_name(response, name)
            out[name] = tensor if name in keep else _to_numpy(tensor)
        return out

    # -- requests -----------------------------------------------------------
    def problem(self, x: np.ndarray | None) -> str | None:
        """Why a request's ``image`` cannot run, or None."""
        if x is None:
            return f"Input {INPUT!r} is missing; expected (N, 1, {self.size}, {self.size}) float32."
        if x.dtype != np.float32:
            return f"Input {INPUT!r}: got {x.dtype}, expected float32. Note: preprocess first (liverrt.preprocess)."
        if x.ndim != 4 or x.shape[1:] != (1, self.size, self.size) or x.shape[0] < 1:
            return (f"Input {INPUT!r}: got shape {tuple(x.shape)}, expected (N, 1, {self.size}, {self.size}). "
                    "Note: preprocess first (liverrt.preprocess).")
        if not np.isfinite(x).all():
            return f"Input {INPUT!r} holds NaN or infinite values; expected finite preprocessed slices."
        return None

    def execute(self, requests: list) -> list:
        """One response per request, in order; the valid requests run as one batch."""
        pb = self.pb
        images, problems = [], []
        for request in requests:
            tensor = pb.get_input_tensor_by_name(request, INPUT)
            x = None if tensor is None else _to_numpy(tensor)
            problems.append(self.problem(x))
            images.append(x if problems[-1] is None else None)
        valid = [x for x in images if x is not None]
        out, failure = None, None
        if valid:
            try:
                out = self.split.predict(np.concatenate(valid))
            except Exception as exc:  # a graph or kernel failure answers every request of the batch
                failure = f"Mask R-CNN pipeline failed: {exc}"
        responses, start = [], 0
        for x, problem in zip(images, problems, strict=True):
            if problem is not None or failure is not None:
                responses.append(pb.InferenceResponse(output_tensors=[], error=pb.TritonError(problem or failure)))
                continue
            n = x.shape[0]
            responses.append(pb.InferenceResponse(output_tensors=[
                pb.Tensor(k, np.ascontiguousarray(out[k][start:start + n], dtype=np.float32)) for k in OUTPUTS]))
            start += n
        return responses


def _to_numpy(tensor: Any) -> np.ndarray:
    """A pb_utils.Tensor as a NumPy array, copied to the host when Triton left it on a GPU."""
    if not hasattr(tensor, "is_cpu") or tensor.is_cpu():
        return tensor.as_numpy()

    return dlpack.from_dlpack(tensor.to_dlpack()).cpu().numpy()


def _warm_up() -> None:
    """Run the NMS and mask-pasting kernels once on a tiny input."""

    boxes = np.array([[0, 0, 4, 4], [1, 1, 5, 5]], np.float32)
    batched_nms(boxes, np.array([0.9, 0.8], np.float32), np.zeros(2, np.int64), 0.5)
    paste_masks(np.ones((1, 28, 28), np.float32), boxes[:1], (8, 8))


MODEL_PY = '''\
"""Triton Python-backend model: the liverrt split Mask R-CNN, its graphs called through BLS.

Written by liverrt __VERSION__ (`liverrt export --format triton`). The graphs are
the models named in config.pbtxt parameter "liverrt.triton_parts". Triton's Python
environment needs liverrt __VERSION__ (Python >= 3.11): the liverrt repository or its
wheel installed in the server image, or a conda-pack archive given by the
EXECUTION_ENV_PATH parameter. See liverrt.runtime.triton_maskrcnn for the inputs
and outputs.
"""

import triton_python_backend_utils as pb_utils

from liverrt.runtime.triton_maskrcnn import MaskRCNNBLS


class TritonPythonModel:
    def initialize(self, args):
        self.model = MaskRCNNBLS(pb_utils, args)

    def execute(self, requests):
        return self.model.execute(requests)

    def finalize(self):
        self.model = None
'''
