"""U-Net engine latency (torch eager vs onnxruntime): ``python benchmarks/bench_unet.py [--full] [--out DIR]``."""

from __future__ import annotations

import argparse
from pathlib import Path

from liverrt.bench import markdown_report, run_bench


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--full", action="store_true", help="more repeats")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    print(markdown_report(run_bench(args.out, quick=not args.full, sections=("engines",))))


if __name__ == "__main__":
    main()
