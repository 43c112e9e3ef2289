"""Numba labelling / largest-component / hole-filling kernels vs ``scipy.ndimage``.

``python benchmarks/bench_kernels_scipy.py [--quick] [--repeat N] [--json PATH]``

Issue 16, item 8: keep the Numba kernels of :mod:`liverrt.kernels.label` only
where they beat SciPy by a clear margin. On 512x512x200 masks (``--quick``:
256x256x32) it times, in one process on the same inputs:

* 3D connected components, 6/18/26-connectivity: ``label_3d`` vs
  ``scipy.ndimage.label`` with the matching structure;
* the 26-connected largest 3D component (what ``liverrt infer --keep-largest``
  runs): ``largest_components_3d`` vs SciPy label + ``bincount``;
* per-slice labelling / largest component (``per_slice=True``, 8-connectivity):
  the batched kernels vs a loop of ``scipy.ndimage.label`` over the slices;
* per-slice hole filling (``--fill-holes``): ``fill_holes_stack`` vs
  ``binary_fill_holes`` slice by slice and in one call with an in-plane
  ``(3, 3, 3)`` cross (no coupling between slices);
* the first call of each kernel with a fresh ``NUMBA_CACHE_DIR`` (compile) and
  with the warm one (load), each in its own subprocess, and SciPy's import.

The kernels are called directly (not through :mod:`liverrt.metrics`), so the
comparison still means the same after ``metrics.postprocess`` switches an
operation to SciPy. Each pair of outputs is checked first: labels as partitions
(one-to-one map between the two numberings; the table also says whether the
numbering itself is identical), masks bit for bit. Timings: one warm-up call,
then the median of ``--repeat`` calls (>= 5). SciPy's ndimage is
single-threaded; the batched Numba kernels use Numba's thread pool (rows give
the thread count), ``label_3d`` and ``largest_components_3d`` run on one thread.

Masks (seeded): a liver-like blob (``liverrt.bench.metrics.make_pair``) with
vessels running through it (holes in the slices), cavities, a few spurious
blobs and scattered false-positive voxels; and a 50 % random-noise mask as the
worst case for labelling (hundreds of thousands of components).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numba
import numpy as np
from scipy import ndimage as ndi

from liverrt import metrics as M
from liverrt.bench.metrics import make_pair
from liverrt.bench.timing import time_call
from liverrt.kernels.label import (
    backward_offsets,
    fill_holes_stack,
    label_3d,
    label_stack_2d,
    largest_components_3d,
    largest_components_stack_2d,
)
from liverrt.machine import machine_info

CLEAR_MARGIN = 1.5  # keep a Numba kernel only if SciPy takes >= this many times as long

# ------------------------------------------------------------------ data


def liver_mask(shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """A liver-like ``(D, H, W)`` bool mask with holes, cavities and spurious components."""
    liver = make_pair(shape, seed)[1]
    d, h, w = shape
    rng = np.random.default_rng(seed + 10)
    # vessels: tubes along z (discs in every slice), centred well inside the liver
    mid = liver[np.argmax(liver.sum(axis=(1, 2)))]
    depth = ndi.distance_transform_edt(mid)
    yy, xx = np.ogrid[:h, :w]
    inside = np.argwhere(depth > 0.08 * min(h, w))
    for y, x in inside[rng.choice(len(inside), size=min(12, len(inside)), replace=False)]:
        r = rng.uniform(0.005, 0.012) * min(h, w)
        disc = (yy - y) ** 2 + (xx - x) ** 2 <= r * r
        z0, z1 = sorted(rng.integers(0, d, 2))
        liver[z0 : z1 + 1] &= ~disc
    zz, yy3, xx3 = np.ogrid[:d, :h, :w]

    def ball(cz, cy, cx, r):
        return (((zz - cz) * 3.0) ** 2 + (yy3 - cy) ** 2 + (xx3 - cx) ** 2) <= r * r

    # cavities (lesions left out of the mask) inside, spurious blobs outside
    pts = np.argwhere(liver[:, :: max(1, h // 64), :: max(1, w // 64)])
    for cz, cy, cx in pts[rng.choice(len(pts), size=min(4, len(pts)), replace=False)]:
        liver &= ~ball(cz, cy * max(1, h // 64), cx * max(1, w // 64), 0.015 * min(h, w))
    for _ in range(5):
        cz, cy, cx = rng.integers(0, d), rng.integers(0, h), rng.integers(0, w)
        liver |= ball(cz, cy, cx, rng.uniform(0.005, 0.02) * min(h, w))
    n_speckle = max(50, liver.size // 100_000)
    liver.reshape(-1)[rng.integers(0, liver.size, n_speckle)] = True
    return np.ascontiguousarray(liver)


def noise_mask(shape: tuple[int, int, int], seed: int = 1) -> np.ndarray:
    """50 % random voxels: the worst case for labelling."""
    return np.random.default_rng(seed).random(shape, dtype=np.float32) < 0.5


# ------------------------------------------------------------------ the two sides


def u8(m: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(m).view(np.uint8)


# The SciPy side of labelling and keep-largest is liverrt.metrics itself (it calls scipy.ndimage.label
# since this benchmark's first run): what `liverrt infer --keep-largest` runs is what is timed.


def scipy_fill_loop(m: np.ndarray) -> np.ndarray:
    return np.stack([ndi.binary_fill_holes(s) for s in m])


IN_PLANE_CROSS = np.zeros((3, 3, 3), bool)
IN_PLANE_CROSS[1] = ndi.generate_binary_structure(2, 1)


def scipy_fill_one_call(m: np.ndarray) -> np.ndarray:
    return ndi.binary_fill_holes(m, IN_PLANE_CROSS)


# ------------------------------------------------------------------ checks


def same_partition(a: np.ndarray, na: int, b: np.ndarray, nb: int) -> bool:
    """Whether two labellings split the voxels into the same components (any numbering)."""
    if na != nb or not np.array_equal(a == 0, b == 0):
        return False
    fa, fb = a.ravel(), b.ravel()
    amap = np.zeros(na + 1, np.int64)
    amap[fa] = fb  # one component of a -> one of b (checked next), injective if counts match
    return bool(np.array_equal(amap[fa], fb)) and len(np.unique(amap[1:])) == na


def same_stack_partition(a, ca, b, cb) -> bool:
    return bool(np.array_equal(ca, cb)) and all(
        same_partition(a[s], int(ca[s]), b[s], int(cb[s])) for s in range(a.shape[0])
    )


# ------------------------------------------------------------------ timing


def median_ms(fn: Callable[[], object], repeat: int) -> float:
    return statistics.median(time_call(fn, warmup=1, repeats=repeat)) * 1e3


def _row(op, mask, numba_ms, scipy_ms, threads, same, numbering, note=""):
    return {
        "op": op,
        "mask": mask,
        "numba_ms": numba_ms,
        "scipy_ms": scipy_ms,
        "scipy_over_numba": scipy_ms / numba_ms,
        "numba_threads": threads,
        "same_output": same,
        "same_numbering": numbering,
        "note": note,
    }


def measure(masks: dict[str, np.ndarray], repeat: int) -> list[dict]:
    n_threads = numba.get_num_threads()
    rows: list[dict] = []
    for name, m in masks.items():
        mu = u8(m)
        # (a) 3D labelling
        for conn in (6, 18, 26):
            offs = backward_offsets(3, conn)
            a, na = label_3d(mu, offs)
            b, nb = M.label(m, conn)
            same = same_partition(a, int(na), b, int(nb))
            assert same, ("label", name, conn)
            rows.append(
                _row(
                    f"label 3D, {conn}-conn.",
                    name,
                    median_ms(partial(label_3d, mu, offs), repeat),
                    median_ms(partial(M.label, m, conn), repeat),
                    1,
                    same,
                    bool(np.array_equal(a, b)),
                    f"{int(na):,} components",
                )
            )
        # (b) largest 3D component, as Segmenter(keep_largest=True) asks for it
        offs = backward_offsets(3, 26)
        a = largest_components_3d(mu, offs, 1).view(bool)
        b = M.largest_components(m, 1, 26)
        same = bool(np.array_equal(a, b))
        assert same, ("largest", name)
        rows.append(
            _row(
                "largest 3D component, 26-conn.",
                name,
                median_ms(partial(largest_components_3d, mu, offs, 1), repeat),
                median_ms(partial(M.largest_components, m, 1, 26), repeat),
                1,
                same,
                None,
                f"keeps {int(a.sum()):,} of {int(m.sum()):,} voxels",
            )
        )
        # per-slice labelling and largest component (8-conn.), batched kernels
        offs2 = backward_offsets(2, 8)
        a, ca = label_stack_2d(mu, offs2)
        b, cb = M.label(m, 8, per_slice=True)
        same = same_stack_partition(a, ca, b, cb)
        assert same, ("label per slice", name)
        ka = largest_components_stack_2d(mu, offs2, 1).view(bool)
        kb = M.largest_components(m, 1, 8, per_slice=True)
        assert np.array_equal(ka, kb), ("largest per slice", name)
        for threads in sorted({n_threads, 1}, reverse=True):
            numba.set_num_threads(threads)
            rows.append(
                _row(
                    "label per slice, 8-conn.",
                    name,
                    median_ms(partial(label_stack_2d, mu, offs2), repeat),
                    median_ms(partial(M.label, m, 8, per_slice=True), repeat),
                    threads,
                    same,
                    bool(np.array_equal(a, b)),
                    "SciPy: loop over slices",
                )
            )
            rows.append(
                _row(
                    "largest component per slice, 8-conn.",
                    name,
                    median_ms(partial(largest_components_stack_2d, mu, offs2, 1), repeat),
                    median_ms(partial(M.largest_components, m, 1, 8, per_slice=True), repeat),
                    threads,
                    True,
                    None,
                    "SciPy: loop over slices",
                )
            )
        numba.set_num_threads(n_threads)
        # (c) per-slice hole filling
        fa = fill_holes_stack(mu).view(bool)
        fb, fc = scipy_fill_loop(m), scipy_fill_one_call(m)
        same = bool(np.array_equal(fa, fb) and np.array_equal(fa, fc))
        assert same, ("fill holes", name)
        t_loop = median_ms(partial(scipy_fill_loop, m), repeat)
        t_one = median_ms(partial(scipy_fill_one_call, m), repeat)
        for threads in sorted({n_threads, 1}, reverse=True):
            numba.set_num_threads(threads)
            t_nb = median_ms(partial(fill_holes_stack, mu), repeat)
            rows.append(
                _row(
                    "fill holes per slice",
                    name,
                    t_nb,
                    min(t_loop, t_one),
                    threads,
                    same,
                    None,
                    f"SciPy: per-slice loop {t_loop:.0f} ms, one call with an in-plane "
                    f"cross {t_one:.0f} ms; {int(fa.sum() - m.sum()):,} voxels filled",
                )
            )
        numba.set_num_threads(n_threads)
    return rows


# ------------------------------------------------------------------ first calls

_FIRST_CALL = r"""
import json, sys, time
t0 = time.perf_counter()
import numpy as np
step, threads = sys.argv[1], int(sys.argv[2])
out = {}
if step == "scipy":
    from scipy import ndimage as ndi
    out["import_s"] = time.perf_counter() - t0
    m = np.random.default_rng(0).random((4, 256, 256)) < 0.5
    t = time.perf_counter()
    ndi.label(m, np.ones((3, 3, 3), bool)); ndi.binary_fill_holes(m[0])
    out["first_call_s"] = time.perf_counter() - t
