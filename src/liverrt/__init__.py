"""liverrt: liver segmentation for abdominal CT, from the study's networks to fast deployments."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("liverrt")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
