"""The engines section of the bench report, in Markdown, from the results dict :func:`run_engines` returns."""

from __future__ import annotations

from liverrt.models import model_class


def _num(value: float | None, fmt: str) -> str:
    return "—" if value is None else format(value, fmt)


def markdown_report(results: dict) -> str:
    described = model_class(results.get("kind", "unet"))
    title = described.title
    lines = [f"## {title} engines", "", *_header(results), "", *_timing_table(results["rows"]), ""]
    lines += _ratio_lines(results)
    if described.task == "denoising":
        lines.append(f"- end to end for {title}: preprocess + network (its output is an image)")
    if described.split_export:
        lines.append(f"- {title}: 'network' is the three graphs plus the NumPy/Numba steps between them (proposals, "
                     "NMS, mask pasting); fp16 converts the backbone + FPN + RPN graph (the RoI heads stay fp32), "
                     "int8 all three graphs (the heads calibrated on the RoIs the pipeline makes)")
    if results.get("gates"):
        lines += ["", "Verification gate against torch (2 phantom cases):", "",
                  *_gate_table(results["gates"], described.gate)]
    notes = [f"- {verdict}: {why}" for verdict, why in results.get("not_gated_why", {}).items()]
    notes += [f"- skipped {sk['variant']}: {sk['reason']}" for sk in results.get("skipped", [])]
    lines += ["", *notes] if notes else []
    return "\n".join(lines) + "\n"


def _header(results: dict) -> list[str]:
    m = results["machine"]
    return [
        f"- machine: {m['cpu']}, {m['cores']} cores (torch threads {m['torch_threads']})"
        + (f", GPU {m['gpu']}" if m.get("gpu") else ", no GPU"),
        f"- date: {m['date']}; python {m['python']}; "
        + ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v),
        f"- model: {results['model']}; input {results['input']}",
        f"- mode: {'quick' if results['quick'] else 'full'}; warm-up 2 calls, then median/p95 over the repeats",
    ]


def _timing_table(rows: list[dict]) -> list[str]:
    lines = ["| engine | precision | batch | repeats | ms/batch (median) | ms/batch (p95) | ms/slice network | "
             "slices/s | ms/slice end to end |",
             "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['engine']} | {r.get('precision', 'fp32')} | {r['batch']} | {r['repeats']} | "
              f"{r['batch_ms_median']:.1f} | {r['batch_ms_p95']:.1f} | {r['slice_ms_median']:.1f} | "
              f"{r['slices_per_s']:.2f} | {r.get('e2e_slice_ms_median', float('nan')):.1f} |" for r in rows]
    return lines


def _ratio_lines(results: dict) -> list[str]:
    lines = [f"- onnxruntime / torch speed ratio at {k.replace('_', ' ')}: **{v:.2f}x** "
             f"(torch ms/slice ÷ onnxruntime ms/slice, same run)"
             for k, v in results["speedup_onnxruntime_over_torch"].items()]
    for k, v in results.get("int8", {}).items():
        name, _, batch = k.rpartition("batch_")
        lines.append(f"- {name or 'int8 '}onnxruntime at batch {batch}: {v['int8_ms_per_slice']:.1f} ms/slice, "
                     f"**{v['vs_onnxruntime_fp32']:.2f}x** onnxruntime fp32"
                     + ("" if v.get("vs_torch") is None else f", **{v['vs_torch']:.2f}x** torch eager"))
    cal = results.get("int8_calibration")
    if cal:
        lines.append(f"- int8 activation ranges: {cal['method']} from {cal.get('slices', '?')} phantom slices"
                     + (f", {len(cal['float_tensors'])} tensors left float" if cal.get("float_tensors") else "")
                     + (f" (calibration ΔDice {cal['calib_delta_dice']:.2e})"
                        if cal.get("calib_delta_dice") is not None else ""))
    return lines


def _gate_table(gates: list[dict], gated_by: str) -> list[str]:
    if gated_by == "psnr":
        lines = ["| engine | precision | mean PSNR vs PyTorch (dB) | worst slice (dB) | gate |",
                 "|---|---|---|---|---|"]
        return lines + [f"| {g['engine']} | {g['precision']} | {_num(g.get('mean_psnr_db'), '.1f')} | "
                        f"{_num(g.get('worst_psnr_db'), '.1f')} | {g['verdict']} |" for g in gates]
    lines = ["| engine | precision | mean ΔDice | worst ΔDice | mean ΔBoundary IoU | gate |",
             "|---|---|---|---|---|---|"]
    return lines + [f"| {g['engine']} | {g['precision']} | {_num(g.get('mean_delta_dice'), '.2e')} | "
                    f"{_num(g.get('worst_delta_dice'), '.2e')} | {_num(g.get('mean_delta_boundary_iou'), '.2e')} | "
                    f"{g['verdict']} |" for g in gates]
