"""``python -m liverrt`` (what ``torchrun -m liverrt ...`` starts on every rank)."""

from liverrt.cli import main

if __name__ == "__main__":
    main()
