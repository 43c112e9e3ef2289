"""Make the shared naive references in ``tests/kernels/mask_refs.py`` importable."""

import sys
from pathlib import Path

_KERNEL_TESTS = str(Path(__file__).resolve().parents[1] / "kernels")
if _KERNEL_TESTS not in sys.path:
    sys.path.insert(0, _KERNEL_TESTS)