else:
    import numba
    from liverrt.kernels import label as L
    out["import_s"] = time.perf_counter() - t0
    numba.set_num_threads(threads)
    m = (np.random.default_rng(0).random((4, 256, 256)) < 0.5).view(np.uint8)
    fn = {
        "label_3d": lambda: L.label_3d(m, L.backward_offsets(3, 26)),
        "largest_components_3d": lambda: L.largest_components_3d(m, L.backward_offsets(3, 26), 1),
        "label_stack_2d": lambda: L.label_stack_2d(m, L.backward_offsets(2, 8)),
        "largest_components_stack_2d": lambda: L.largest_components_stack_2d(
            m, L.backward_offsets(2, 8), 1),
        "fill_holes_stack": lambda: L.fill_holes_stack(m),
    }[step]
    t = time.perf_counter()
    fn()
    out["first_call_s"] = time.perf_counter() - t
sys.stdout.write(json.dumps(out) + "\n")
"""

FIRST_CALL_STEPS = [
    ("label_3d", 1),
    ("largest_components_3d", 1),
    ("label_stack_2d", 0),
    ("largest_components_stack_2d", 0),
    ("fill_holes_stack", 0),
    ("fill_holes_stack", 1),
    ("scipy", 1),
]


def first_calls(n_threads: int) -> list[dict]:
    """Per kernel: first-call seconds with a fresh cache (compile) and the warm one (load).

    Threads 0 = all of Numba's (the batched kernels then compile their parallel
    twin), 1 = the serial twin. Each kernel gets its own empty cache directory.
    """
    src = str(Path(__file__).resolve().parents[1] / "src")
    out = []
    for step, threads in FIRST_CALL_STEPS:
        threads = threads or n_threads
        with tempfile.TemporaryDirectory() as cache:
            env = {**os.environ, "NUMBA_CACHE_DIR": cache}
            env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
            res = {"step": step, "threads": threads}
            for state in ("cold", "warm"):
                done = subprocess.run(
                    [sys.executable, "-c", _FIRST_CALL, step, str(threads)],
                    env=env,
                    capture_output=True,
                    text=True,
                    check=True,
                )
                res[state] = json.loads(done.stdout.strip().splitlines()[-1])
            out.append(res)
    return out


# ------------------------------------------------------------------ report


def _pytest_running() -> int:
    done = subprocess.run(["pgrep", "-fc", "pytest"], capture_output=True, text=True)
    return int(done.stdout.strip() or 0)


def run(quick: bool, repeat: int) -> dict:
    shape = (32, 256, 256) if quick else (200, 512, 512)
    res: dict = {
        "quick": quick,
        "shape": shape,
        "repeat": repeat,
        "machine": machine_info(),
        "numba_threads": numba.get_num_threads(),
        "numba_threading_layer": None,
        "load_before": os.getloadavg(),
        "pytest_procs_before": _pytest_running(),
    }
    t0 = time.perf_counter()
    masks = {"liver": liver_mask(shape), "noise 50 %": noise_mask(shape)}
    res["fill_fraction"] = {k: float(v.mean()) for k, v in masks.items()}
    res["rows"] = measure(masks, repeat)
    try:
        res["numba_threading_layer"] = numba.threading_layer()
    except ValueError:  # no parallel kernel ran
        pass
    res["first_calls"] = first_calls(res["numba_threads"])
    res["load_after"] = os.getloadavg()
    res["pytest_procs_after"] = _pytest_running()
    res["wall_s"] = time.perf_counter() - t0
    return res


def _verdict(rows: list[dict]) -> dict[str, str]:
    """Per operation: Numba wins by the clear margin on every mask at all threads used?"""
    ops: dict[str, list[float]] = {}
    for r in rows:
        ops.setdefault(r["op"], []).append(r["scipy_over_numba"])
    return {
        op: ("Numba" if min(v) >= CLEAR_MARGIN else "SciPy")
        + f" (SciPy/Numba {min(v):.2f}-{max(v):.2f}x)"
        for op, v in ops.items()
    }


def to_markdown(res: dict) -> str:
    mi = res["machine"]
    d, h, w = res["shape"]
    lb, la = res["load_before"], res["load_after"]
    lines = [
        f"Machine: {mi['cpu']}, {mi['cores']} usable cores; Python {mi['python']}, "
        f"numpy {mi['versions']['numpy']}, numba {mi['versions']['numba']} "
        f"({res['numba_threads']} threads, layer {res['numba_threading_layer']}), "
        f"scipy {__import__('scipy').__version__} (ndimage: single-threaded C)"
        + ("; QUICK run" if res["quick"] else ""),
        f"Load average (1/5/15 min): before {lb[0]:.2f}/{lb[1]:.2f}/{lb[2]:.2f}, "
        f"after {la[0]:.2f}/{la[1]:.2f}/{la[2]:.2f}; pytest processes before/after: "
        f"{res['pytest_procs_before']}/{res['pytest_procs_after']}; wall {res['wall_s']:.0f} s",
        f"Masks {w}x{h}x{d}: liver {res['fill_fraction']['liver']:.1%} foreground, "
        f"noise {res['fill_fraction']['noise 50 %']:.1%}. Median of {res['repeat']} calls "
        "after one warm-up; outputs checked equal before timing.",
        "",
        "| operation | mask | Numba threads | Numba (ms) | SciPy (ms) | SciPy / Numba "
        "| same output | same numbering | notes |",
        "| --- | --- | ---: | ---: | ---: | ---: | --- | --- | --- |",
    ]
    for r in res["rows"]:
        num = "-" if r["same_numbering"] is None else ("yes" if r["same_numbering"] else "no")
        lines.append(
            f"| {r['op']} | {r['mask']} | {r['numba_threads']} | {r['numba_ms']:.1f} | "
            f"{r['scipy_ms']:.1f} | {r['scipy_over_numba']:.2f}x | "
            f"{'yes' if r['same_output'] else 'NO'} | {num} | {r['note']} |"
        )
    lines += [
        "",
        "| first call (4x256x256) | threads | fresh cache (s) | warm cache (s) | import (s) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for f in res["first_calls"]:
        name = "scipy.ndimage label + fill (no compile)" if f["step"] == "scipy" else f["step"]
        lines.append(
            f"| {name} | {f['threads']} | {f['cold']['first_call_s']:.2f} | "
            f"{f['warm']['first_call_s']:.3f} | {f['warm']['import_s']:.2f} |"
        )
    lines += ["", f"Verdict (Numba kept only at >= {CLEAR_MARGIN}x on every row of the operation):"]
    lines += [f"- {op}: {v}" for op, v in _verdict(res["rows"]).items()]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="256x256x32 masks instead of 512x512x200")
    ap.add_argument("--repeat", type=int, default=5, help="timed calls per case (>= 5)")
    ap.add_argument("--json", type=Path, help="also write the raw numbers here")
    args = ap.parse_args()
    if args.repeat < 5:
        ap.error("--repeat: at least 5")
    res = run(args.quick, args.repeat)
    print(to_markdown(res))
    if args.json:
        args.json.write_text(json.dumps(res, indent=2, default=str))


if __name__ == "__main__":
    main()
