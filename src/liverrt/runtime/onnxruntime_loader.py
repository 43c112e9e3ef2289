"""Loaders for the onnxruntime engine (Polygraphy's ``SessionFromOnnx``): they build what the engine runs.

:class:`SessionFromOnnx` turns a liverrt ONNX file into a *runner*, an object whose
``predict(batch)`` returns the model's named outputs:

* a one-graph model: one InferenceSession, its outputs checked against what the model's class
  declares; on CUDA the input is bound once per call (IO binding) and the outputs come back in one copy;
* a split Mask R-CNN export (``liverrt.split`` metadata): one session per graph and the NumPy/Numba
  pipeline of :mod:`liverrt.runtime.maskrcnn_split` between them;
* the one-graph Mask R-CNN export (torchvision's whole model): image by image, NMS inside.

:class:`~liverrt.runtime.onnxruntime_engine.OnnxRuntimeEngine` only calls ``predict``; a test or a
caller with its own sessions hands the engine another loader.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import onnxruntime as ort
import torch

from liverrt.artifacts import ArtifactInfo, SplitArtifact
from liverrt.errors import ArtifactError, BackendUnavailableError
from liverrt.models import graph_outputs, model_class
from liverrt.models.maskrcnn import instances_to_outputs
from liverrt.runtime.maskrcnn_split import SplitMaskRCNN

CPU = "CPUExecutionProvider"


class Runner(Protocol):
    def predict(self, batch: np.ndarray) -> dict[str, np.ndarray]: ...


#: what the engine calls on activation: the artifact's validated info -> a runner
Loader = Callable[[ArtifactInfo], Runner]


def session_options(threads: int | None = None) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        opts.intra_op_num_threads = int(threads)
    return opts


def check_providers(providers: Sequence[str]) -> None:
    available = ort.get_available_providers()
    missing = [p for p in providers if p not in available]
    if missing:
        raise BackendUnavailableError(
            f"onnxruntime providers {missing} are not available here (available: {available}); "
            "for CUDA install liverrt[gpu] (onnxruntime-gpu) instead of onnxruntime."
        )


class GraphRunner:
    """One session of a one-graph model: image in, the model's named outputs out."""

    def __init__(self, session: ort.InferenceSession) -> None:
        self.session = session
        self.input = session.get_inputs()[0].name
        self.outputs = [o.name for o in session.get_outputs()]
        self.cuda = "CUDAExecutionProvider" in session.get_providers()

    def predict(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        if self.cuda:  # IO binding: one host->device copy in, device buffers out
            binding = self.session.io_binding()
            binding.bind_cpu_input(self.input, batch)
            for name in self.outputs:
                binding.bind_output(name, "cuda")
            self.session.run_with_iobinding(binding)
            values = binding.copy_outputs_to_cpu()
        else:
            values = self.session.run(self.outputs, {self.input: batch})
        return {name: np.asarray(v, dtype=np.float32) for name, v in zip(self.outputs, values, strict=True)}


class SingleGraphMaskRCNN:
    """The one-graph Mask R-CNN export, run image by image (its graph takes batch 1); the outputs of
    ``LiverMaskRCNN.predict``."""

    def __init__(self, session: ort.InferenceSession, config: dict) -> None:
        self.session, self.config = session, config
        self.input = session.get_inputs()[0].name
        self.outputs = [o.name for o in session.get_outputs()]

    def predict(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        dets = []
        for image in batch:
            run = self.session.run(self.outputs, {self.input: np.ascontiguousarray(image[None])})
            values = dict(zip(self.outputs, run, strict=True))
            dets.append({k: torch.from_numpy(np.asarray(values[k])) for k in ("boxes", "scores", "masks")})
        out = instances_to_outputs(dets, batch.shape[-2:], self.config["score_threshold"],
                                   self.config["max_instances"])
        return {k: v.numpy() for k, v in out.items()}


def ort_split_runner(paths: dict[str, Path], providers: Sequence[str], options: ort.SessionOptions | None = None):
    """A ``run(part, inputs)`` callable over one onnxruntime session per split graph (``run.inputs``: input names)."""
    sessions = {part: ort.InferenceSession(str(p), sess_options=options, providers=list(providers))
                for part, p in paths.items()}
    outputs = {part: [o.name for o in s.get_outputs()] for part, s in sessions.items()}
    inputs = {part: [i.name for i in s.get_inputs()] for part, s in sessions.items()}

    def run(part: str, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        values = sessions[part].run(outputs[part], {k: feed[k] for k in inputs[part]})
        return dict(zip(outputs[part], values, strict=True))

    run.inputs = inputs  # the graphs' input names: which export version they are
    return run


class SessionFromOnnx:
    """Builds the runner for a liverrt ONNX file on the given providers (default: the CPU)."""

    def __init__(self, path: Path, *, providers: Sequence[str] | None = None, threads: int | None = None) -> None:
        self.path = Path(path)
        self.providers = list(providers) if providers else [CPU]
        self.threads = threads

    def __call__(self, info: ArtifactInfo) -> Runner:
        check_providers(self.providers)
        opts = session_options(self.threads)
        # its box and mask graphs, checked against their sha256 (the manifest read with the info)
        split = SplitArtifact.open(self.path, info.props)
        if split is not None:
            run = ort_split_runner(split.paths, self.providers, opts)
            # empty RoI inputs were checked on the CPU provider only; elsewhere empty FPN levels get a placeholder
            cpu_only = set(self.providers) <= {CPU}
            return SplitMaskRCNN(info.model_config, run, empty_levels=cpu_only)
        session = ort.InferenceSession(str(self.path), sess_options=opts, providers=self.providers)
        if model_class(info.kind).split_export:  # one graph of a model whose export is normally split
            return SingleGraphMaskRCNN(session, info.model_config)
        found = [o.name for o in session.get_outputs()]
        expected = graph_outputs(info.kind)
        if set(expected) - set(found):  # metadata copied onto another graph, or edited
            raise ArtifactError(f"{self.path}: its metadata says a {info.kind!r} model but the graph's outputs are "
                                f"{found}; expected {list(expected)}: re-export the model.")
        return GraphRunner(session)
