"""Metric kernels vs naive SciPy references: ``python benchmarks/bench_metrics.py [--quick] [--json F]``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from liverrt.bench.metrics import run, to_markdown


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="smaller stack/volume, fewer repeats")
    ap.add_argument("--json", type=Path, help="also write the raw numbers here")
    args = ap.parse_args()
    res = run(args.quick)
    print(to_markdown(res))
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
