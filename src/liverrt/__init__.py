"""liverrt: liver segmentation for abdominal CT, from the study's networks to fast deployments."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("liverrt")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"

__all__ = ["__version__", "segment"]


def __getattr__(name: str):
    """``liverrt.segment`` (:func:`liverrt.api.segment`), imported on first use: ``import liverrt`` is what
    every liverrt module does for ``__version__``, and must not load torch and onnxruntime (PEP 562)."""
    if name == "segment":
        from liverrt.api import segment

        return segment
    raise AttributeError(f"module 'liverrt' has no attribute {name!r}")
