"""``liverrt data``: synthetic phantoms, inspection, conversion and case-level splits."""

from __future__ import annotations

import json
from pathlib import Path

import click

from liverrt.atomic import (
    check_replaceable,
    refuse_overwriting_inputs,
    write_text_atomic,
)
from liverrt.cli.common import (
    LazyGroup,
    any_path,
    console,
    existing_path,
    fail_if_skipped,
    kitti_options,
    layout_option,
    out_dir,
    overwrite_option,
    seed_option,
)
from liverrt.data.convert import convert as run_convert
from liverrt.data.inspect import inspect_source, text_report
from liverrt.data.sources import ReadOptions, find_cases
from liverrt.data.splits import kfold_split


@click.group(cls=LazyGroup, lazy={
    # synthesis imports torch (the projection noise model): loaded only when it runs
    "synth": ("liverrt.cli.synth:synth",
              "Synthesise abdominal CT cases (NIfTI): phantoms, or CT drawn from real label maps (--from-labels)."),
})
def data() -> None:
    """Create and prepare data."""


@data.command()
@click.argument("src", type=existing_path)
@click.option("--folds", type=click.IntRange(2), default=5, show_default=True)
@seed_option
@click.option("-o", "--out", "out_file", type=any_path, default=None, help="Write the folds as JSON here (default: stdout).")
@layout_option
@overwrite_option
def split(src: Path, folds: int, seed: int, out_file: Path | None, layout: str | None) -> None:
    """Case-level K-fold split of the cases in SRC (slices of one case never in two folds)."""


    if out_file is not None:  # before any work
        refuse_overwriting_inputs(out_file, (src,))
        check_replaceable(out_file)
    ids = [c.case_id for c in find_cases(src, layout=layout)]
    payload = json.dumps({"source": str(src), "seed": seed, "folds": kfold_split(ids, folds=folds, seed=seed)},
                         indent=2)
    if out_file is None:
        click.echo(payload)
    else:
        write_text_atomic(payload, out_file, protect=(src,))
        console.print(f"{folds} folds of {len(ids)} cases -> {out_file}")


@data.command()
@click.argument("src", type=existing_path)
@click.option("--json", "as_json", is_flag=True, help='One JSON object {"cases": [...], "warnings": [...]} on stdout.')
@layout_option
@kitti_options
def inspect(src: Path, as_json: bool, layout: str | None, label: str, unannotated: str) -> None:
    """Summarise what SRC holds: layout, slices, annotated range, geometry, two-region slices, warnings."""


    report = inspect_source(src, layout=layout, options=ReadOptions(label=label, unannotated=unannotated))
    click.echo(json.dumps(report, indent=2) if as_json else text_report(report))


@data.command()
@click.argument("src", type=existing_path)
@click.option("-o", "--out", type=out_dir, required=True, help="Output folder: one <case>/ folder per case.")
@click.option("--to", "to", type=click.Choice(["nifti", "png"]), required=True)
@layout_option
@kitti_options
@overwrite_option
def convert(src: Path, out: Path, to: str, layout: str | None, label: str, unannotated: str) -> None:
    """Convert every case of SRC (any readable layout) to NIfTI or PNG case folders."""
    report = run_convert(src, out, to=to, layout=layout, options=ReadOptions(label=label, unannotated=unannotated),
                         on_case=lambda cid, i, n: console.print(f"[{i + 1}/{n}] {cid}"))
    for note in report["notes"]:
        console.print(f"[yellow]note[/] {note}")
    console.print(f"{len(report['cases'])} case(s) -> {out}")
    fail_if_skipped(report["skipped"], len(report["cases"]))
