"""Case-level splits: slices of one case never end up on both sides."""

from __future__ import annotations

import numpy as np

from liverrt.errors import InputError


def case_split(case_ids: list[str], *, val_fraction: float = 0.2, seed: int = 0) -> tuple[list[str], list[str]]:
    """Split case ids into ``(train, val)``, deterministically for a given seed.

    At least one case goes to each side when there are two or more cases; the
    order inside each side follows the input order.
    """
    ids = list(case_ids)
    if len(set(ids)) != len(ids):
        raise InputError(f"Case ids must be unique; got duplicates in {ids}.")
    if len(ids) < 2:
        raise InputError(f"Need at least 2 cases for a train/validation split; got {len(ids)}.")
    if not 0.0 < val_fraction < 1.0:
        raise InputError(f"val_fraction: got {val_fraction}, expected a value in (0, 1).")
    n_val = min(len(ids) - 1, max(1, round(len(ids) * val_fraction)))
    order = np.random.default_rng(seed).permutation(len(ids))
    val = set(order[:n_val].tolist())
    return [c for i, c in enumerate(ids) if i not in val], [c for i, c in enumerate(ids) if i in val]


def kfold_split(case_ids: list[str], *, folds: int = 5, seed: int = 0) -> list[dict[str, list[str]]]:
    """``folds`` case-level folds: each case is validation in exactly one fold.

    Returns ``[{"fold": k, "train": [...], "val": [...]}, ...]``; fold sizes
    differ by at most one case; the order inside each list follows the input.
    """
    ids = list(case_ids)
    if len(set(ids)) != len(ids):
        raise InputError(f"Case ids must be unique; got duplicates in {ids}.")
    if folds < 2 or folds > len(ids):
        raise InputError(f"folds: got {folds} for {len(ids)} cases; expected 2 <= folds <= number of cases.")
    order = np.random.default_rng(seed).permutation(len(ids))
    fold_of = np.empty(len(ids), dtype=int)
    fold_of[order] = np.arange(len(ids)) % folds
    return [
        {"fold": k, "train": [c for i, c in enumerate(ids) if fold_of[i] != k],
         "val": [c for i, c in enumerate(ids) if fold_of[i] == k]}
        for k in range(folds)
    ]
