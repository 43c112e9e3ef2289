"""The one harness every bad-input case goes through.

A case is a :class:`Case` (id, builder, expected exit code, what the error line must name, audit finding).
Its builder makes the damaged input under the test's ``tmp_path`` and returns a :class:`Scenario` (the
command line, the input paths, the output paths, user content that must survive, checks of the good
outputs). :func:`run_case` then

1. hashes (sha256) every file under the inputs and the kept user content;
2. runs the command in-process with click's ``CliRunner`` (or, for signals, resource limits and commands
   that must refuse before minutes of work, as ``python -m liverrt`` in a subprocess with a timeout);
3. checks the README's promise:

   * the exit code is the expected one (2 bad input, 1 runtime failure, 0 success);
   * no ``Traceback`` anywhere; an in-process run ends in no exception but ``SystemExit``;
   * a failure prints exactly one ``Error: ...`` line, the last line of stderr (a message with a line
     break fails), naming what the case says it must name (compared case-sensitively, after the pytest
     temporary folder is replaced by ``<tmp>``, so a case id in the path cannot satisfy it);
   * a success prints no ``Error:`` line; its ``says`` (warnings) are looked for in the whole output
     with white space removed (rich wraps log lines at 80 columns);
   * every input file is byte-identical and no file was added to or removed from an input folder;
   * kept user content is byte-identical;
   * no hidden or temporary entry (``.name``, ``*.tmp``, ``tmpXXXXXXXX``) is left in an output folder,
     nor a hidden sibling ``.<out>.*`` next to an output, except liverrt's own ``.liverrt-output.json``;
   * after a failure, an output that did not exist before is absent (an empty folder is tolerated),
     unless good cases of the batch were to be written; listed ``absent`` paths do not exist;
   * the good outputs of a batch pass their completeness checks.

All problems of a case are collected and reported together, the first one first.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

MARKER = ".liverrt-output.json"
#: names a temporary file or folder gets: hidden (.x), *.tmp / *.part(ial), mkdtemp's tmpXXXXXXXX, editor ~
TEMP_NAME = re.compile(r"^\.|\.tmp$|\.part(ial)?$|^tmp[0-9a-z_]{6,}$|~$", re.IGNORECASE)
ROOT = Path(__file__).resolve().parents[2]


# ----------------------------------------------------------------------------- what a case is


@dataclass
class Scenario:
    """What a builder made and how to run it."""

    args: Sequence[object]
    inputs: Sequence[Path] = ()  # files/folders that must stay byte-identical (no file added or removed)
    outs: Sequence[Path] = ()  # output files/folders: no temporary leftovers; absent after a failure
    keep: Sequence[Path] = ()  # user content inside an output that must stay byte-identical
    good: Sequence[Callable[[], None]] = ()  # completeness checks of the outputs that must exist
    absent: Sequence[Path] = ()  # paths that must not exist afterwards (the failed case's output)
    says: Sequence[str] = ()  # substrings known only once built (added to the case's)
    after: Callable[[Outcome], None] | None = None  # extra checks on the outcome
    subprocess: bool = False  # run as `python -m liverrt` (signals, resource limits)
    preexec_fn: Callable[[], None] | None = None
    timeout: float = 120.0  # subprocess: killed after this many seconds (and the case fails)
    env: dict[str, str | None] = field(default_factory=dict)


@dataclass(frozen=True)
class Case:
    """One entry of the corpus: its id, how to build it, and what must happen."""

    id: str
    build: Callable[[Path, object], Scenario]
    code: int | tuple[int, ...]
    says: tuple[str, ...] = ()  # the error line must contain each (exit != 0); the output (exit 0)
    forbid: tuple[str, ...] = ()  # the error line (or output) must not contain any
    finding: int | None = None  # audit finding (1)..(11) this case covers
    marks: tuple = ()

    def param(self):
        return pytest.param(self, id=self.id, marks=self.marks)


def params(*cases: Case) -> list:
    ids = [c.id for c in cases]
    dup = {i for i in ids if ids.count(i) > 1}
    assert not dup, f"duplicate case ids {dup}"
    return [c.param() for c in cases]


@dataclass
class Outcome:
    code: int
    stdout: str
    stderr: str
    exception: BaseException | None = None

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


# ----------------------------------------------------------------------------- running


def clean_env(extra: dict[str, str | None] | None = None) -> dict[str, str | None]:
    """The environment of a run: no LIVERRT_DEBUG (it would allow a traceback), a wide terminal."""
    return {"LIVERRT_DEBUG": None, "COLUMNS": "400", **(extra or {})}


def invoke(args: Sequence[object], env: dict[str, str | None] | None = None) -> Outcome:
    """Run the CLI in-process."""
    from click.testing import CliRunner

    from liverrt.cli import cli

    result = CliRunner().invoke(cli, [str(a) for a in args], env=clean_env(env))
    return Outcome(result.exit_code, result.stdout, result.stderr, result.exception)


def subprocess_env(extra: dict[str, str | None] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    for k, v in clean_env(extra).items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    env["PYTHONUNBUFFERED"] = "1"
    return env


def module_cmd(args: Sequence[object]) -> list[str]:
    return [sys.executable, "-m", "liverrt", *(str(a) for a in args)]


def run_module(args: Sequence[object], *, timeout: float = 120.0, preexec_fn=None,
               env: dict[str, str | None] | None = None) -> Outcome:
    """Run ``python -m liverrt ARGS`` (a fresh process: signals, resource limits)."""
    try:
        proc = subprocess.run(module_cmd(args), capture_output=True, text=True, timeout=timeout,
                              preexec_fn=preexec_fn, env=subprocess_env(env), cwd=ROOT)
    except subprocess.TimeoutExpired as exc:  # killed: reported as a problem of the case, with what it printed
        def text(b):
            return b.decode(errors="replace") if isinstance(b, bytes) else (b or "")

        return Outcome(-9, text(exc.stdout), text(exc.stderr) + f"\n[harness] still running after {timeout:g} s: "
                       "killed\n", TimeoutError(f"still running after {timeout:g} s"))
    return Outcome(proc.returncode, proc.stdout, proc.stderr)


# ----------------------------------------------------------------------------- snapshots


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _entry(p: Path) -> str:
    if p.is_symlink():
        return "link:" + os.readlink(p)
    if p.is_dir():
        return "<dir>"
    if p.is_file():
        return sha256(p)
    return "<absent>" if not p.exists() else "<other>"


def snapshot(paths: Sequence[Path]) -> dict[str, str]:
    """``{path: sha256 | <dir> | link:target | <absent>}`` of every entry under ``paths``."""
    out: dict[str, str] = {}
    for root in paths:
        root = Path(root)
        out[str(root)] = _entry(root)
        if root.is_dir() and not root.is_symlink():
            for dirpath, dirnames, filenames in os.walk(root):
                for name in dirnames + filenames:
                    p = Path(dirpath) / name
                    out[str(p)] = _entry(p)
    return out


def snapshot_diff(before: dict[str, str], after: dict[str, str]) -> list[str]:
    changes = []
    for p in sorted(set(before) | set(after)):
        a, b = before.get(p, "<absent>"), after.get(p, "<absent>")
        if a != b:
            what = "added" if a == "<absent>" else "removed" if b == "<absent>" else "modified"
            changes.append(f"{what}: {p}")
    return changes


def leftovers(out: Path) -> list[str]:
    """Hidden/temporary entries under ``out`` (except liverrt's marker) and hidden ``.<out>.*`` siblings."""
    out = Path(out)
    found = []
    if out.parent.is_dir():
        found += [str(p) for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]
    if out.is_dir():
        for dirpath, dirnames, filenames in os.walk(out):
            for name in dirnames + filenames:
                if name != MARKER and TEMP_NAME.search(name):
                    found.append(str(Path(dirpath) / name))
    return found


# ----------------------------------------------------------------------------- checking


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.lstrip().startswith("Error:")]


