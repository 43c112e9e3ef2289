"""Engines (one contract, pluggable backends) and the Segmenter built on them."""

from __future__ import annotations

from pathlib import Path

from liverrt.errors import InputError
from liverrt.models.bundled import resolve_model
from liverrt.runtime.base import Engine, InputSpec, require_task
from liverrt.runtime.onnxruntime_engine import OnnxRuntimeEngine
from liverrt.runtime.tensorrt_engine import TensorRTEngine
from liverrt.runtime.torch_engine import TorchEngine

#: engine name -> its class (constructed as ``cls(path, **options)``; nothing heavy loads before activation)
ENGINES: dict[str, type[Engine]] = {"torch": TorchEngine, "onnxruntime": OnnxRuntimeEngine, "tensorrt": TensorRTEngine}
#: other names users type for an engine
ALIASES = {"trt": "tensorrt", "ort": "onnxruntime"}


def engine_names() -> list[str]:
    return list(ENGINES)


def open_engine(name: str, model: str | Path | None = None, **options) -> Engine:
    """An (inactive) engine of backend ``name`` for ``model``: an artifact's path, or a bundled model's name
    (default: the bundled default model). ``with engine:`` activates it."""
    try:
        engine = ENGINES[ALIASES.get(name, name)]
    except KeyError:
        raise InputError(f"Unknown engine {name!r}; expected one of {engine_names()}.") from None
    return engine(resolve_model(model)[0], **options)


__all__ = ["ENGINES", "Engine", "InputSpec", "engine_names", "open_engine", "require_task"]
