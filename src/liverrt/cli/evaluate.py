"""``liverrt eval``."""

from __future__ import annotations

import json
from pathlib import Path

import click

from liverrt.atomic import check_outputs, refuse_overwriting_inputs, write_text_atomic
from liverrt.cli.common import any_path, existing_path, overwrite_option
from liverrt.errors import InputError
from liverrt.evaluation import evaluate, markdown_table


def _parse_spacing(ctx, param, value: str | None):
    if value is None:
        return None
    try:
        parts = tuple(float(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"got {value!r}, expected three numbers Z,Y,X in mm, e.g. 2.5,0.8,0.8") from None
    if len(parts) != 3 or min(parts) <= 0:
        raise click.BadParameter(f"got {value!r}, expected three positive numbers Z,Y,X in mm")
    return parts


@click.command("eval")
@click.option("-p", "--pred", type=existing_path, required=True, help="Predicted masks: NIfTI/NRRD/MetaImage label maps, DICOM SEG, PNG folder or case folders.")
@click.option("-g", "--gt", type=existing_path, required=True, help="Ground-truth masks (as --pred, or labelled cases of any layout), matched by case name.")
@click.option("--spacing", callback=_parse_spacing, default=None, metavar="Z,Y,X",
              help="Voxel spacing in mm for distances (overrides file headers).")
@click.option("--like", type=existing_path, default=None,
              help="Take the spacing from this NIfTI file or DICOM series folder.")
@click.option("--json", "json_path", type=any_path, default=None, help="Write the metrics as JSON here.")
@click.option("--csv", "csv_path", type=any_path, default=None, help="Write per-slice metrics as CSV here.")
@click.option("--missing", type=click.Choice(["error", "skip", "empty"]), default="error", show_default=True,
              help="A ground-truth case without a prediction: fail, leave it out, or score it as empty.")
@click.option("--min-region-area", type=click.IntRange(1), default=32, show_default=True,
              help="A true liver region counts for the two-or-more-regions report from this many pixels.")
@overwrite_option
def eval_cmd(pred: Path, gt: Path, spacing, like: Path | None, json_path: Path | None,
             csv_path: Path | None, missing: str, min_region_area: int) -> None:
    """Score predicted liver masks against the ground truth, per volume and per slice.

    Per volume: Dice, Mask IoU, RAVD, ASSD/MSSD/HD95 in mm; per slice: Mask/Trimap/Boundary IoU,
    F-measure and boundary F; the same, separately, on slices whose liver has two or more regions.
    Prints a Markdown table."""

    if spacing is not None and like is not None:
        raise click.UsageError("give --spacing or --like, not both")
    if json_path is not None and csv_path is not None and json_path.resolve() == csv_path.resolve():
        raise click.UsageError("--json and --csv name the same file; expected two files")
    inputs = tuple(p for p in (pred, gt, like) if p is not None)
    outputs = [out for out in (json_path, csv_path) if out is not None]
    for out in outputs:
        refuse_overwriting_inputs(out, inputs)
    check_outputs(outputs)  # before scoring: a file liverrt did not write is not replaced
    result = evaluate(pred, gt, spacing=spacing, like=like, csv_path=csv_path, missing=missing,
                      min_region_area=min_region_area)
    click.echo(markdown_table(result))
    if json_path:
        write_text_atomic(json.dumps(result, indent=2), json_path, protect=inputs)
    if result["skipped"]:
        raise InputError(f"{len(result['skipped'])} case(s) could not be scored (listed above); the others were.")
