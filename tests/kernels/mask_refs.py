"""Naive SciPy/NumPy references and Hypothesis strategies for the mask kernels and metrics.

Everything here is written for clarity, not speed: the kernels in
``liverrt.kernels`` and the functions in ``liverrt.metrics`` are compared
against these definitions.
"""

from __future__ import annotations

import math

import numpy as np
from hypothesis import strategies as st
from scipy import ndimage as ndi

# ---------------------------------------------------------------- strategies


@st.composite
def masks(draw, ndim: int = 2, max_side: int = 16, min_side: int = 1, shape=None):
    """A bool mask: random pixels at a random density, or a smoothed random blob."""
    if shape is None:
        if ndim == 2:
            shape = tuple(draw(st.integers(min_side, max_side)) for _ in range(2))
        else:
            shape = (draw(st.integers(1, 5)),) + tuple(
                draw(st.integers(min_side, max_side)) for _ in range(2)
            )
    seed = draw(st.integers(0, 2**32 - 1))
    kind = draw(st.sampled_from(["noise", "blob", "empty", "full"]))
    rng = np.random.default_rng(seed)
    if kind == "empty":
        return np.zeros(shape, bool)
    if kind == "full":
        return np.ones(shape, bool)
    if kind == "noise":
        return rng.random(shape) < draw(st.floats(0.05, 0.95))
    field = ndi.gaussian_filter(rng.standard_normal(shape), sigma=1.5, mode="constant")
    return field > draw(st.floats(-0.1, 0.2))


@st.composite
def mask_pairs(draw, ndim: int = 2, max_side: int = 16, min_side: int = 1):
    """Two masks of one shape; sometimes the second is a perturbed copy of the first."""
    a = draw(masks(ndim=ndim, max_side=max_side, min_side=min_side))
    if draw(st.booleans()):
        b = draw(masks(shape=a.shape))
    else:
        rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
        b = a ^ (rng.random(a.shape) < draw(st.floats(0.0, 0.2)))
    return a, b


def spacings(ndim: int):
    return st.tuples(*[st.sampled_from([0.5, 0.7, 1.0, 1.3, 2.5, 3.0]) for _ in range(ndim)])


# ---------------------------------------------------------------- morphology


def square(r: int, ndim: int = 2) -> np.ndarray:
    return np.ones((2 * r + 1,) * ndim, bool)


def band_ref(m: np.ndarray, d: int) -> np.ndarray:
    """Mask minus its erosion by a (2d+1)² square, outside = background."""
    if d == 0:
        return np.zeros_like(m)
    return m & ~ndi.binary_erosion(m, square(d), border_value=0)


def dilate_ref(m: np.ndarray, r: int) -> np.ndarray:
    if r == 0:
        return m.copy()
    return ndi.binary_dilation(m, square(r))


def contour_ref(m: np.ndarray) -> np.ndarray:
    """Pixels with a background face neighbour, outside = background."""
    return m & ~ndi.binary_erosion(m, ndi.generate_binary_structure(m.ndim, 1), border_value=0)


def surface_ref(m: np.ndarray) -> np.ndarray:
    """CHAOS surface: m xor erosion with face connectivity, outside = foreground."""
    return m ^ ndi.binary_erosion(m, ndi.generate_binary_structure(m.ndim, 1), border_value=1)


def edt_ref(feat: np.ndarray, spacing) -> np.ndarray:
    """Euclidean distance (mm) to the nearest True of ``feat``; inf everywhere when none."""
    if not feat.any():
        return np.full(feat.shape, np.inf)
    return ndi.distance_transform_edt(~feat, sampling=spacing)


def pairwise_min_dist(src: np.ndarray, dst: np.ndarray, spacing) -> np.ndarray:
    """Brute force: for each True voxel of ``src`` (raster order) the distance to ``dst``."""
    a = np.argwhere(src) * np.asarray(spacing, float)
    b = np.argwhere(dst) * np.asarray(spacing, float)
    if len(b) == 0:
        return np.full(len(a), np.inf)
    if len(a) == 0:
        return np.empty(0)
    d2 = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
    return np.sqrt(d2.min(axis=1))


def structure(ndim: int, connectivity: int) -> np.ndarray:
    rank = {4: 1, 8: 2, 6: 1, 18: 2, 26: 3}[connectivity]
    return ndi.generate_binary_structure(ndim, rank)


