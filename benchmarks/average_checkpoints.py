"""Average the weights of checkpoints of one network (a "model soup"): the bundled liver-unet is the
average of two seeds of one fine-tuning recipe (benchmarks/real_mix.sh; RESULTS.md, 2026-12-07 night).

    python benchmarks/average_checkpoints.py OUT.pt CKPT CKPT [CKPT ...]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from liverrt.artifacts import average_checkpoints
from liverrt.errors import LiverrtError


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("checkpoints", type=Path, nargs="+")
    args = ap.parse_args(argv)
    try:
        average_checkpoints(args.checkpoints, args.out)
    except LiverrtError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(f"wrote {args.out}: the mean of {len(args.checkpoints)} checkpoints' weights")
    return 0


if __name__ == "__main__":
    sys.exit(main())