def _squash(text: str) -> str:
    return re.sub(r"\s+", "", text)


def _anonymise(text: str, temp_roots: Sequence[Path]) -> str:
    for root in sorted({str(r) for r in temp_roots}, key=len, reverse=True):
        text = text.replace(root, "<tmp>")
    return text


def check_outcome(o: Outcome, *, code, says=(), forbid=(), temp_roots=(), error_line: bool = True) -> list[str]:
    """Problems with how the command ended (exit code, traceback, the one error line)."""
    problems = []
    codes = code if isinstance(code, tuple) else (code,)
    if o.code not in codes:
        problems.append(f"exit code {o.code}, expected {' or '.join(map(str, codes))}")
    if "Traceback" in o.output:
        problems.append("a traceback in the output")
    if o.exception is not None and not isinstance(o.exception, SystemExit):
        problems.append(f"uncaught {type(o.exception).__name__}: {str(o.exception)[:200]!r}")
    errors = _error_lines(o.stderr)
    if 0 in codes and o.code == 0:
        if errors:
            problems.append(f"exit 0 but an error line: {errors[0][:200]!r}")
        text = _anonymise(_squash(o.output), [_squash(str(r)) for r in temp_roots])
        missing = [s for s in says if _squash(s) not in text]
        if missing:
            problems.append(f"the output does not mention {missing}")
        present = [s for s in forbid if _squash(s) in text]
        if present:
            problems.append(f"the output mentions {present}")
        return problems
    if o.code == 0:
        return problems
    if not error_line:
        return problems
    if len(errors) != 1:
        problems.append(f"{len(errors)} 'Error:' lines on stderr, expected exactly one")
    if errors:
        tail = o.stderr.rstrip().splitlines()
        idx = max(i for i, line in enumerate(tail) if line.lstrip().startswith("Error:"))
        rest = [line for line in tail[idx + 1:] if line.strip()]
        if rest:
            problems.append(f"the error message is not one line: {len(rest)} more line(s) follow it "
                            f"({rest[0][:120]!r})")
        line = _anonymise(errors[-1].strip()[len("Error:"):].strip(), temp_roots)
        missing = [s for s in says if s not in line]
        if missing:
            problems.append(f"the error line does not name {missing}: {line[:300]!r}")
        present = [s for s in forbid if s in line]
        if present:
            problems.append(f"the error line says {present}: {line[:300]!r}")
    return problems


