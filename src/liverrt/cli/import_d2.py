"""``liverrt import-detectron2``."""

from __future__ import annotations

from pathlib import Path

import click

from liverrt.cli.common import any_path, console, existing_path, overwrite_option
from liverrt.data.preprocess import PreprocessSpec
from liverrt.models.detectron2_import import import_detectron2 as run_import


@click.command("import-detectron2")
@click.argument("model_path", metavar="MODEL.pth", type=existing_path)
@click.option("--config", "config_path", type=existing_path, default=None,
              help="Detectron2 YAML config of the model (_BASE_ files are followed). Without it, what the weights "
                   "tell is inferred and Detectron2's defaults fill the rest.")
@click.option("-o", "--out", type=any_path, required=True, help="Output liverrt checkpoint (.pt).")
@click.option("--trust-pickle", is_flag=True,
              help="Allow unpickling (.pkl model-zoo files, .pth files holding numpy arrays): only for files you trust.")
@click.option("--size", type=click.IntRange(32), default=512, show_default=True,
              help="Square network input size (multiple of 32; the study used 512).")
@click.option("--window", type=(float, float), default=(50.0, 400.0), show_default=True,
              metavar="CENTER WIDTH", help="HU window that maps CT to the 0..255 grey levels the model was trained on.")
@overwrite_option
def import_detectron2(model_path: Path, config_path: Path | None, out: Path, trust_pickle: bool, size: int,
                      window: tuple[float, float]) -> None:
    """Convert a Detectron2 Mask R-CNN (R-50/R-101 FPN) checkpoint into a liverrt checkpoint."""

    spec = PreprocessSpec(window_center=window[0], window_width=window[1], size=size, input_domain="8bit",
                          quantize_8bit=True)
    path = run_import(model_path, out, config_path=config_path, trust_pickle=trust_pickle, size=size, spec=spec,
                      on_note=lambda note: console.print(f"  note: {note}", markup=False, highlight=False))
    source = f"config {config_path.name}" if config_path else "the weights and Detectron2's defaults (no --config)"
    console.print(f"checkpoint {path} (kind maskrcnn) from {model_path.name}, configured from {source}",
                  markup=False, highlight=False)
