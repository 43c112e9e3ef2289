"""Readers, writers, the phantom generator, preprocessing and case splits."""

from liverrt.data.volume import Volume, default_affine

__all__ = ["Volume", "default_affine"]
