"""``liverrt export``."""

from __future__ import annotations

from pathlib import Path

import click

from liverrt.cli.common import any_path, console, existing_path


@click.command()
@click.argument("checkpoint", type=existing_path)
@click.option("--format", "fmt", type=click.Choice(["onnx"]), default="onnx", show_default=True)
@click.option("--out", type=any_path, required=True, help="Output file (model.onnx).")
@click.option("--opset", type=click.IntRange(17), default=18, show_default=True)
@click.option("--exporter", type=click.Choice(["dynamo", "torchscript"]), default="dynamo", show_default=True)
@click.option("--verify-data", type=existing_path, default=None,
              help="Cases whose slices the parity check runs on (default: phantom slices).")
@click.option("--atol", type=float, default=1e-4, show_default=True, help="Max |Δprobability| torch vs onnxruntime.")
def export(checkpoint: Path, fmt: str, out: Path, opset: int, exporter: str, verify_data: Path | None,
           atol: float) -> None:
    """Export a checkpoint and verify it against PyTorch (the file is kept only if it passes)."""
    from liverrt.data.sources import load_cases
    from liverrt.export.onnx import export_onnx

    volumes = load_cases(verify_data).volumes if verify_data else None
    result = export_onnx(checkpoint, out, opset=opset, exporter=exporter, verify_volumes=volumes, atol=atol)
    console.print(
        f"{fmt} {result.path} ({result.size_bytes / 1e6:.1f} MB, opset {result.opset}, {result.exporter}, "
        f"{result.seconds:.1f}s); parity PASSED: {result.parity.summary()}"
    )
