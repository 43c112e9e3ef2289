"""``liverrt data``: synthetic phantoms (and, later, inspect/convert/split)."""

from __future__ import annotations

from pathlib import Path

import click

from liverrt.cli.common import console, out_dir, progress_bar, seed_option


@click.group()
def data() -> None:
    """Create and prepare data."""


@data.command()
@click.option("--out", type=out_dir, required=True, help="Output folder (one sub-folder per case).")
@click.option("--cases", type=click.IntRange(1, 10000), default=8, show_default=True)
@seed_option
@click.option("--size", type=click.IntRange(32, 2048), default=256, show_default=True, help="Slice size in pixels.")
@click.option("--slices", type=click.IntRange(1, 2048), default=32, show_default=True, help="Slices per case.")
@click.option("--no-lesions", is_flag=True, help="Phantoms without liver lesions.")
def synth(out: Path, cases: int, seed: int, size: int, slices: int, no_lesions: bool) -> None:
    """Synthesise phantom abdominal CT cases (NIfTI + PNG slices).

    Phantoms exercise the pipeline; they are not a substitute for real CT.
    """
    from liverrt.data.phantom import PhantomConfig, synth_dataset

    cfg = PhantomConfig(size=size, slices=slices, lesions=not no_lesions)
    with progress_bar("synthesising", cases) as update:
        folders = synth_dataset(out, cases, seed=seed, config=cfg, on_case=lambda k, n: update(k + 1, n))
    console.print(f"wrote {len(folders)} phantom cases to {out} (see {out / 'phantom.json'})")
