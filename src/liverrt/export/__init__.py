"""Export trained models (ONNX, TensorRT plans, Triton repositories) and verify every export before
it is kept.

The public surface is :func:`run_export` with its :class:`ExportOptions` and :class:`ExportResult`
(``liverrt export`` is a thin command over it); the modules below are liverrt's own.
"""

from importlib import import_module

_PUBLIC = ("run_export", "ExportOptions", "ExportResult")

__all__ = list(_PUBLIC)


def __getattr__(name: str):
    """Imported on first use (PEP 562): the export modules import one another through this package, and
    the pipeline imports them all."""
    if name in _PUBLIC:
        return getattr(import_module("liverrt.export.pipeline"), name)
    raise AttributeError(f"module 'liverrt.export' has no attribute {name!r}")
