"""Liver models shipped inside the package, loaded from the installed files (nothing is downloaded).

Each is an ONNX file written by ``liverrt export`` (its PreprocessSpec, threshold and provenance in
its metadata) and a model card, ``<name>.card.json``: what it was trained on and under which
licences, how, what it measured on real scans, how fast it runs, where it fails. ``liverrt models``
prints the cards; ``liverrt infer`` without ``--model`` and :func:`liverrt.segment` use
:data:`DEFAULT`. Adding a model: its ``.onnx`` and ``.card.json`` here and a line in
:data:`REGISTRY`; ``tests/models/test_bundled.py`` then checks it against the checkpoint it came
from and its card against the script that measured it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

from liverrt.errors import InputError

#: the model ``liverrt infer`` and ``liverrt.segment`` use when none is named
DEFAULT = "liver-unet"


@dataclass(frozen=True)
class BundledModel:
    name: str
    file: str  # the ONNX file in this package folder

    @property
    def path(self) -> Path:
        return Path(str(files(__name__).joinpath(self.file)))

    @property
    def card(self) -> dict:
        """The model card (``<file stem>.card.json``)."""
        return json.loads(files(__name__).joinpath(self.file.replace(".onnx", ".card.json")).read_text("utf-8"))

    @property
    def postprocess(self) -> dict:
        """The post-processing its card's figures were measured with, as :class:`~liverrt.runtime.segmenter.Segmenter`
        keywords (``smooth_z_mm``, ``threshold``, ``fill_holes``, ``keep_largest``): what ``liverrt infer`` and
        :func:`liverrt.segment` use for it unless told otherwise."""
        return dict(self.card["postprocess"])

    def card_markdown(self) -> str:
        """The card as a person reads it (``liverrt models NAME``)."""
        c = self.card
        lines = [f"# {self.name} ({'default' if self.name == DEFAULT else 'bundled'})", "", c["summary"], "",
                 f"**Use**: {c['use']}", "", f"**Licence of the weights**: {c['licence']}", "",
                 "## Training data", ""]
        lines += [f"- {s['source']}: {s['what']} — licence {s['licence']}" for s in c["training_data"]]
        lines += ["", "## Model and preprocessing", "", *[f"- {k}: {v}" for k, v in c["model"].items()],
                  f"- post-processing (on by default): {_postprocess_text(self.postprocess)}", ""]
        estimate = c.get("estimate")
        if estimate:  # the model saw the measured volumes in training: its figures on them are optimistic
            lines += ["## Estimate for scans it has not seen", "", estimate["method"], "",
                      *_metrics_table(estimate["metrics"]), "",
                      *[f"Measured by: `{cmd}`" for cmd in estimate["measured_by"]], "",
                      "## This model on the same volumes (seen in training: optimistic)", ""]
        else:
            lines += ["## Measured on real CT (never seen in training)", ""]
        lines += [*_metrics_table(c["metrics"]), "", f"Measured by: `{c['measured_by']}`", "", "## Speed", "",
                  c["speed"], "",
                  "## Known failure modes", "", *[f"- {f}" for f in c["failure_modes"]], "",
                  "## How it was made", "", *[f"    {cmd}" for cmd in c["commands"]]]
        return "\n".join(lines) + "\n"


def _postprocess_text(post: dict) -> str:
    steps = []
    if post.get("smooth_z_mm"):
        steps.append(f"probabilities smoothed across slices (Gaussian, sigma {post['smooth_z_mm']:g} mm)")
    if post.get("threshold") is not None:
        steps.append(f"threshold {post['threshold']:g}")
    if post.get("fill_holes"):
        steps.append("holes filled in each slice")
    if post.get("keep_largest"):
        steps.append("largest 3-D component kept")
    return ", ".join(steps) or "none"


def _metrics_table(metrics: dict[str, dict]) -> list[str]:
    lines = ["| volume | Dice | Mask IoU | RAVD % | ASSD mm | HD95 mm | FP slices / liver-free |",
             "|---|---|---|---|---|---|---|"]
    for case, m in metrics.items():
        lines.append(f"| {case} | {m['dice']:.4f} | {m['mask_iou']:.4f} | {m['ravd']:.1f} | {m['assd']:.2f} | "
                     f"{m['hd95']:.2f} | {m['fp_slices']} / {m['liver_free_slices']} |")
    return lines


#: every bundled model, the default first
REGISTRY: tuple[BundledModel, ...] = (BundledModel(DEFAULT, "liver_unet.onnx"),)


def bundled_models() -> tuple[BundledModel, ...]:
    """The models whose files this installation holds."""
    return tuple(m for m in REGISTRY if m.path.is_file())


def bundled_model(name: str | None = None) -> BundledModel:
    """The bundled model called ``name`` (default: :data:`DEFAULT`)."""
    name = name or DEFAULT
    available = {m.name: m for m in bundled_models()}
    if name not in available:
        raise InputError(f"No bundled model {name!r} in this installation; expected one of {sorted(available)} "
                         "(`liverrt models` lists them), or pass --model with your own .onnx or .pt.")
    return available[name]


def resolve_model(model: str | Path | None) -> tuple[Path, BundledModel | None]:
    """What ``--model`` / ``model=`` names: an existing file, else a bundled model's name (default: the
    default model). Returns the file and, for a bundled model, which (its card's post-processing is on by default)."""
    if model is not None and Path(model).exists():
        return Path(model), None
    if model is not None and (isinstance(model, Path) or Path(model).suffix):
        raise InputError(f"{model} does not exist; expected a .pt or .onnx file, or a bundled model's name "
                         "(`liverrt models`).")
    chosen = bundled_model(model)
    return chosen.path, chosen


def postprocess_options(model: BundledModel | None, **given) -> dict:
    """:class:`~liverrt.runtime.segmenter.Segmenter` post-processing keywords: a bundled model's (its card's),
    none for other models; each keyword given with a value other than ``None`` overrides."""
    options = {"smooth_z_mm": 0.0, "threshold": None, "fill_holes": False, "keep_largest": False}
    if model is not None:
        options.update(model.postprocess)
    unknown = set(given) - set(options)
    if unknown:
        raise TypeError(f"postprocess_options: unknown keywords {sorted(unknown)}")
    options.update({k: v for k, v in given.items() if v is not None})
    return options
