"""onnxruntime engine for ONNX files written by ``liverrt export``.

Providers: CPU (default), CUDA and the TensorRT execution provider when
onnxruntime-gpu is installed (``providers=["TensorrtExecutionProvider",
"CUDAExecutionProvider"]``). On CUDA the input is bound once per call with IO
binding and the outputs come back in one copy. A split Mask R-CNN export
(``liverrt.split`` metadata) runs its three graphs with one session each and
the NumPy/Numba pipeline of :mod:`liverrt.runtime.maskrcnn_split` between them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from liverrt.artifacts import SplitArtifact
from liverrt.errors import ArtifactError, BackendUnavailableError
from liverrt.models import graph_outputs, model_class
from liverrt.runtime.base import Engine


class OnnxRuntimeEngine(Engine):
    name = "onnxruntime"

    def __init__(self, path: Path, *, providers: Sequence[str] | None = None, threads: int | None = None) -> None:
        super().__init__(path)
        if self.path.suffix.lower() != ".onnx":
            raise ArtifactError(f"The onnxruntime engine needs an .onnx file; got {self.path}. "
                                "Run `liverrt export CKPT --format onnx --out model.onnx` first.")
        self.providers = list(providers) if providers else ["CPUExecutionProvider"]
        self.threads = threads
        self._session = None
        self._outputs: list[str] = []
        self._single = False

    def _activate(self) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:  # pragma: no cover - onnxruntime is a core dependency
            raise BackendUnavailableError("onnxruntime is not installed; expected `pip install onnxruntime`.") from exc
        available = ort.get_available_providers()
        missing = [p for p in self.providers if p not in available]
        if missing:
            raise BackendUnavailableError(
                f"onnxruntime providers {missing} are not available here (available: {available}); "
                "for CUDA install liverrt[gpu] (onnxruntime-gpu) instead of onnxruntime."
            )
        self.info  # validates the liverrt metadata before a session is built  # noqa: B018
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if self.threads:
            opts.intra_op_num_threads = int(self.threads)
        self._split = None
        split = SplitArtifact.open(self.path)  # its box and mask graphs, checked against their sha256
        if split is not None:
            from liverrt.runtime.maskrcnn_split import SplitMaskRCNN

            run = ort_split_runner(split.paths, self.providers, opts)
            # empty RoI inputs were checked on the CPU provider only; elsewhere empty FPN levels get a placeholder
            cpu_only = set(self.providers) <= {"CPUExecutionProvider"}
            self._split = SplitMaskRCNN(self.info.model_config, run, empty_levels=cpu_only)  # per_level: run.inputs
            self._session = self._split
            return
        self._session = ort.InferenceSession(str(self.path), sess_options=opts, providers=self.providers)
        # one graph of a model whose export is normally split (the Mask R-CNN): its detections, NMS inside, batch 1
        self._single = model_class(self.info.kind).split_export
        self._input = self._session.get_inputs()[0].name
        self._outputs = [o.name for o in self._session.get_outputs()]
        expected = graph_outputs(self.info.kind)
        if set(expected) - set(self._outputs):  # metadata copied onto another graph, or edited
            raise ArtifactError(f"{self.path}: its metadata says a {self.info.kind!r} model but the graph's outputs are "
                                f"{self._outputs}; expected {list(expected)}: re-export the model.")
        self._cuda = "CUDAExecutionProvider" in self._session.get_providers()

    def _infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        assert self._session is not None
        if self._split is not None:
            return self._split.predict(batch)
        if self._single:
            return single_maskrcnn_predict(self._session, batch, self.info.model_config)
        if self._cuda:  # IO binding: one host->device copy in, device buffers out
            binding = self._session.io_binding()
            binding.bind_cpu_input(self._input, batch)
            for name in self._outputs:
                binding.bind_output(name, "cuda")
            self._session.run_with_iobinding(binding)
            values = binding.copy_outputs_to_cpu()
        else:
            values = self._session.run(self._outputs, {self._input: batch})
        return {name: np.asarray(v, dtype=np.float32) for name, v in zip(self._outputs, values, strict=True)}

    def _deactivate(self) -> None:
        self._session = None
        self._split = None


def single_maskrcnn_predict(session, batch: np.ndarray, config: dict) -> dict[str, np.ndarray]:
    """Run a one-graph Mask R-CNN export image by image; the outputs of ``LiverMaskRCNN.predict``."""
    import torch

    from liverrt.models.maskrcnn import instances_to_outputs

    name = session.get_inputs()[0].name
    outs = [o.name for o in session.get_outputs()]
    dets = []
    for image in batch:
        values = dict(zip(outs, session.run(outs, {name: np.ascontiguousarray(image[None])}), strict=True))
        dets.append({k: torch.from_numpy(np.asarray(values[k])) for k in ("boxes", "scores", "masks")})
    out = instances_to_outputs(dets, batch.shape[-2:], config["score_threshold"], config["max_instances"])
    return {k: v.numpy() for k, v in out.items()}


def ort_split_runner(paths: dict[str, Path], providers: Sequence[str], options=None):
    """A ``run(part, inputs)`` callable over one onnxruntime session per split graph (``run.inputs``: input names)."""
    import onnxruntime as ort

    sessions = {part: ort.InferenceSession(str(p), sess_options=options, providers=list(providers))
                for part, p in paths.items()}
    outputs = {part: [o.name for o in s.get_outputs()] for part, s in sessions.items()}
    inputs = {part: [i.name for i in s.get_inputs()] for part, s in sessions.items()}

    def run(part: str, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        values = sessions[part].run(outputs[part], {k: feed[k] for k in inputs[part]})
        return dict(zip(outputs[part], values, strict=True))

    run.inputs = inputs  # the graphs' input names: which export version they are
    return run
