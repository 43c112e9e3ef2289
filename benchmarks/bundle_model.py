"""Export a trained U-Net into the package as a bundled model and write its card from measurements.

    python benchmarks/bundle_model.py CHECKPOINT --name liver-unet --file liver_unet.onnx \
        --card-text card_text.json [--verify CASES] [--estimate EVAL_JSON ...]

1. copies CHECKPOINT to models/<file stem>.pt (the checkpoint the bundled ONNX is gated against);
2. exports it to src/liverrt/models/bundled/<file> with `liverrt export` (fp32, the verification gate
   on --verify cases, default phantoms);
3. scores the ONNX on the real volumes with benchmarks/eval_real.py (onnxruntime, largest component
   and holes filled: what `liverrt infer` does with a bundled model);
4. times `liverrt.segment` on ircad01 and a 512x512x200 volume made of its slices (onnxruntime, the
   threads this machine has), and the whole `liverrt infer` command on that volume (read, segment,
   post-process, write);
5. writes <file stem>.card.json: the measured figures plus the text of --card-text (summary, use,
   licence, training data, failure modes, commands).

A model trained on the real volumes themselves cannot be measured on them: --estimate takes the
`eval_real.py --json` files of the same recipe trained without each volume (leave one volume out),
and the card shows those figures as the estimate for unseen scans (the card text's ``estimate``
gives the method and commands), next to the bundled model's own, optimistic, figures.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from liverrt.artifacts import artifact_info
from liverrt.atomic import MARKER
from liverrt.data.io import read_nifti_volume, write_nifti
from liverrt.data.sources import load_cases
from liverrt.export.pipeline import run_export
from liverrt.machine import cpu_model, usable_cores
from liverrt.models.bundled import postprocess_options
from liverrt.runtime import open_engine
from liverrt.runtime.segmenter import Segmenter

sys.path.insert(0, str(Path(__file__).resolve().parent))
import eval_real  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = ROOT / "src" / "liverrt" / "models" / "bundled"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--name", required=True)
    ap.add_argument("--file", required=True, help="ONNX file name in the package's bundled folder")
    ap.add_argument("--card-text", type=Path, required=True)
    ap.add_argument("--verify", type=Path, default=None)
    ap.add_argument("--estimate", type=Path, nargs="+", default=None,
                    help="eval_real.py --json files of leave-one-volume-out runs (the model saw the real volumes)")
    args = ap.parse_args(argv)
    card = json.loads(args.card_text.read_text())
    if args.estimate and "estimate" not in card:
        ap.error("--estimate needs an 'estimate' entry (method, measured_by) in --card-text")

    stem = args.file[: -len(".onnx")]
    kept = ROOT / "models" / f"{stem}.pt"
    kept.parent.mkdir(exist_ok=True)
    shutil.copyfile(args.checkpoint, kept)
    onnx_path = BUNDLED / args.file
    verify = load_cases(args.verify).volumes if args.verify else None
    result = run_export(kept, onnx_path, verify_volumes=verify, overwrite=True)
    for extra in BUNDLED.glob(f"{args.file}.verify.*"):  # the gate's report: kept out of the package
        shutil.move(extra, ROOT / "models" / extra.name)
    (BUNDLED / MARKER).unlink(missing_ok=True)  # the record of what liverrt wrote there: not package data
    print(result.table())

    post = postprocess_options(None, **{"fill_holes": True, "keep_largest": True, **card.get("postprocess", {})})
    scores = eval_real.score(onnx_path, engine="onnxruntime", **post)
    print(eval_real.markdown(scores))
    speed = _speed(onnx_path, post)
    info = artifact_info(onnx_path)
    if args.estimate:
        card["estimate"]["metrics"] = {case: m for path in args.estimate
                                       for case, m in _card_metrics(json.loads(path.read_text())).items()}
    card.update({
        "metrics": _card_metrics(scores),
        "measured_by": " ".join(["python benchmarks/eval_real.py", f"src/liverrt/models/bundled/{args.file}",
                                 "--engine onnxruntime", *_flags(post)]),
        "postprocess": post,
        "speed": speed,
        "checkpoint": f"models/{stem}.pt",
        "model": {**{k: v for k, v in card.get("model", {}).items() if k != "post-processing"},
                  "input": info.spec.describe(), "threshold": f"{info.threshold:g}"},
    })
    text = json.dumps(card, indent=2, ensure_ascii=False) + "\n"
    (BUNDLED / f"{stem}.card.json").write_text(text)
    print(text, end="")
    return 0


def _card_metrics(scores: dict) -> dict[str, dict]:
    """Per volume, the card's figures from an eval_real.score result (or its --json file)."""
    return {case: {**{k: c["volume"][k] for k in ("dice", "mask_iou", "ravd", "assd", "hd95")},
                   **{k: c[k] for k in ("fp_slices", "liver_free_slices", "pred_ml", "true_ml")}}
            for case, c in scores["cases"].items()}


def _flags(post: dict) -> list[str]:
    """The options that give ``post`` (post-processing keywords) to eval_real.py and to `liverrt infer` on a model
    file, whose post-processing is off unless asked for."""
    flags = [f"--{k.replace('_', '-')}" for k in ("keep_largest", "fill_holes") if post[k]]
    flags += ["--smooth-z", f"{post['smooth_z_mm']:g}"] if post["smooth_z_mm"] else []
    flags += ["--threshold", f"{post['threshold']:g}"] if post["threshold"] is not None else []
    return flags


def _speed(onnx_path: Path, post: dict) -> str:
    """ms per slice of the segmentation (what liverrt.segment runs) and the whole `liverrt infer` command on a
    512x512x200 volume, both with the card's post-processing ``post``."""
    data = eval_real.DATA
    vol = read_nifti_volume(data / "ircad01" / "ct.nii.gz", case_id="ircad01")
    with open_engine("onnxruntime", onnx_path) as eng:
        seg = Segmenter(eng, **post)
        seg.segment(replace(vol, image=vol.image[:8]))  # warm-up
        t0 = time.perf_counter()
        seg.segment(vol)
        per_slice = 1000 * (time.perf_counter() - t0) / vol.shape[0]
    reps = int(np.ceil(200 / vol.shape[0]))
    big = np.concatenate([vol.image] * reps)[:200]
    with tempfile.TemporaryDirectory() as tmp:
        write_nifti(big, vol.affine, Path(tmp) / "ct200.nii.gz")
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "liverrt", "-q", "infer", "--model", str(onnx_path), "--input",
                        str(Path(tmp) / "ct200.nii.gz"), "--out", str(Path(tmp) / "seg"), *_flags(post),
                        "--overlays", "0"],
                       check=True)
        whole = time.perf_counter() - t0
    return (f"{per_slice:.0f} ms per 512² slice with liverrt.segment's post-processing (onnxruntime on the CPU, "
            f"{usable_cores()} threads, {cpu_model()}); `liverrt infer` on a 512×512×200 volume, from reading the "
            f"NIfTI to writing the mask, {whole:.0f} s (process start included). Measured {time.strftime('%Y-%m-%d')}.")


if __name__ == "__main__":
    sys.exit(main())
