"""Volume in, liver mask out: preprocess -> engine -> restore -> threshold, in batches."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from liverrt.data.preprocess import restore, to_input
from liverrt.data.volume import Volume
from liverrt.errors import InputError, LiverrtError
from liverrt.runtime.base import Engine


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
    """Batches slices through an active :class:`Engine` using the artifact's PreprocessSpec."""

    def __init__(self, engine: Engine, *, batch_size: int = 8, threshold: float | None = None,
                 keep_prob: bool = False) -> None:
        if batch_size < 1:
            raise InputError(f"batch_size: got {batch_size}, expected >= 1.")
        self.engine = engine
        self.batch_size = batch_size
        self.threshold = engine.info.threshold if threshold is None else float(threshold)
        if not 0.0 < self.threshold < 1.0:
            raise InputError(f"threshold: got {self.threshold}, expected a value in (0, 1).")
        self.keep_prob = keep_prob

    def segment(self, volume: Volume, on_batch: Callable[[int, int], None] | None = None) -> Segmentation:
        if not self.engine.is_active:
            raise LiverrtError("Segmenter needs an active engine; use `with engine:` around segmentation.")
        spec = self.engine.info.spec
        d = volume.shape[0]
        prob = np.empty(volume.shape, np.float32)
        t = {"preprocess": 0.0, "engine": 0.0, "postprocess": 0.0}
        for start in range(0, d, self.batch_size):
            stop = min(d, start + self.batch_size)
            t0 = time.perf_counter()
            x, place = to_input(volume.image[start:stop], volume.intensity, spec)
            t1 = time.perf_counter()
            out = self.engine.infer(x)["prob"]
            t2 = time.perf_counter()
            prob[start:stop] = restore(out[:, 0], place)
            t3 = time.perf_counter()
            t["preprocess"] += t1 - t0
            t["engine"] += t2 - t1
            t["postprocess"] += t3 - t2
            if on_batch:
                on_batch(stop, d)
        t0 = time.perf_counter()
        mask = prob >= self.threshold
        t["postprocess"] += time.perf_counter() - t0
        return Segmentation(volume.case_id, mask, prob if self.keep_prob else None, t)
