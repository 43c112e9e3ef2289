"""Numba kernels (private): pure functions, C-contiguous arrays in, arrays out.

Masks are 0/1 ``uint8`` (a bool array viewed as ``uint8``); 3D arrays are
``(D, H, W)`` and 2D data that a 3D kernel needs is passed as ``(1, H, W)``.
The public, validated API is :mod:`liverrt.metrics`.

Modules:

* :mod:`.counts` - confusion counts, bounding boxes, and :func:`.counts.pick`,
  which chooses between the serial and the ``prange`` twin of each batched
  kernel (the parallel one only for batches of >= 2**17 voxels and more than
  one thread, so small inputs never pay for waking the thread pool and the
  slow parallel compile happens only when it is used);
* :mod:`.bitset` - column-packed bit images: shifts, square erosion/dilation,
  contours and disk dilation on 64 pixels per word;
* :mod:`.pair` - the fused per-slice counts behind the Table-6 metrics;
* :mod:`.morphology` - byte-mask boundary bands, square dilation, contours and
  CHAOS surfaces;
* :mod:`.edt` - exact anisotropic Euclidean distance transform
  (Felzenszwalb-Huttenlocher) and surface distances;
* :mod:`.label` - connected components, keep-largest-k, 2D hole filling.

Caching: every kernel is ``cache=True``. Numba checks only the source file of
the cached function itself, not of the kernels it calls, so after editing a
module here clear the cache (``$NUMBA_CACHE_DIR`` or the ``__pycache__``
``*.nbi``/``*.nbc`` files), or callers in other modules keep the old code. A kernel that is not in the
cache yet is compiled on its first call; :mod:`.compile_notice` logs one line
(INFO) before the first such compilation in a process.
"""

from liverrt.kernels import compile_notice  # noqa: F401 - registers the first-compile notice
