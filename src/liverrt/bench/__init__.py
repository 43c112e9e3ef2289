"""``liverrt bench``: measured, not asserted.

Sections (each measured in one run, on this machine, with the hardware named):

* ``engines``: per-slice latency of a network (the U-Net unless ``model`` names another
  checkpoint), torch eager vs onnxruntime fp32/fp16/int8 (and TensorRT where it runs), batch 1 and 8;
* ``metrics``: the Numba metric kernels vs naive SciPy references, and their
  first-call compile times.

``run_bench`` writes ``report.md`` (Markdown) and ``results.json``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from liverrt.atomic import check_outputs, write_text_atomic, writes_outputs
from liverrt.bench import metrics
from liverrt.bench.engines import markdown_report as engines_md
from liverrt.bench.engines import run_engines
from liverrt.bench.metrics import to_markdown
from liverrt.errors import InputError

SECTIONS = ("engines", "metrics")


@writes_outputs("liverrt bench")
def run_bench(out: Path | None = None, *, quick: bool = True, model: Path | None = None,
              sections: tuple[str, ...] = SECTIONS, batch_sizes: tuple[int, ...] = (1, 8),
              on_step: Callable[[str], None] | None = None, overwrite: bool = False) -> dict:
    """Run ``sections``; with ``out``, write ``report.md`` and ``results.json`` there (replacing only
    liverrt's own unless ``overwrite``)."""
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        raise InputError(f"Unknown bench sections {unknown}; expected a subset of {SECTIONS}.")
    if out is not None:  # before any timing: only liverrt's own reports are replaced
        check_outputs([Path(out) / "results.json", Path(out) / "report.md"])
    results: dict = {"quick": quick}
    if "engines" in sections:
        results["engines"] = run_engines(quick=quick, model=model, batch_sizes=batch_sizes, on_step=on_step)
    if "metrics" in sections:
        if on_step:
            on_step("metric kernels vs SciPy references (and Numba compile times)")
        results["metrics"] = metrics.run(quick)
    if out is not None:
        out = Path(out)
        write_text_atomic(json.dumps(results, indent=2), out / "results.json")
        write_text_atomic(markdown_report(results), out / "report.md")
    return results


def markdown_report(results: dict) -> str:
    parts = [f"# liverrt benchmark report ({'quick' if results['quick'] else 'full'})", ""]
    if "engines" in results:
        parts.append(engines_md(results["engines"]))
    if "metrics" in results:
        parts += ["## Metric kernels (Numba) vs naive SciPy references", "", to_markdown(results["metrics"]), ""]
    return "\n".join(parts)
