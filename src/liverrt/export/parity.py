"""Does an exported model compute what the PyTorch model computes, on real slices?"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from liverrt.data.phantom import PhantomConfig, synth_case
from liverrt.data.preprocess import PreprocessSpec, volume_input
from liverrt.data.volume import Volume
from liverrt.metrics import per_slice_dice


@dataclass(frozen=True)
class ParityReport:
    n_slices: int
    max_abs_diff: float
    mean_abs_diff: float
    max_dice_delta: float
    mismatched_pixels: int
    decisive_mismatches: int
    atol: float
    max_dice_delta_allowed: float
    passed: bool

    def summary(self) -> str:
        return (
            f"{self.n_slices} slices, max |Δprob| {self.max_abs_diff:.2e}, mean {self.mean_abs_diff:.2e}, "
            f"max |ΔDice| {self.max_dice_delta:.2e}, {self.mismatched_pixels} mask pixels differ "
            f"({self.decisive_mismatches} farther than atol from the threshold)"
        )

    def to_dict(self) -> dict:
        return asdict(self)


def sample_inputs(spec: PreprocessSpec, volumes: list[Volume] | None, *, samples: int = 8, seed: int = 0) -> np.ndarray:
    """``samples`` preprocessed slices (N, 1, S, S): liver-bearing slices of ``volumes`` when given,
    otherwise slices of a seeded phantom case (never a random tensor)."""
    if not volumes:
        volumes = [synth_case(seed, PhantomConfig(size=max(64, min(spec.size, 256)), slices=max(samples, 8)))]
    rng = np.random.default_rng(seed)
    picks: list[np.ndarray] = []
    per_volume = max(1, -(-samples // len(volumes)))
    for vol in volumes:
        d = vol.shape[0]
        if vol.mask is not None and vol.mask.any():
            candidates = np.flatnonzero(vol.mask.any(axis=(1, 2)))
        else:
            candidates = np.arange(d)
        idx = np.sort(rng.choice(candidates, size=min(per_volume, candidates.size), replace=False))
        x, _ = volume_input(vol, idx, spec)
        picks.append(x)
    return np.concatenate(picks)[:samples]


def compare_outputs(
    reference: np.ndarray, candidate: np.ndarray, *, threshold: float, atol: float, max_dice_delta: float
) -> ParityReport:
    """Compare two (N, 1, S, S) probability stacks.

    Passes when every probability is finite and within ``atol`` of the reference
    and, per slice, ΔDice = 1 - Dice(reference mask, candidate mask) <= ``max_dice_delta``.
    Pixels whose reference probability lies within ``atol`` of the threshold are
    undecided: a flip there is within tolerance by definition, so they take the
    reference's label for the Dice comparison (they are still counted in
    ``mismatched_pixels``). With ``atol=inf`` the gate is purely metric-based.
    """
    diff = np.abs(reference.astype(np.float64) - candidate.astype(np.float64))
    ref_mask, cand_mask = reference >= threshold, candidate >= threshold
    undecided = np.abs(reference.astype(np.float64) - threshold) <= (atol if np.isfinite(atol) else 0.0)
    decided_cand = np.where(undecided, ref_mask, cand_mask)
    n = ref_mask.shape[0]
    deltas = list(1.0 - per_slice_dice(ref_mask.reshape(n, 1, -1), decided_cand.reshape(n, 1, -1))) if n else []
    max_abs = float(diff.max()) if diff.size else 0.0
    max_dd = float(max(deltas)) if deltas else 0.0
    finite = bool(np.isfinite(candidate).all())
    return ParityReport(
        n_slices=int(reference.shape[0]),
        max_abs_diff=max_abs if finite else float("inf"),
        mean_abs_diff=float(diff.mean()) if diff.size else 0.0,
        max_dice_delta=max_dd,
        mismatched_pixels=int((ref_mask != cand_mask).sum()),
        decisive_mismatches=int((ref_mask != decided_cand).sum()),
        atol=atol,
        max_dice_delta_allowed=max_dice_delta,
        passed=finite and max_abs <= atol and max_dd <= max_dice_delta,
    )


def parity_check(
    model: torch.nn.Module, onnx_path: Path, inputs: np.ndarray, *, threshold: float, atol: float, max_dice_delta: float
) -> ParityReport:
    """Run PyTorch (float32, eval) and onnxruntime (CPU) on ``inputs`` and compare."""

    with torch.no_grad():
        ref = torch.sigmoid(model.eval()(torch.from_numpy(inputs))).numpy()
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    (cand,) = sess.run(["prob"], {sess.get_inputs()[0].name: inputs})
    return compare_outputs(ref, cand, threshold=threshold, atol=atol, max_dice_delta=max_dice_delta)
