"""``liverrt bench``: measured, not asserted.

Sections (each measured in one run, on this machine, with the hardware named):

* ``engines``: per-slice latency of a network, torch eager vs onnxruntime fp32/fp16/int8 (and TensorRT
  where it runs), batch 1 and 8, with each variant's verification gate. The network is the bundled
  default model unless ``model`` names another (a bundled model's name, a checkpoint or an ONNX file)
  or ``random_weights`` asks for a network with seeded random weights (timed, never gated); see
  :mod:`liverrt.bench.subject`;
* ``metrics``: the Numba metric kernels vs naive SciPy references, and their first-call times.

``quick`` runs both sections with less (:data:`QUICK_SKIPS`, listed in the report). ``run_bench`` writes
``report.md`` (Markdown, naming the model it timed at the top) and ``results.json``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from liverrt.atomic import check_outputs, write_text_atomic, writes_outputs
from liverrt.bench import engines, metrics
from liverrt.bench.engines import run_engines
from liverrt.bench.engines_report import markdown_report as engines_md
from liverrt.bench.metrics import to_markdown
from liverrt.bench.subject import RandomWeights
from liverrt.errors import InputError

SECTIONS = ("engines", "metrics")
#: what ``quick`` leaves out, per section (both sections run)
QUICK_SKIPS = {"engines": engines.QUICK_SKIPS, "metrics": metrics.QUICK_SKIPS}


@writes_outputs("liverrt bench")
def run_bench(out: Path | None = None, *, quick: bool = True, model: str | Path | None = None,
              random_weights: RandomWeights | None = None, sections: tuple[str, ...] = SECTIONS,
              batch_sizes: tuple[int, ...] = (1, 8), on_step: Callable[[str], None] | None = None,
              overwrite: bool = False) -> dict:
    """Run ``sections``; with ``out``, write ``report.md`` and ``results.json`` there (replacing only
    liverrt's own unless ``overwrite``). ``model``: a bundled model's name or a checkpoint/ONNX file
    (default: the bundled default model); ``random_weights``: time a network with random weights instead."""
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        raise InputError(f"Unknown bench sections {unknown}; expected a subset of {SECTIONS}.")
    if model is not None and random_weights is not None:
        raise InputError(f"Got both a model ({model}) and random weights; expected one of them.")
    if out is not None:  # before any timing: only liverrt's own reports are replaced
        check_outputs([Path(out) / "results.json", Path(out) / "report.md"])
    results: dict = {"quick": quick, "sections": [s for s in SECTIONS if s in sections]}
    if quick:
        results["quick_skips"] = [line for s in results["sections"] for line in QUICK_SKIPS[s]]
    if "engines" in sections:
        results["engines"] = run_engines(quick=quick, model=model, random_weights=random_weights,
                                         batch_sizes=batch_sizes, on_step=on_step)
    if "metrics" in sections:
        if on_step:
            on_step("metric kernels vs SciPy references (and Numba first-call times)")
        results["metrics"] = metrics.run(quick)
    if out is not None:
        out = Path(out)
        write_text_atomic(json.dumps(results, indent=2), out / "results.json")
        write_text_atomic(markdown_report(results), out / "report.md")
    return results


def markdown_report(results: dict) -> str:
    parts = [f"# liverrt benchmark report ({'quick' if results['quick'] else 'full'})", ""]
    if "engines" in results:
        subject = results["engines"].get("subject") or {"name": results["engines"]["model"], "origin": ""}
        parts.append(f"Model timed: **{subject['name']}**" + (f" ({subject['origin']})" if subject["origin"] else ""))
        parts.append("")
    if results.get("quick_skips"):
        parts += ["Quick run; it skips (run without --quick for these):", "",
                  *[f"- {line}" for line in results["quick_skips"]], ""]
    if "engines" in results:
        parts.append(engines_md(results["engines"]))
    if "metrics" in results:
        parts += ["## Metric kernels (Numba) vs naive SciPy references", "", to_markdown(results["metrics"]), ""]
    return "\n".join(parts)
