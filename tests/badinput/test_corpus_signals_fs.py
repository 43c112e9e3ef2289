"""Signals and the file system, as a user's shell meets them: ``python -m liverrt`` in a subprocess for
SIGINT/SIGTERM during a batch, a full disk (RLIMIT_FSIZE) and two writers on one --out; read-only output
paths in-process (CI runs as root: permission bits would not stop it, /proc and /sys do).
Audit findings are marked ``# audit (N)``.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from .builders import infer_case_complete, nifti_case, nifti_file
from .harness import (
    MARKER,
    ROOT,
    Case,
    Outcome,
    Scenario,
    check_outcome,
    leftovers,
    module_cmd,
    params,
    run_case,
    snapshot,
    snapshot_diff,
    subprocess_env,
    temp_roots,
)

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="signals, rlimits, /proc and /sys: Linux")
resource = pytest.importorskip("resource")  # imported before any fork: the preexec_fn must not import

BATCH = 60  # cases in the session's batch_cases


def _writing(out) -> bool:
    """Whether a hidden (temporary) entry other than liverrt's marker is in ``out`` now."""
    try:
        return any(p.name.startswith(".") and p.name != MARKER for p in out.iterdir())
    except OSError:
        return False


def _popen(args):
    # a test run started in the background of a non-interactive shell (nohup ... &) inherits SIGINT ignored,
    # and Python keeps an ignored SIGINT ignored: give the child the default, as an interactive user has
    return subprocess.Popen(module_cmd(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=subprocess_env(), cwd=ROOT,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _finish(proc, timeout=120):
    try:
        return proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


@pytest.mark.parametrize("sig", [
    pytest.param(signal.SIGINT, id="sigint-during-infer-batch"),
    # audit (8): SIGTERM leaves a hidden partial folder
    pytest.param(signal.SIGTERM, id="sigterm-during-infer-batch"),
])
def test_signal_during_batch(sig, tmp_path, art):
    """Signal ``infer`` once its first case folder is in place: it stops with a non-zero code (SIGTERM:
    143), leaves no hidden partial folder, and every case folder it did finish is whole."""
    src, model, out = art.batch_cases, art.tiny_onnx, tmp_path / "out"
    before = snapshot([src, model])
    proc = _popen(["infer", "--model", model, "--input", src, "--out", out, "--batch-size", 1])
    try:
        deadline = time.monotonic() + 120
        while not (out / "case00").is_dir() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        if proc.poll() is not None:
            stdout, stderr = _finish(proc)
            pytest.fail(f"infer ended (exit {proc.returncode}) before the signal could be sent\n{stderr[-2000:]}")
        assert (out / "case00").is_dir(), "no case folder after 120 s"
        # aim for the middle of a case: signal while a hidden temporary case folder is being written
        aim = time.monotonic() + 1
        while (proc.poll() is None and time.monotonic() < aim and not _writing(out)
               and not (out / "case05").exists()):
            time.sleep(0.001)
        mid_write = _writing(out)
        proc.send_signal(sig)
    finally:
        stdout, stderr = _finish(proc)
    o = Outcome(proc.returncode, stdout, stderr)
    problems = []
    if sig == signal.SIGTERM and o.code != 143:
        problems.append(f"exit code {o.code} after SIGTERM, expected 143 (128 + 15)")
    if o.code == 0:
        problems.append("exit code 0 after the signal: the batch was not interrupted")
    problems += check_outcome(o, code=o.code, temp_roots=temp_roots(tmp_path), error_line=False)
    errors = [line for line in stderr.splitlines() if line.startswith("Error:")]
    if len(errors) > 1:
        problems.append(f"{len(errors)} error lines")
    problems += [f"input changed: {c}" for c in snapshot_diff(before, snapshot([src, model]))[:3]]
    problems += [f"temporary leftover: {p}" for p in leftovers(out)[:3]]
    done = sorted(p.name for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")) if out.is_dir() else []
    if len(done) >= BATCH:
        problems.append("every case was written: the signal came too late to test anything")
    for name in done:
        try:
            infer_case_complete(out, name, shape=(48, 48, 6))()
        except AssertionError as exc:
            problems.append(f"finished case incomplete: {exc}")
    if problems:
        pytest.fail("\n".join(problems) + f"\n--- exit {o.code}; {len(done)} case folders; signalled "
                    f"{'while' if mid_write else 'not while'} a case was being written ---\n{stderr[-2000:]}",
                    pytrace=False)


def test_two_writers_into_one_out(tmp_path, art):
    """Two ``infer`` runs with different cases into one --out at the same time: both succeed, whole."""
    nifti_case(tmp_path / "in1", "caseA")
    nifti_case(tmp_path / "in2", "caseB", seed=1)
    out = tmp_path / "out"
    before = snapshot([tmp_path / "in1", tmp_path / "in2"])
    procs = [_popen(["infer", "--model", art.tiny_onnx, "--input", tmp_path / name, "--out", out])
             for name in ("in1", "in2")]
    results = [(p, *_finish(p, timeout=240)) for p in procs]
    problems = []
    for p, stdout, stderr in results:
        problems += [f"{p.args[-3]}: {m}" for m in check_outcome(Outcome(p.returncode, stdout, stderr), code=0,
                                                                 temp_roots=temp_roots(tmp_path))]
    problems += [f"input changed: {c}" for c in snapshot_diff(before, snapshot([tmp_path / "in1", tmp_path / "in2"]))]
    problems += [f"temporary leftover: {p}" for p in leftovers(out)[:3]]
    for case in ("caseA", "caseB"):
        try:
            infer_case_complete(out, case, shape=(32, 32, 4))()
        except AssertionError as exc:
            problems.append(str(exc))
    if problems:
        pytest.fail("\n".join(problems) + "".join(f"\n--- exit {p.returncode} ---\n{e[-1500:]}"
                                                 for p, _, e in results), pytrace=False)


# ----------------------------------------------------------------------------- full disk, read-only paths


def _file_size_limit(limit: int):
    def preexec():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG

    return preexec


def full_disk(tmp, art):
    """Every file liverrt writes is larger than 64 bytes: each write fails as on a full disk."""
    nifti_case(tmp / "in", "c1")
    nifti_case(tmp / "in", "c2", seed=1)
    out = tmp / "fsout"
    return Scenario(["infer", "--model", art.tiny_onnx, "--input", tmp / "in", "--out", out],
                    inputs=[tmp / "in", art.tiny_onnx], outs=[out], subprocess=True,
                    preexec_fn=_file_size_limit(64))


def read_only_infer(tmp, art):
    ct = nifti_file(tmp / "ct.nii.gz")
    return Scenario(["infer", "--model", art.tiny_onnx, "--input", ct, "--out", "/proc/liverrt-nope/out"],
                    inputs=[ct, art.tiny_onnx])


def read_only_eval_json(tmp, art):
    nifti_case(tmp / "ds", "case1", mask=True)
    # /sys exists but refuses new files (even to root): the temporary file liverrt writes first fails there
    return Scenario(["eval", "--pred", tmp / "ds", "--gt", tmp / "ds", "--json", "/sys/liverrt-nope.json"],
                    inputs=[tmp / "ds"])


def read_only_eval_json_dir(tmp, art):
    nifti_case(tmp / "ds", "case1", mask=True)
    return Scenario(["eval", "--pred", tmp / "ds", "--gt", tmp / "ds", "--json", "/proc/liverrt-nope/m.json"],
                    inputs=[tmp / "ds"])


def read_only_synth(tmp, art):
    return Scenario(["data", "synth", "--out", "/sys/liverrt-nope", "--cases", 1, "--size", 32, "--slices", 2])


def read_only_convert(tmp, art):
    nifti_case(tmp / "ds", "case1", mask=True)
    return Scenario(["data", "convert", tmp / "ds", "--out", "/proc/liverrt-nope/conv", "--to", "png"],
                    inputs=[tmp / "ds"])


def read_only_export(tmp, art):
    return Scenario(["export", art.tiny_checkpoint, "--out", "/proc/liverrt-nope/m.onnx", "--no-verify"],
                    inputs=[art.tiny_checkpoint])


FILE_SYSTEM = [
    Case("full-disk-infer", full_disk, (1, 2), ("fsout",)),
    Case("read-only-out-infer", read_only_infer, 2, ("/proc/liverrt-nope",)),
    # audit (10): an unwritable --json is reported by its own path, not by the temporary name written first
    Case("read-only-json-eval", read_only_eval_json, 2, ("/sys/liverrt-nope.json",),
         forbid=("/sys/.liverrt-nope.json.",), finding=10),
    Case("read-only-json-dir-eval", read_only_eval_json_dir, 2, ("/proc/liverrt-nope",)),
    Case("read-only-out-synth", read_only_synth, 2, ("/sys/liverrt-nope",)),
    Case("read-only-out-convert", read_only_convert, 2, ("/proc/liverrt-nope",)),
    Case("read-only-out-export", read_only_export, 2, ("/proc/liverrt-nope",)),
]


@pytest.mark.parametrize("case", params(*FILE_SYSTEM))
def test_file_system(case, tmp_path, art):
    run_case(case, tmp_path, art)
