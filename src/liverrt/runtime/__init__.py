"""Engines (one contract, pluggable backends) and the Segmenter built on them."""

from __future__ import annotations

from pathlib import Path

from liverrt.errors import InputError
from liverrt.runtime.base import Engine, InputSpec, require_task


def _torch(path: Path, **kw) -> Engine:
    from liverrt.runtime.torch_engine import TorchEngine

    return TorchEngine(path, **kw)


def _onnxruntime(path: Path, **kw) -> Engine:
    from liverrt.runtime.onnxruntime_engine import OnnxRuntimeEngine

    return OnnxRuntimeEngine(path, **kw)


def _tensorrt(path: Path, **kw) -> Engine:
    from liverrt.runtime.tensorrt_engine import TensorRTEngine

    return TensorRTEngine(path, **kw)


#: engine name -> factory(path, **options); backends are imported lazily.
ENGINES = {"torch": _torch, "onnxruntime": _onnxruntime, "tensorrt": _tensorrt}
#: other names users type for an engine
ALIASES = {"trt": "tensorrt", "ort": "onnxruntime"}


def engine_names() -> list[str]:
    return list(ENGINES)


def open_engine(name: str, path: Path, **options) -> Engine:
    """An (inactive) engine of backend ``name`` for the artifact at ``path``."""
    try:
        factory = ENGINES[ALIASES.get(name, name)]
    except KeyError:
        raise InputError(f"Unknown engine {name!r}; expected one of {engine_names()}.") from None
    return factory(Path(path), **options)


__all__ = ["ENGINES", "Engine", "InputSpec", "engine_names", "open_engine", "require_task"]
