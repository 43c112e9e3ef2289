"""Volume in, liver mask out: preprocess -> engine -> restore -> threshold, in batches."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from liverrt import metrics
from liverrt.data.preprocess import restore, volume_input
from liverrt.data.volume import Volume, check_image
from liverrt.errors import InputError, LiverrtError
from liverrt.runtime.base import Engine, require_task

log = logging.getLogger(__name__)


@dataclass
class Segmentation:
    """The Segmenter's result for one volume.

    ``mask``: (D, H, W) bool on the source grid; ``prob``: (D, H, W) float32
    probabilities when requested; ``timings``: seconds spent per stage.
    """

    case_id: str
    mask: np.ndarray
    prob: np.ndarray | None = None
    timings: dict[str, float] = field(default_factory=dict)

    def liver_ml(self, spacing: tuple[float, float, float]) -> float:
        return float(self.mask.sum()) * float(np.prod(spacing)) / 1000.0


class Segmenter:
    """Batches slices through an active :class:`Engine` using the artifact's PreprocessSpec.

    Post-processing (off by default, in this order): ``smooth_z_mm`` smooths the
    probabilities across slices with a Gaussian of that many mm before the
    threshold (:func:`liverrt.metrics.smooth_z`; ``prob`` is then the smoothed one);
    ``threshold`` defaults to the model's; ``fill_holes`` fills background enclosed
    by liver in each slice; ``keep_largest`` keeps the largest 26-connected liver
    component of the volume. Smoothing and keep-largest are right for contiguous CT
    volumes, wrong for folders of unrelated slices, whose livers do not touch from
    slice to slice; smoothing is skipped for a volume without slice geometry
    (:attr:`Volume.has_geometry`). A bundled model's card names the ones it was measured with
    (:attr:`liverrt.models.bundled.BundledModel.postprocess`).
    """

    def __init__(self, engine: Engine, *, batch_size: int = 8, threshold: float | None = None,
                 keep_prob: bool = False, fill_holes: bool = False, keep_largest: bool = False,
                 smooth_z_mm: float = 0.0, denoiser: Engine | None = None) -> None:
        if batch_size < 1:
            raise InputError(f"batch_size: got {batch_size}, expected >= 1.")
        self.engine = engine
        self.batch_size = batch_size
        self.threshold = engine.info.threshold if threshold is None else float(threshold)
        if not 0.0 < self.threshold < 1.0:
            raise InputError(f"threshold: got {self.threshold}, expected a value in (0, 1).")
        if not (np.isfinite(smooth_z_mm) and smooth_z_mm >= 0):
            raise InputError(f"smooth_z_mm: got {smooth_z_mm}, expected a finite number >= 0 (0 = off).")
        self.keep_prob = keep_prob
        self.fill_holes = fill_holes
        self.keep_largest = keep_largest
        self.smooth_z_mm = float(smooth_z_mm)
        if denoiser is not None:
            check_denoiser(denoiser, engine)
        self.denoiser = denoiser

    def segment(self, volume: Volume, on_batch: Callable[[int, int], None] | None = None) -> Segmentation:
        """Segment ``volume``; a float image with any NaN/Inf voxel raises :class:`InputError`.

        The readers convert or refuse non-finite voxels (:func:`liverrt.data.volume.finite_image`);
        a Volume built in Python must be finite too, so it is never segmented as it is.
        """
        check_finite_volume(volume)
        what = f"Volume {volume.case_id!r}" + (f" ({volume.source})" if volume.source else "")
        check_image(volume.image, what)
        if (note := self.engine.info.spec.check_input(volume.intensity, what)) is not None:
            log.warning(note)
        if not self.engine.is_active or (self.denoiser is not None and not self.denoiser.is_active):
            raise LiverrtError("Segmenter needs active engines; use `with engine:` around segmentation.")
        spec = self.engine.info.spec
        d = volume.shape[0]
        prob = np.empty(volume.shape, np.float32)
        t = {"preprocess": 0.0, "engine": 0.0, "postprocess": 0.0}
        if self.denoiser is not None:
            t["denoise"] = 0.0
        for start in range(0, d, self.batch_size):
            stop = min(d, start + self.batch_size)
            t0 = time.perf_counter()
            x, place = volume_input(volume, slice(start, stop), spec)
            t1 = time.perf_counter()
            t["preprocess"] += t1 - t0
            if self.denoiser is not None:
                x = np.ascontiguousarray(self.denoiser.infer(x)["restored"], dtype=np.float32)
                t["denoise"] += time.perf_counter() - t1
                t1 = time.perf_counter()
            out = self.engine.infer(x)["prob"]
            t2 = time.perf_counter()
            prob[start:stop] = restore(out[:, 0], place)
            t3 = time.perf_counter()
            t["engine"] += t2 - t1
            t["postprocess"] += t3 - t2
            if on_batch:
                on_batch(stop, d)
        t0 = time.perf_counter()
        if self.smooth_z_mm and volume.has_geometry:  # 8-bit slice folders: no spacing, maybe unrelated slices
            prob = metrics.smooth_z(prob, self.smooth_z_mm, float(volume.spacing[0]))
        mask = self.postprocess(prob >= self.threshold)
        t["postprocess"] += time.perf_counter() - t0
        return Segmentation(volume.case_id, mask, prob if self.keep_prob else None, t)

    def postprocess(self, mask: np.ndarray) -> np.ndarray:
        """The enabled post-processing steps on a ``(D, H, W)`` bool mask."""

        if self.fill_holes:
            mask = metrics.fill_holes(mask)
        if self.keep_largest:
            mask = metrics.largest_components(mask, k=1, connectivity=26)
        return mask


def check_finite_volume(volume: Volume) -> None:
    """Raise :class:`InputError` if ``volume.image`` holds NaN or infinite voxels."""
    image = np.asarray(volume.image)
    if image.dtype.kind == "f" and not np.isfinite(image).all():
        bad = int(image.size - np.count_nonzero(np.isfinite(image)))
        where = f" ({volume.source})" if volume.source else ""
        raise InputError(
            f"Volume {volume.case_id!r}{where}: {bad} of {image.size} image voxels are NaN or infinite; expected "
            "finite intensities (liverrt.data.volume.finite_image replaces them as the NIfTI reader does)."
        )


def check_denoiser(denoiser: Engine, engine: Engine) -> None:
    """A DnCNN-SR artifact that can clean the segmentation model's input in place.

    It must denoise without changing the size (scale 1) and share the
    segmentation model's PreprocessSpec window and grid, so its [0, 1] output
    means what the segmentation model was trained on.
    """
    d, s = denoiser.info, engine.info
    require_task(d, "denoising", role="--denoise")
    if int(d.model_config.get("scale", 1)) != 1:
        raise InputError(f"--denoise {denoiser.path}: a scale-{d.model_config.get('scale')} (super-resolution) "
                         "model changes the slice size; expected a scale-1 denoiser before segmentation.")
    fields = ("window_center", "window_width", "size", "resize", "pixel_mm", "quantize_8bit", "input_domain",
              "context")
    diff = [f"{f} {getattr(d.spec, f)} vs {getattr(s.spec, f)}" for f in fields
            if getattr(d.spec, f) != getattr(s.spec, f)]
    if diff:
        raise InputError(f"--denoise {denoiser.path}: its PreprocessSpec differs from the segmentation model's "
                         f"({'; '.join(diff)}); expected the same window and grid (train it with the same "
                         "--size, --window and --pixel-mm; a model with adjacent-slice context takes no denoiser).")
