"""Benchmark the metric kernels against naive SciPy references.

Part of ``liverrt bench`` (also ``python benchmarks/bench_metrics.py [--quick]
[--json PATH]``). It reports median milliseconds, measured in one run on this
machine:

* all Table-6 metrics (mask IoU, Trimap IoU, F-measure, Boundary IoU, plus the
  boundary F) for one 512x512 pair on one thread, against the SciPy
  references the tests use (square structuring elements, exact EDT) and a
  faster SciPy variant (separable min/max filters);
* the same per-slice metrics batched over a (200, 512, 512) stack on all cores;
* HD95 (one pass also gives ASSD and MSSD) on a 512x512x200 volume pair;
* the Numba compile time of a fresh cache and the load time of a warm one,
  measured in subprocesses.

Masks are smooth liver-like blobs; the prediction is the ground truth with
a perturbed boundary and a small false-positive island.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numba
import numpy as np
from scipy import ndimage as ndi

from liverrt import metrics as M
from liverrt.bench.timing import time_call
from liverrt.machine import cpu_model, usable_cores

SPACING_3D = (2.5, 0.78, 0.78)

# ------------------------------------------------------------------ data


def _lowres_blob(shape, seed: int, noise: float) -> np.ndarray:
    """Signed field of a lumpy ellipsoid/ellipse: < 0 inside."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    # about 80 slices x 215 x 195 px at 512x512x200: a large liver at 2.5 x 0.78 x 0.78 mm
    radii = (0.4, 0.42, 0.38)[-len(shape) :]
    centre = (0.0, -0.05, -0.12)[-len(shape) :]
    r2 = sum(((x - c) / a) ** 2 for x, c, a in zip(grids, centre, radii, strict=True))
    lumps = ndi.gaussian_filter(rng.standard_normal(shape), sigma=3) * 6
    return r2 + noise * lumps - 1.0


