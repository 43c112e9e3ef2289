"""docs/python-api.md runs as written (issue 18, item 6): its Python blocks, in order, in one namespace."""

import re
import shutil
from pathlib import Path

import numpy as np
import pytest

import liverrt
from liverrt.data.io import read_nifti, write_nifti
from liverrt.data.phantom import PhantomConfig, synth_case

DOC = Path(__file__).resolve().parents[1] / "docs" / "python-api.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_the_public_surface_is_what_all_says_and_import_stays_light():
    import subprocess
    import sys

    code = "import liverrt, sys; print(sorted(liverrt.__all__)); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[1] == "False"  # `import liverrt` loads neither torch nor onnxruntime
    assert set(liverrt.__all__) >= {"segment", "read_volume", "open_engine", "Segmenter", "metrics", "export"}
    for name in liverrt.__all__:
        assert getattr(liverrt, name) is not None
    assert {"run_export", "ExportOptions", "ExportResult"} <= set(liverrt.export.__all__)
    for name in liverrt.export.__all__:
        assert getattr(liverrt.export, name) is not None
    with pytest.raises(AttributeError):
        liverrt.no_such_thing  # noqa: B018
    documented = {m for m in re.findall(r"`liverrt\.(\w+)", DOC.read_text())}
    assert documented <= set(liverrt.__all__) | {"__all__"}


@pytest.mark.slow
def test_the_python_api_page_runs(tmp_path, monkeypatch, tiny_checkpoint):
    case = synth_case(3, PhantomConfig(size=128, slices=16))
    write_nifti(case.image, case.affine, tmp_path / "case" / "ct.nii.gz")
    write_nifti(case.mask, case.affine, tmp_path / "case" / "liver.nii.gz")
    (tmp_path / "runs" / "unet").mkdir(parents=True)
    shutil.copy(tiny_checkpoint, tmp_path / "runs" / "unet" / "best.pt")
    monkeypatch.chdir(tmp_path)

    blocks = python_blocks(DOC.read_text())
    assert len(blocks) >= 5
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(DOC), "exec"), namespace)  # noqa: S102 - the page is ours

    result, scores = namespace["result"], namespace["scores"]
    assert result.mask.shape == case.image.shape and result.mask.dtype == bool
    saved, _, _ = read_nifti(tmp_path / "liver_pred.nii.gz", labels=True)
    assert np.array_equal(saved.astype(bool), result.mask)
    assert 0.0 <= scores["dice"] <= 1.0 and np.isfinite(scores["hd95_mm"]) or not result.mask.any()
    assert (tmp_path / "exports" / "unet.onnx").is_file()
    assert namespace["mine"].mask.shape == case.image.shape
