"""label, largest_components and fill_holes through the public API."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mask_refs import largest_ref, masks, structure
from scipy import ndimage as ndi

from liverrt.errors import InputError
from liverrt.metrics import fill_holes, label, label_by_area, largest_components, smooth_z

_RANK = {4: 1, 8: 2, 6: 1, 18: 2, 26: 3}


def flood_label(m: np.ndarray, conn: int) -> tuple[np.ndarray, int]:
    """Flood fill from each unlabelled voxel in raster order: independent of SciPy."""
    offs = [
        d
        for d in itertools.product((-1, 0, 1), repeat=m.ndim)
        if any(d) and sum(map(abs, d)) <= _RANK[conn]
    ]
    labels = np.zeros(m.shape, np.int32)
    n = 0
    for start in zip(*np.nonzero(m), strict=True):  # np.nonzero walks in raster order
        if labels[start]:
            continue
        n += 1
        labels[start] = n
        todo = [start]
        while todo:
            p = todo.pop()
            for d in offs:
                q = tuple(a + b for a, b in zip(p, d, strict=True))
                inside = all(0 <= c < s for c, s in zip(q, m.shape, strict=True))
                if inside and m[q] and not labels[q]:
                    labels[q] = n
                    todo.append(q)
    return labels, n


def flood_largest(m: np.ndarray, k: int, conn: int) -> np.ndarray:
    labels, n = flood_label(m, conn)
    sizes = {lab: int((labels == lab).sum()) for lab in range(1, n + 1)}
    keep = sorted(sizes, key=lambda lab: (-sizes[lab], lab))[:k]
    return np.isin(labels, keep)


@settings(max_examples=100, deadline=None)
@given(masks(ndim=2, max_side=20), st.sampled_from([None, 4, 8]), st.integers(1, 3))
def test_2d(m, conn, k):
    c = 8 if conn is None else conn
    labels, n = label(m, conn)
    ref, nref = ndi.label(m, structure(2, c))
    assert n == nref and labels.shape == m.shape
    np.testing.assert_array_equal(labels, ref)
    np.testing.assert_array_equal(labels, flood_label(m, c)[0])
    np.testing.assert_array_equal(largest_components(m, k, conn), largest_ref(m, k, c))
    np.testing.assert_array_equal(largest_components(m, k, conn), flood_largest(m, k, c))
    np.testing.assert_array_equal(fill_holes(m), ndi.binary_fill_holes(m))


@settings(max_examples=100, deadline=None)
@given(masks(ndim=3, max_side=12), st.sampled_from([None, 6, 18, 26]), st.integers(1, 3))
def test_3d(m, conn, k):
    c = 26 if conn is None else conn
    labels, n = label(m, conn)
    ref, nref = ndi.label(m, structure(3, c))
    assert n == nref
    np.testing.assert_array_equal(labels, ref)
    np.testing.assert_array_equal(labels, flood_label(m, c)[0])
    np.testing.assert_array_equal(largest_components(m, k, conn), largest_ref(m, k, c))
    np.testing.assert_array_equal(largest_components(m, k, conn), flood_largest(m, k, c))
    np.testing.assert_array_equal(fill_holes(m), np.stack([ndi.binary_fill_holes(s) for s in m]))


@settings(max_examples=50, deadline=None)
@given(masks(ndim=3, max_side=12), st.sampled_from([4, 8]))
def test_per_slice(m, conn):
    labels, counts = label(m, conn, per_slice=True)
    assert counts.shape == (m.shape[0],)
    kept = largest_components(m, 1, conn, per_slice=True)
    for s in range(m.shape[0]):
        ref, nref = ndi.label(m[s], structure(2, conn))
        assert counts[s] == nref
        np.testing.assert_array_equal(labels[s], ref)
        np.testing.assert_array_equal(labels[s], flood_label(m[s], conn)[0])
        np.testing.assert_array_equal(kept[s], largest_ref(m[s], 1, conn))
        np.testing.assert_array_equal(kept[s], flood_largest(m[s], 1, conn))


def test_two_regions_keep_largest():
    m = np.zeros((2, 10, 10), bool)
    m[0, 0:3, 0:3] = True
    m[1, 6:10, 6:10] = True
    assert label(m, 26)[1] == 2
    kept = largest_components(m)
    assert kept.sum() == 16 and kept[1, 9, 9]
    assert largest_components(m, 2).sum() == m.sum()
    assert not largest_components(np.zeros((5, 5), bool)).any()


def _edge_cases() -> list[tuple[str, np.ndarray]]:
    cases = []
    for shape in [(6, 7), (3, 6, 7)]:
        one = np.zeros(shape, bool)
        one[(1,) * len(shape)] = True
        corner = np.zeros(shape, bool)
        corner[(0,) * len(shape)] = True
        border = np.zeros(shape, bool)  # a frame on the border of every slice, hole inside
        border[..., 0, :] = border[..., -1, :] = border[..., :, 0] = border[..., :, -1] = True
        two = np.zeros(shape, bool)  # two blocks touching only diagonally
        two[..., 0:2, 0:2] = True
        two[..., 2:5, 2:5] = True
        apart = np.zeros(shape, bool)  # two separate regions, unequal sizes
        apart[..., 0:2, 0:2] = True
        apart[..., 3:6, 4:7] = True
        for name, m in [
            ("empty", np.zeros(shape, bool)),
            ("full", np.ones(shape, bool)),
            ("one pixel", one),
            ("one pixel in the corner", corner),
            ("touching the border", border),
            ("diagonal neighbours", two),
            ("two separate regions", apart),
        ]:
            cases.append((f"{name} {len(shape)}D", m))
    return cases


@pytest.mark.parametrize(("name", "m"), _edge_cases(), ids=[c[0] for c in _edge_cases()])
def test_edge_cases_dtypes_and_values(name, m):
    for conn in _ALLOWED_CONNS[m.ndim]:
        labels, n = label(m, conn)
        ref, nref = flood_label(m, conn)
        assert labels.dtype == np.int32 and labels.shape == m.shape and type(n) is int
        assert n == nref
        np.testing.assert_array_equal(labels, ref)
        for k in (1, 2, 3):
            kept = largest_components(m, k, conn)
            assert kept.dtype == bool and kept.shape == m.shape
            np.testing.assert_array_equal(kept, flood_largest(m, k, conn))
    filled = fill_holes(m)
    assert filled.dtype == bool and filled.shape == m.shape
    ref_filled = np.stack([ndi.binary_fill_holes(s) for s in m.reshape((-1, *m.shape[-2:]))])
    np.testing.assert_array_equal(filled, ref_filled.reshape(m.shape))
    if m.ndim == 3:
        labels, counts = label(m, 4, per_slice=True)
        assert labels.dtype == np.int32 and counts.dtype == np.int64
        assert counts.shape == (m.shape[0],)
        kept = largest_components(m, 1, 8, per_slice=True)
        assert kept.dtype == bool
        for s in range(m.shape[0]):
            np.testing.assert_array_equal(labels[s], flood_label(m[s], 4)[0])
            np.testing.assert_array_equal(kept[s], flood_largest(m[s], 1, 8))


_ALLOWED_CONNS = {2: (4, 8), 3: (6, 18, 26)}


def test_diagonal_neighbours_depend_on_connectivity():
    m = np.zeros((5, 5), bool)
    m[0:2, 0:2] = True
    m[2:5, 2:5] = True
    assert label(m, 4)[1] == 2 and label(m, 8)[1] == 1
    assert largest_components(m, 1, 4).sum() == 9
    assert largest_components(m, 1, 8).sum() == 13


@pytest.mark.parametrize("shape", [(0, 5), (5, 0), (0, 3, 3), (3, 0, 4), (2, 4, 0)])
def test_zero_size_masks(shape):
    m = np.zeros(shape, bool)
    labels, n = label(m)
    assert labels.shape == shape and labels.dtype == np.int32 and n == 0
    kept = largest_components(m)
    assert kept.shape == shape and kept.dtype == bool
    filled = fill_holes(m)  # crashed (out-of-bounds read) before it was guarded
    assert filled.shape == shape and filled.dtype == bool
    if len(shape) == 3:
        labels, counts = label(m, per_slice=True)
        assert labels.shape == shape and counts.shape == (shape[0],) and not counts.any()
        assert largest_components(m, per_slice=True).shape == shape


@pytest.mark.parametrize(
    ("mask", "conn"),
    [(np.zeros((4, 4), bool), 6), (np.zeros((2, 4, 4), bool), 8), (np.zeros((4, 4), bool), 5)],
)
def test_bad_connectivity(mask, conn):
    with pytest.raises(InputError, match="connectivity"):
        label(mask, conn)
    with pytest.raises(InputError, match="connectivity"):
        largest_components(mask, 1, conn)


@pytest.mark.parametrize("k", [0, -1, 1.5, True])
def test_bad_k(k):
    with pytest.raises(InputError, match="k:"):
        largest_components(np.zeros((4, 4), bool), k)


# ----------------------------------------------------------------------------- label_by_area


def flood_by_area(m: np.ndarray, conn: int) -> np.ndarray:
    """Per slice: the flood-fill regions renumbered by decreasing size, ties in raster order."""
    out = np.zeros(m.shape, np.int64)
    for s in range(m.shape[0]) if m.ndim == 3 else [None]:
        sl = m[s] if s is not None else m
        labels, n = flood_label(sl, conn)
        sizes = {lab: int((labels == lab).sum()) for lab in range(1, n + 1)}
        ids = np.zeros(labels.shape, np.int64)
        for rank, lab in enumerate(sorted(sizes, key=lambda lab: (-sizes[lab], lab)), start=1):
            ids[labels == lab] = rank
        if s is None:
            return ids
        out[s] = ids
    return out


@settings(max_examples=60, deadline=None)
@given(masks(ndim=3, max_side=12), st.sampled_from([4, 8]))
def test_label_by_area_matches_a_flood_fill(m, conn):
    assert np.array_equal(label_by_area(m, conn), flood_by_area(m, conn))


@pytest.mark.parametrize(("name", "m"), _edge_cases(), ids=[c[0] for c in _edge_cases()])
def test_label_by_area_edge_cases(name, m):
    ids = label_by_area(m)
    assert ids.dtype == np.uint8 and ids.shape == m.shape
    assert np.array_equal(ids, flood_by_area(m, 8)), name


def test_label_by_area_orders_by_size_and_widens_past_255_regions():
    mask = np.zeros((1, 10, 10), dtype=bool)
    mask[0, 0, 0] = True
    mask[0, 5:9, 5:9] = True
    mask[0, 2, 2] = mask[0, 3, 3] = True  # diagonal neighbours: one region under 8-connectivity
    ids = label_by_area(mask)
    assert ids[0, 6, 6] == 1 and ids[0, 2, 2] == ids[0, 3, 3] == 2 and ids[0, 0, 0] == 3
    dots = np.zeros((40, 40), bool)
    dots[::2, ::2] = True  # 400 one-pixel regions
    many = label_by_area(dots)
    assert many.dtype == np.uint16 and many.max() == 400


def smooth_z_ref(p: np.ndarray, sigma_mm: float, dz: float) -> np.ndarray:
    """Each output slice a weighted sum of input slices, edges repeated: written from the definition."""
    sigma = sigma_mm / dz
    radius = int(4.0 * sigma + 0.5)
    w = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    w /= w.sum()
    d = p.shape[0]
    out = np.zeros(p.shape, np.float64)
    for k in range(d):
        for j, wj in zip(range(-radius, radius + 1), w, strict=True):
            out[k] += wj * p[min(max(k + j, 0), d - 1)]
    return out


def _prob_cases():
    rng = np.random.default_rng(11)
    one = np.zeros((7, 5, 6), np.float32)
    one[3, 2, 2] = 1.0
    border = np.zeros((7, 5, 6), np.float32)
    border[0, :, 0] = 0.9  # first slice, left edge
    two = np.zeros((9, 6, 6), np.float32)
    two[1:3, 1:3, 1:3] = 0.8
    two[6:8, 3:5, 3:5] = 0.7
    return {"random": rng.random((11, 6, 5)).astype(np.float32), "empty": np.zeros((5, 4, 4), np.float32),
            "full": np.ones((5, 4, 4), np.float32), "one_pixel": one, "border": border, "two_regions": two}


@pytest.mark.parametrize("case", sorted(_prob_cases()))
@pytest.mark.parametrize(("sigma_mm", "dz"), [(2.0, 1.6), (8.0, 5.0), (8.0, 0.7), (1.0, 4.0)])
def test_smooth_z_is_the_gaussian_across_slices_written_out(case, sigma_mm, dz):
    p = _prob_cases()[case]
    before = p.copy()
    got = smooth_z(p, sigma_mm, dz)
    assert got.dtype == np.float32 and got.shape == p.shape
    assert np.allclose(got, smooth_z_ref(p, sigma_mm, dz), atol=1e-5)
    assert np.array_equal(p, before)  # the input is not modified


def test_smooth_z_leaves_probabilities_alone_without_a_sigma_or_a_second_slice():
    p = np.random.default_rng(3).random((4, 3, 3)).astype(np.float32)
    assert np.array_equal(smooth_z(p, 0.0, 2.0), p)
    assert np.array_equal(smooth_z(p[:1], 5.0, 2.0), p[:1])


@pytest.mark.parametrize(("shape", "sigma_mm", "dz"), [((4, 4), 2.0, 1.0), ((3, 4, 4), -1.0, 1.0),
                                                       ((3, 4, 4), float("nan"), 1.0), ((3, 4, 4), 2.0, 0.0)])
def test_smooth_z_refuses_what_it_cannot_smooth(shape, sigma_mm, dz):
    with pytest.raises(InputError, match="smooth_z"):
        smooth_z(np.zeros(shape, np.float32), sigma_mm, dz)