def check_files(sc: Scenario, o: Outcome, *, before_inputs, before_keep, existed: dict[str, bool]) -> list[str]:
    """Problems with the file system after the run."""
    problems = []
    changed = snapshot_diff(before_inputs, snapshot(sc.inputs))
    if changed:
        problems.append(f"input changed ({len(changed)}): {changed[:3]}")
    changed = snapshot_diff(before_keep, snapshot(sc.keep))
    if changed:
        problems.append(f"user content not kept ({len(changed)}): {changed[:3]}")
    for out in sc.outs:
        left = leftovers(out)
        if left:
            problems.append(f"temporary leftovers: {left[:3]}")
        if o.code != 0 and not sc.good and not existed[str(out)] and Path(out).exists():
            if Path(out).is_file() or any(Path(out).iterdir()):
                problems.append(f"partial output left after the failure: {out}")
    for p in sc.absent:
        if Path(p).exists():
            problems.append(f"{p} exists; expected nothing written for the failed case")
    for good in sc.good:
        try:
            good()
        except AssertionError as exc:
            problems.append(f"good output incomplete: {str(exc).splitlines()[0][:300] if str(exc) else exc!r}")
        except Exception as exc:  # noqa: BLE001 - any failure to read a good output is a problem
            problems.append(f"good output unreadable: {type(exc).__name__}: {str(exc)[:200]}")
    return problems


#: pytest's base temp folder (set by the corpus' conftest): session artifacts and every case live under it
BASETEMP: Path | None = None


def temp_roots(tmp_path: Path) -> list[Path]:
    """Folders whose names are replaced by ``<tmp>`` before an error line is searched."""
    roots = [Path(tmp_path), Path(tmp_path).resolve()]
    if BASETEMP is not None:
        roots += [BASETEMP, BASETEMP.resolve()]
    return roots


def execute(sc: Scenario, *, code, says=(), forbid=(), tmp_path: Path, error_line: bool = True,
            run: Callable[[], Outcome] | None = None) -> Outcome:
    """Run a built scenario and assert everything; returns the outcome for further checks."""
    before_inputs = snapshot(sc.inputs)
    before_keep = snapshot(sc.keep)
    existed = {str(p): Path(p).exists() for p in sc.outs}
    if run is not None:
        o = run()
    elif sc.subprocess:
        o = run_module(sc.args, timeout=sc.timeout, preexec_fn=sc.preexec_fn, env=sc.env)
    else:
        o = invoke(sc.args, env=sc.env)
    problems = check_outcome(o, code=code, says=(*says, *sc.says), forbid=forbid,
                             temp_roots=temp_roots(tmp_path), error_line=error_line)
    problems += check_files(sc, o, before_inputs=before_inputs, before_keep=before_keep, existed=existed)
    if sc.after is not None and not problems:
        try:
            sc.after(o)
        except AssertionError as exc:
            problems.append(str(exc).splitlines()[0] if str(exc) else "an extra check failed")
    if problems:
        pytest.fail("\n".join(problems) + f"\n--- exit {o.code}; stdout ---\n{o.stdout[-2000:]}"
                    f"\n--- stderr ---\n{o.stderr[-3000:]}", pytrace=False)
    return o


def run_case(case: Case, tmp_path: Path, art) -> Outcome:
    """Build ``case`` under ``tmp_path`` and check it."""
    sc = case.build(tmp_path, art)
    return execute(sc, code=case.code, says=case.says, forbid=case.forbid, tmp_path=tmp_path)
