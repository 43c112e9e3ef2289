"""Pictures: CT slices with predicted and true liver contours."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

PRED_COLOUR = (255, 64, 64)    # red: prediction
TRUE_COLOUR = (64, 255, 64)    # green: ground truth
BOTH_COLOUR = (255, 255, 64)   # yellow: where both contours coincide
#: HU window (centre, width) overlays show CT in: abdominal soft tissue
ABDOMEN_WINDOW = (50.0, 400.0)


def contour(mask: np.ndarray, thickness: int = 1) -> np.ndarray:
    """Inner contour of a 2D bool mask, ``thickness`` pixels wide (image border counts as background)."""
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return mask.copy()
    eroded = ndimage.binary_erosion(mask, iterations=thickness, border_value=0)
    return mask & ~eroded


def overlay(image01: np.ndarray, pred: np.ndarray | None = None, gt: np.ndarray | None = None,
            *, fill_alpha: float = 0.25) -> np.ndarray:
    """RGB uint8 picture of a [0, 1] grey slice with prediction (red, lightly filled)
    and ground-truth (green) contours; yellow where they coincide."""
    grey = (np.clip(image01, 0, 1) * 255).astype(np.uint8)
    rgb = np.repeat(grey[..., None], 3, axis=2).astype(np.float32)
    thick = max(1, round(max(grey.shape) / 256))
    if pred is not None and pred.any():
        rgb[pred] = (1 - fill_alpha) * rgb[pred] + fill_alpha * np.array(PRED_COLOUR, np.float32)
    cp = contour(pred, thick) if pred is not None else np.zeros(grey.shape, bool)
    cg = contour(gt, thick) if gt is not None else np.zeros(grey.shape, bool)
    rgb[cg] = TRUE_COLOUR
    rgb[cp] = PRED_COLOUR
    rgb[cp & cg] = BOTH_COLOUR
    return rgb.astype(np.uint8)


def pick_slices(mask: np.ndarray, k: int) -> list[int]:
    """Up to ``k`` slice indices spread evenly over the slices where ``mask`` is non-empty."""
    nz = np.flatnonzero(mask.reshape(mask.shape[0], -1).any(axis=1))
    if nz.size == 0:
        return [mask.shape[0] // 2]
    if nz.size <= k:
        return nz.tolist()
    return nz[np.round(np.linspace(0, nz.size - 1, k)).astype(int)].tolist()


def save_png(rgb: np.ndarray, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path)
    return path


def thumbnail(image01: np.ndarray, pred: np.ndarray | None = None, gt: np.ndarray | None = None, *,
              size: int = 160, row_scale: float = 1.0) -> np.ndarray:
    """:func:`overlay` of a 2-D ``(h, w)`` slice, at most ``size`` pixels on its longer side.

    ``row_scale`` is the row spacing over the column spacing (e.g. slice thickness over pixel
    width for a coronal plane): rows are stretched by it so the picture keeps its true
    proportions. The grey image is resampled with antialiasing, the masks by area (a pixel is
    liver where at least half of it was), and contours are drawn after resizing, so they stay
    one pixel wide. Returns ``(h', w', 3)`` uint8; ``size`` only ever shrinks a picture.
    """
    h, w = image01.shape
    scale = min(1.0, size / max(h * row_scale, w))
    dims = (max(1, round(w * scale)), max(1, round(h * row_scale * scale)))  # PIL order: (width, height)
    grey = np.asarray(Image.fromarray(np.asarray(image01, np.float32)).resize(dims, Image.Resampling.BILINEAR))

    def fit(mask: np.ndarray | None) -> np.ndarray | None:
        if mask is None:
            return None
        area = Image.fromarray(np.asarray(mask, np.uint8) * 255).resize(dims, Image.Resampling.BILINEAR)
        return np.asarray(area) >= 128

    return overlay(grey, fit(pred), fit(gt))


def png_bytes(rgb: np.ndarray, *, colours: int | None = None) -> bytes:
    """The PNG file of an RGB uint8 picture; ``colours``: quantised to a palette of that many colours
    (an overlay at 64 colours looks the same and takes about half the bytes)."""
    picture = Image.fromarray(rgb)
    if colours is not None:
        picture = picture.quantize(colours)
    buf = io.BytesIO()
    picture.save(buf, format="PNG", optimize=True)
    return buf.getvalue()
