"""``liverrt data synth``: phantoms, or CT synthesised from real label maps."""

from __future__ import annotations

from pathlib import Path

import click

from liverrt.atomic import refuse_output_in_input, refuse_overwriting_inputs
from liverrt.cli.common import (
    any_path,
    console,
    existing_path,
    given,
    out_dir,
    overwrite_option,
    progress_bar,
    seed_option,
)
from liverrt.data.phantom import PhantomConfig, synth_dataset
from liverrt.data.sources import load_cases
from liverrt.training.synth_ct import SynthConfig, synth_from_labels


@click.command()
@click.option("-o", "--out", type=out_dir, required=True, help="Output folder (one sub-folder per case).")
@click.option("--from-labels", "labels", type=existing_path, default=None,
              help="CT synthesised from these label maps (a folder of labels.nii.gz + liver.nii.gz folders) "
                   "instead of phantoms.")
@click.option("--samples", type=click.IntRange(1, 1000), default=None,
              help="--from-labels: synthetic CTs per label map [default: 2].")
@click.option("--sheet", type=any_path, default=None,
              help="--from-labels: a PNG of synthetic slices (with --real: above real ones) to judge them by.")
@click.option("--real", type=existing_path, multiple=True,
              help="--sheet: real cases shown below the synthetic ones (repeatable).")
@click.option("--thorax-p", type=click.FloatRange(0, 1), default=None,
              help="--from-labels: share of samples given lung bases (where a map has none) and a heart above the "
                   "diaphragm [default: 0].")
@click.option("--hilum-p", type=click.FloatRange(0, 1), default=None,
              help="--from-labels: share of samples given a pancreas (where a map has none) and a duodenum below "
                   "the liver's hilum [default: 0].")
@click.option("--cases", type=click.IntRange(1, 10000), default=8, show_default=True, help="Phantom cases.")
@seed_option
@click.option("--size", type=click.IntRange(32, 2048), default=256, show_default=True, help="Slice size in pixels.")
@click.option("--slices", type=click.IntRange(1, 2048), default=32, show_default=True,
              help="Slices per phantom case.")
@click.option("--no-lesions", is_flag=True, help="Phantoms without liver lesions.")
@overwrite_option
@click.pass_context
def synth(ctx: click.Context, out: Path, labels: Path | None, samples: int | None, sheet: Path | None,
          real: tuple[Path, ...], thorax_p: float | None, hilum_p: float | None,
          cases: int, seed: int, size: int, slices: int, no_lesions: bool) -> None:
    """Synthesise abdominal CT cases (NIfTI): phantoms, or CT drawn from real label maps (--from-labels).

    Phantoms exercise the pipeline; they are not a substitute for real CT. CT from label maps keeps each
    map's expert liver mask and draws the intensities, contrast phase, texture, blur, slice thickness and
    noise at random (SynthSeg's recipe); --sheet shows samples beside real slices.
    """
    if labels is None:
        if samples is not None or real or sheet is not None or thorax_p is not None or hilum_p is not None:
            raise click.UsageError("--samples, --thorax-p, --hilum-p, --sheet and --real are for --from-labels")
        cfg = PhantomConfig(size=size, slices=slices, lesions=not no_lesions)
        with progress_bar("synthesising", cases) as update:
            folders = synth_dataset(out, cases, seed=seed, config=cfg, on_case=lambda k, n: update(k + 1, n))
        console.print(f"wrote {len(folders)} phantom cases to {out} (see {out / 'phantom.json'})")
        return
    used = [o for o in ("cases", "slices", "no_lesions") if given(ctx, o)]
    if used:
        raise click.UsageError(f"--{used[0].replace('_', '-')} is for phantoms, not --from-labels")
    if real and sheet is None:
        raise click.UsageError("--real names the real cases of --sheet; give --sheet too")
    refuse_output_in_input(out, [labels, *real])
    if sheet is not None:
        refuse_overwriting_inputs(sheet, (labels, *real))
    shown = [v for path in real for v in load_cases(path).volumes]
    config = SynthConfig(size=size, thorax_p=thorax_p or 0.0, hilum_p=hilum_p or 0.0)
    with progress_bar("synthesising") as update:
        folders = synth_from_labels(labels, out, samples=samples or 2, seed=seed, config=config, sheet=sheet,
                                    real=shown, on_case=lambda name, k, n: update(k, n, name))
    console.print(f"wrote {len(folders)} synthetic CT cases to {out} (see {out / 'synth.json'}"
                  + (f" and {sheet})" if sheet else ")"))