def make_pair(shape: tuple[int, ...], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(pred, gt)`` bool masks of ``shape`` (2D or 3D), built at 1/4 resolution and upsampled."""
    low = tuple(max(8, n // 4) for n in shape)
    zoom = [n / m for n, m in zip(shape, low, strict=True)]
    base = _lowres_blob(low, seed, noise=1.0)
    rng = np.random.default_rng(seed + 1)
    wobble = ndi.gaussian_filter(rng.standard_normal(low), sigma=1.5) * 0.6
    gt = ndi.zoom(base, zoom, order=1) < 0
    pred = ndi.zoom(base + wobble * 0.5, zoom, order=1) < 0  # mask IoU ~0.95, Boundary IoU ~0.9
    # a small false-positive island away from the liver
    island = tuple(slice(int(0.78 * n), int(0.78 * n) + max(2, n // 40)) for n in shape)
    pred[island] = True
    return np.ascontiguousarray(pred), np.ascontiguousarray(gt)


# ------------------------------------------------------------------ references


def _counts_scores(p, g, bp, bg, t, cp, cg, dist_to_cg, dist_to_cp, tau) -> dict[str, float]:
    inter, union = (p & g).sum(), (p | g).sum()
    bu = (bp | bg).sum()
    prec = (dist_to_cg[cp] <= tau).mean() if cp.any() else 0.0
    rec = (dist_to_cp[cg] <= tau).mean() if cg.any() else 0.0
    return {
        "mask_iou": inter / union if union else 1.0,
        "f_measure": 2 * inter / (p.sum() + g.sum()) if union else 1.0,
        "boundary_iou": (bp & bg).sum() / bu if bu else 1.0,
        "trimap_iou": (p & g & t).sum() / ((p | g) & t).sum() if g.any() else float(not p.any()),
        "boundary_f": 2 * prec * rec / (prec + rec) if prec + rec else 0.0,
    }


def reference_table6(p: np.ndarray, g: np.ndarray, d: int, tau: int) -> dict[str, float]:
    """The tests' SciPy definitions: square structuring elements, exact EDT for boundary F."""
    sq = np.ones((2 * d + 1, 2 * d + 1), bool)
    cross = ndi.generate_binary_structure(2, 1)
    bp = p & ~ndi.binary_erosion(p, sq, border_value=0)
    bg = g & ~ndi.binary_erosion(g, sq, border_value=0)
    cp = p & ~ndi.binary_erosion(p, cross, border_value=0)
    cg = g & ~ndi.binary_erosion(g, cross, border_value=0)
    t = ndi.binary_dilation(cg, sq)
    return _counts_scores(
        p,
        g,
        bp,
        bg,
        t,
        cp,
        cg,
        ndi.distance_transform_edt(~cg),
        ndi.distance_transform_edt(~cp),
        tau,
    )


def reference_table6_fast(p: np.ndarray, g: np.ndarray, d: int, tau: int) -> dict[str, float]:
    """A faster SciPy variant: separable minimum/maximum filters instead of square structures."""
    size = 2 * d + 1
    u8p, u8g = p.view(np.uint8), g.view(np.uint8)
    bp = p & (ndi.minimum_filter(u8p, size, mode="constant", cval=0) == 0)
    bg = g & (ndi.minimum_filter(u8g, size, mode="constant", cval=0) == 0)
    cross = ndi.generate_binary_structure(2, 1)
    cp = p & ~ndi.binary_erosion(p, cross, border_value=0)
    cg = g & ~ndi.binary_erosion(g, cross, border_value=0)
    t = ndi.maximum_filter(cg.view(np.uint8), size, mode="constant", cval=0) > 0
    return _counts_scores(
        p,
        g,
        bp,
        bg,
        t,
        cp,
        cg,
        ndi.distance_transform_edt(~cg),
        ndi.distance_transform_edt(~cp),
        tau,
    )


def reference_hd95(p: np.ndarray, g: np.ndarray, spacing) -> float:
    """CHAOS surfaces and full-array SciPy EDTs, as a straightforward implementation would."""
    face = ndi.generate_binary_structure(p.ndim, 1)
    sp = p ^ ndi.binary_erosion(p, face, border_value=1)
    sg = g ^ ndi.binary_erosion(g, face, border_value=1)
    a = ndi.distance_transform_edt(~sg, sampling=spacing)[sp]
    b = ndi.distance_transform_edt(~sp, sampling=spacing)[sg]
    return float(max(np.percentile(a, 95), np.percentile(b, 95)))


# ------------------------------------------------------------------ timing


def median_ms(fn: Callable[[], object], repeat: int, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` in ms after ``warmup`` untimed calls."""
    return statistics.median(time_call(fn, warmup=warmup, repeats=repeat)) * 1e3


def median_ms_fast(fn: Callable[[], object], repeat: int, number: int) -> float:
    """Median over ``repeat`` rounds of the mean of ``number`` calls (for sub-ms calls)."""
    fn()
    rounds = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        rounds.append((time.perf_counter() - t0) * 1e3 / number)
    return statistics.median(rounds)


_COMPILE_SNIPPET = r"""
import json, sys, time
t0 = time.perf_counter()
import numpy as np
from liverrt import metrics as M
out = {"import_s": time.perf_counter() - t0}
rng = np.random.default_rng(0)
p2, g2 = rng.random((64, 64)) < 0.5, rng.random((64, 64)) < 0.5
p3, g3 = rng.random((4, 256, 256)) < 0.5, rng.random((4, 256, 256)) < 0.5
steps = [
    ("table6_2d", lambda: M.table6_scores(p2, g2)),
    ("slice_metrics_stack_parallel", lambda: M.slice_metrics(p3, g3)),
    ("surface_distances_3d", lambda: M.SurfaceDistances.compute(p3, g3, (2.5, 0.8, 0.8)).hd95),
    ("overlap", lambda: (M.dice(p3, g3), M.per_slice_counts(p3, g3))),
    ("label_largest_3d", lambda: M.largest_components(p3, 1, 26)),
    ("label_largest_per_slice", lambda: M.largest_components(p3, 1, 8, per_slice=True)),
    ("fill_holes", lambda: M.fill_holes(p3)),
]
for name, fn in steps:
    t = time.perf_counter()
    fn()
    out[name + "_s"] = time.perf_counter() - t
sys.stdout.write(json.dumps(out) + "\n")  # read by the parent process
"""


def compile_times(*, fresh: bool = True) -> dict[str, dict[str, float]]:
    """First-call seconds in new processes: with ``fresh``, an empty Numba cache (``cold``: compile) and then
    that warm cache (``cached``: load); without, once with this environment's cache (``environment``)."""
    src = str(Path(__file__).resolve().parents[2])  # the folder holding the liverrt package
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    if not fresh:
        return {"environment": _first_calls(env)}
    with tempfile.TemporaryDirectory() as cache:
        env["NUMBA_CACHE_DIR"] = cache
        return {label: _first_calls(env) for label in ("cold", "cached")}


def _first_calls(env: dict[str, str]) -> dict[str, float]:
    done = subprocess.run([sys.executable, "-c", _COMPILE_SNIPPET], env=env, capture_output=True, text=True,
                          check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------ benchmark


def _hardware() -> dict[str, object]:


    return {
        "cpu": cpu_model(),
        "cores": usable_cores(),
        "numba_threads": numba.config.NUMBA_NUM_THREADS,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numba": numba.__version__,
    }


#: (quick, full): repeats, slices in the per-slice stack, the HD95 volume's shape
REPEATS, STACK, VOLUME = (5, 15), (32, 200), ((64, 256, 256), (200, 512, 512))

#: what ``quick`` leaves out (``liverrt bench --quick`` lists it in its report)
QUICK_SKIPS = (
    "metrics: Numba compile times with an empty cache (about a minute on 2 cores); first calls are timed with "
    "this environment's cache",
    f"metrics: a ({STACK[0]}, 512, 512) stack, a {VOLUME[0]} volume and {REPEATS[0]} repeats (full: a "
    f"({STACK[1]}, 512, 512) stack, a {VOLUME[1]} volume, {REPEATS[1]} repeats)",
)


def run(quick: bool) -> dict:
    """Run every measurement; ``quick`` shrinks the batch and volume and the repeats and times first calls
    with this environment's Numba cache only (:data:`QUICK_SKIPS`)."""
    reps = REPEATS[0] if quick else REPEATS[1]
    rows = [*_table6_rows(reps), _slices_row(quick, reps), _surface_row(quick, reps)]
    return {"quick": quick, "hardware": _hardware(), "rows": rows, "compile": compile_times(fresh=not quick)}


def _table6_rows(reps: int) -> list[dict]:
    """One 512² pair, one thread: the Table-6 set at once, then its five functions one by one."""
    numba.set_num_threads(1)
    p, g = make_pair((512, 512), seed=0)
    d, tau = M.band_width(p.shape), M.boundary_tolerance(p.shape)
    ours = M.table6_scores(p, g)
    ref = reference_table6(p, g, d, tau)
    for k, v in ref.items():
        assert abs(ours[k] - v) < 1e-9, (k, ours[k], v)
    t_all = median_ms_fast(lambda: M.table6_scores(p, g), reps, 200)
    t_ref = median_ms(lambda: reference_table6(p, g, d, tau), reps)
    t_ref_fast = median_ms(lambda: reference_table6_fast(p, g, d, tau), reps)
    singles = {
        "mask_iou": lambda: M.mask_iou(p, g),
        "f_measure": lambda: M.f_measure(p, g),
        "boundary_iou": lambda: M.boundary_iou(p, g),
        "trimap_iou": lambda: M.trimap_iou(p, g),
        "boundary_f": lambda: M.boundary_f(p, g),
    }
    t_singles = {k: median_ms_fast(fn, reps, 200) for k, fn in singles.items()}
    return [
        {"case": "Table-6 set, one 512² pair, 1 thread (table6_scores)", "liverrt_ms": t_all,
         "reference_ms": t_ref, "speedup": t_ref / t_all,
         "note": f"SciPy fast variant {t_ref_fast:.2f} ms ({t_ref_fast / t_all:.0f}x)"},
        {"case": "the five functions called one by one, 512², 1 thread", "liverrt_ms": sum(t_singles.values()),
         "reference_ms": t_ref, "speedup": t_ref / sum(t_singles.values()),
         "note": ", ".join(f"{k} {v:.3f}" for k, v in t_singles.items())},
    ]


def _slices_row(quick: bool, reps: int) -> dict:
    """Per-slice metrics of a 512² stack on all threads; the reference extrapolated from a sample of slices."""
    n_threads = numba.config.NUMBA_NUM_THREADS
    numba.set_num_threads(n_threads)
    n_slices = STACK[0] if quick else STACK[1]
    ps, gs = make_pair((n_slices, 512, 512), seed=1)
    d, tau = M.band_width(ps.shape[1:]), M.boundary_tolerance(ps.shape[1:])
    nonempty = int((ps | gs).any(axis=(1, 2)).sum())
    t_batch = median_ms(lambda: M.slice_metrics(ps, gs), max(3, reps // 3))
    sub = [k for k in range(n_slices) if (ps[k] | gs[k]).any()][:: max(1, nonempty // (5 if quick else 20))]
    t_ref_slice = median_ms(lambda: [reference_table6(ps[k], gs[k], d, tau) for k in sub], 1, warmup=0) / len(sub)
    return {"case": f"per-slice metrics, ({n_slices}, 512, 512) stack, {n_threads} threads",
            "liverrt_ms": t_batch, "reference_ms": t_ref_slice * nonempty,
            "speedup": t_ref_slice * nonempty / t_batch,
            "note": f"{nonempty} non-empty slices; {t_batch / n_slices:.3f} ms/slice; reference "
                    f"extrapolated from {len(sub)} slices"}


def _surface_row(quick: bool, reps: int) -> dict:
    """HD95 (and ASSD, MSSD) on a volume, all threads and one; the SciPy reference timed once."""
    n_threads = numba.config.NUMBA_NUM_THREADS
    shape3 = VOLUME[0] if quick else VOLUME[1]
    pv, gv = make_pair(shape3, seed=2)
    sd = M.SurfaceDistances.compute(pv, gv, SPACING_3D)
    t_hd = median_ms(lambda: M.hd95(pv, gv, SPACING_3D), max(3, reps // 3))
    numba.set_num_threads(1)
    t_hd1 = median_ms(lambda: M.hd95(pv, gv, SPACING_3D), max(3, reps // 3))
    numba.set_num_threads(n_threads)
    t0 = time.perf_counter()
    hd_ref = reference_hd95(pv, gv, SPACING_3D)
    t_hd_ref = (time.perf_counter() - t0) * 1e3
    assert abs(hd_ref - sd.hd95) < 1e-9, (hd_ref, sd.hd95)
    label = "x".join(str(n) for n in shape3[::-1])
    return {"case": f"hd95 (+assd, mssd) {label} volume, {n_threads} threads", "liverrt_ms": t_hd,
            "reference_ms": t_hd_ref, "speedup": t_hd_ref / t_hd,
            "note": f"1 thread {t_hd1:.0f} ms; reference: full-array SciPy EDT, timed once; "
                    f"hd95 {sd.hd95:.2f} mm, spacing {SPACING_3D}"}


def to_markdown(res: dict) -> str:
    hw = res["hardware"]
    lines = [
        f"Hardware: {hw['cpu']}, {hw['cores']} cores; numba {hw['numba']} "
        f"({hw['numba_threads']} threads), numpy {hw['numpy']}, Python {hw['python']}"
        + ("; QUICK run" if res["quick"] else ""),
        "",
        "| case | liverrt (median ms) | naive SciPy (ms) | speed-up | notes |",
        "| --- | ---: | ---: | ---: | --- |",
    ]
    for r in res["rows"]:
        lines.append(
            f"| {r['case']} | {r['liverrt_ms']:.3f} | {r['reference_ms']:.1f} | "
            f"{r['speedup']:.0f}x | {r['note']} |"
        )
    comp = res.get("compile")
    if comp and "cold" in comp:
        lines += ["", "| first call | fresh cache (s) | warm cache (s) |", "| --- | ---: | ---: |"]
        for key in comp["cold"]:
            lines.append(f"| {key[:-2]} | {comp['cold'][key]:.2f} | {comp['cached'][key]:.2f} |")
    elif comp:
        lines += ["", "| first call | this environment's Numba cache (s) |", "| --- | ---: |"]
        lines += [f"| {key[:-2]} | {sec:.2f} |" for key, sec in comp["environment"].items()]
    return "\n".join(lines)
