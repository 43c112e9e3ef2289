"""``liverrt eval``."""

from __future__ import annotations

import json
from pathlib import Path

import click

from liverrt.cli.common import any_path, existing_path


@click.command("eval")
@click.option("--pred", type=existing_path, required=True, help="Predicted masks (NIfTI, PNG folder or case folders).")
@click.option("--gt", type=existing_path, required=True, help="Ground-truth masks, matched by case name.")
@click.option("--json", "json_path", type=any_path, default=None, help="Write the metrics as JSON here.")
def eval_cmd(pred: Path, gt: Path, json_path: Path | None) -> None:
    """Compare predicted liver masks with the ground truth (Mask IoU, Dice; per volume and per slice)."""
    from liverrt.data.io import write_text_atomic
    from liverrt.evaluation import evaluate, markdown_table

    result = evaluate(pred, gt)
    click.echo(markdown_table(result))
    if json_path:
        write_text_atomic(json.dumps(result, indent=2), json_path)