def largest_ref(m: np.ndarray, k: int, connectivity: int) -> np.ndarray:
    labels, n = ndi.label(m, structure(m.ndim, connectivity))
    if n == 0:
        return np.zeros_like(m)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    order = np.argsort(-sizes, kind="stable")[:k] + 1
    return np.isin(labels, order)


# ---------------------------------------------------------------- metrics


def diag(shape) -> float:
    return math.sqrt(shape[-2] ** 2 + shape[-1] ** 2)


def d_ref(shape, ratio: float = 0.02) -> int:
    return max(1, int(round(ratio * diag(shape))))


def tau_ref(shape, ratio: float = 0.008) -> int:
    return max(1, math.ceil(ratio * diag(shape)))


def iou_ref(p, g) -> float:
    u = (p | g).sum()
    return 1.0 if u == 0 else (p & g).sum() / u


def dice_ref(p, g) -> float:
    s = p.sum() + g.sum()
    return 1.0 if s == 0 else 2 * (p & g).sum() / s


def f1_ref(p, g) -> float:
    """Pixel F1 from precision and recall."""
    if not p.any() and not g.any():
        return 1.0
    tp = (p & g).sum()
    if tp == 0:
        return 0.0
    prec, rec = tp / p.sum(), tp / g.sum()
    return 2 * prec * rec / (prec + rec)


def boundary_iou_ref(p, g, ratio: float = 0.02) -> float:
    d = d_ref(p.shape, ratio)
    bp, bg = band_ref(p, d), band_ref(g, d)
    u = (bp | bg).sum()
    return 1.0 if u == 0 else (bp & bg).sum() / u


def trimap_ref(p, g, width: int | None = None) -> float:
    if not g.any():
        return 1.0 if not p.any() else 0.0
    w = d_ref(p.shape) if width is None else width
    t = dilate_ref(contour_ref(g), w)
    return (p & g & t).sum() / ((p | g) & t).sum()


def boundary_f_ref(p, g, ratio: float = 0.008) -> float:
    tau = tau_ref(p.shape, ratio)
    cp, cg = contour_ref(p), contour_ref(g)
    if not cp.any() and not cg.any():
        return 1.0
    if not cp.any() or not cg.any():
        return 0.0
    a, b = np.argwhere(cp), np.argwhere(cg)
    d2 = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
    prec = (d2.min(axis=1) <= tau * tau).mean()
    rec = (d2.min(axis=0) <= tau * tau).mean()
    return 0.0 if prec + rec == 0 else 2 * prec * rec / (prec + rec)


def slice_mean_ref(fn, p, g, **kw) -> float:
    """Mean of a 2D metric over the slices of (D, H, W) masks where P or G is non-empty."""
    vals = [fn(p[k], g[k], **kw) for k in range(p.shape[0]) if p[k].any() or g[k].any()]
    return float(np.mean(vals)) if vals else 1.0


def surface_distances_ref(p, g, spacing):
    sp, sg = surface_ref(p), surface_ref(g)
    if not sg.any():
        a = np.full(int(sp.sum()), np.inf)
    else:
        a = edt_ref(sg, spacing)[sp]
    if not sp.any():
        b = np.full(int(sg.sum()), np.inf)
    else:
        b = edt_ref(sp, spacing)[sg]
    return a, b


def surface_scores_ref(p, g, spacing) -> dict[str, float]:
    a, b = surface_distances_ref(p, g, spacing)
    if a.size == 0 and b.size == 0:
        return {"assd": 0.0, "mssd": 0.0, "hd95": 0.0}
    if a.size == 0 or b.size == 0:
        return {"assd": np.inf, "mssd": np.inf, "hd95": np.inf}
    both = np.concatenate([a, b])
    return {
        "assd": both.mean(),
        "mssd": both.max(),
        "hd95": max(np.percentile(a, 95), np.percentile(b, 95)),
    }


def ravd_ref(p, g) -> float:
    if not g.any():
        return 0.0 if not p.any() else np.inf
    return abs(int(g.sum()) - int(p.sum())) / g.sum() * 100


def liver_blob(shape, seed: int = 0, jitter: float = 0.0) -> np.ndarray:
    """A smooth liver-like 2D/3D blob: a lumpy ellipse (plus boundary noise when ``jitter``)."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    r2 = sum((x / a) ** 2 for x, a in zip(grids, (0.8, 0.55, 0.45)[-len(shape) :], strict=True))
    noise = ndi.gaussian_filter(rng.standard_normal(shape), sigma=4) * 4
    if jitter:
        noise = noise + ndi.gaussian_filter(rng.standard_normal(shape), sigma=2) * jitter
    return r2 + noise < 1.0
