"""U-Net engine latency: torch eager vs onnxruntime, per slice, batch 1 and 8.

Run: ``python benchmarks/bench_unet.py [--full] [--out DIR]`` (same as ``liverrt bench``).
Prints the Markdown report; ratios are measured in one run on this machine.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from liverrt.bench import markdown_report, run_bench


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--full", action="store_true", help="more repeats")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    print(markdown_report(run_bench(args.out, quick=not args.full)))


if __name__ == "__main__":
    main()
