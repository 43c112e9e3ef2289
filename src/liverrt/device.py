"""Which torch device a command runs on: one rule for training, the torch engine and the benchmarks."""

from __future__ import annotations

import torch

from liverrt.errors import InputError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"Device {name!r} requested but CUDA is not available here; expected 'cpu' or 'auto'.")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InputError(f"Unknown device {name!r}; expected 'auto', 'cpu', 'cuda' or 'cuda:N'.") from None
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise InputError(f"Device {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s).")
    return device
