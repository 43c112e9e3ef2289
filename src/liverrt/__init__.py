"""liverrt: liver segmentation for abdominal CT, from the study's networks to fast deployments."""

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("liverrt")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"

#: the stable public surface (docs/python-api.md): each is imported on first use (PEP 562), because
#: ``import liverrt`` is what every liverrt module does for ``__version__`` and must not load torch
_PUBLIC = {
    "segment": "liverrt.api",            # a CT in, a liver mask with its affine and volume out
    "LiverSegmentation": "liverrt.api",  # what segment returns
    "read_volume": "liverrt.api",        # one case as liverrt reads it (image, mask, spacing, affine)
    "Volume": "liverrt.data.volume",
    "open_engine": "liverrt.runtime",    # torch / onnxruntime / tensorrt behind one contract
    "Segmenter": "liverrt.runtime.segmenter",
}
#: public subpackages: ``liverrt.metrics`` (Dice, surface distances, the study's Table 6, post-processing)
#: and ``liverrt.export`` (``run_export``, ``ExportOptions``)
_MODULES = ("metrics", "export")

__all__ = ["__version__", *_PUBLIC, *_MODULES]


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(import_module(_PUBLIC[name]), name)
    if name in _MODULES:
        return import_module(f"liverrt.{name}")
    raise AttributeError(f"module 'liverrt' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
