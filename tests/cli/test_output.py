"""What the CLI prints: informative (compile notice, ETAs, whole help lines), without noise (other
libraries' INFO logs, lines broken mid-sentence). Issue 18, item 4."""

import contextvars
import logging
import os
import re
import subprocess
import sys
import textwrap

import click
import pytest
from click.testing import CliRunner
from liverrt_test_helpers import Clock, make_volume, write_ct_series

from liverrt.cli import COMMANDS, cli
from liverrt.cli.common import Eta, LogProgress, TimeBudget
from liverrt.data.io import write_nifti
from liverrt.data.phantom import PhantomConfig, synth_dataset
from liverrt.kernels.compile_notice import NOTICE


@pytest.fixture
def no_terminal(monkeypatch):
    """Output as in CI or a pipe, whatever the environment running pytest says."""
    for name in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "COLUMNS"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def default_logging():
    """Leave the default levels behind (torch logs its compile metrics at exit if left at INFO)."""
    yield
    run("data", "--help")


def run(*args, **kwargs):
    return CliRunner().invoke(cli, [str(a) for a in args], **kwargs)


# -- 1. first-run compilation ------------------------------------------------------------------------

_COMPILE = textwrap.dedent("""
    import logging
    import numba
    import numpy as np
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")

    from liverrt.kernels.counts import confusion_counts

    @numba.njit
    def not_ours(x):  # compiled in every run (no cache), while liverrt listens: no notice for it
        return x + 1

    not_ours(1)
    print(confusion_counts(np.ones(16, np.uint8), np.zeros(16, np.uint8)))
""")


def test_compile_notice_only_while_numba_cache_lacks_the_kernel(tmp_path):
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "numba")}
    runs = [subprocess.run([sys.executable, "-c", _COMPILE], env=env, capture_output=True, text=True, check=True)
            for _ in range(2)]
    assert [r.stdout.strip() for r in runs] == ["(0, 16, 0)", "(0, 16, 0)"]
    assert runs[0].stderr.count(NOTICE) == 1, runs[0].stderr  # empty cache: said once, before compiling
    assert NOTICE not in runs[1].stderr, runs[1].stderr  # the kernel came from the cache
    assert list((tmp_path / "numba").rglob("*confusion_counts*.nbc"))


# -- 2. other libraries' INFO logs -------------------------------------------------------------------

def test_dicom_seg_inference_shows_highdicom_info_only_with_v(tmp_path, tiny_onnx):
    write_ct_series(tmp_path / "ct", [(0.0, 0.0, z) for z in (0.0, 2.0, 4.0)], ["c.dcm", "a.dcm", "b.dcm"],
                    shape=(24, 20))
    outputs = {}
    for flags in ((), ("-v",)):
        r = run(*flags, "infer", "--model", tiny_onnx, "--input", tmp_path / "ct", "--out", tmp_path / f"out{len(flags)}",
                "--format", "dicom-seg")
        assert r.exit_code == 0, r.output
        assert (tmp_path / f"out{len(flags)}" / "ct" / "seg.dcm").is_file()
        outputs[flags] = r.output
    highdicom_line = 'copy attributes of module "Patient"'  # one of the 9 INFO lines highdicom logs per SEG
    assert highdicom_line not in outputs[()], outputs[()]
    assert "[1/1] ct" in outputs[()]  # liverrt's own lines stay
    assert highdicom_line in outputs[("-v",)], outputs[("-v",)]


@pytest.mark.parametrize(("flags", "ours", "theirs", "pydicom"), [
    (["-q"], logging.WARNING, logging.WARNING, logging.ERROR),
    ([], logging.INFO, logging.WARNING, logging.ERROR),
    (["-v"], logging.INFO, logging.INFO, logging.INFO),
    (["-vv"], logging.DEBUG, logging.DEBUG, logging.DEBUG),
    (["-vvv"], logging.DEBUG, logging.DEBUG, logging.DEBUG),
])
def test_log_levels_for_liverrt_and_other_libraries(flags, ours, theirs, pydicom, default_logging):
    assert run(*flags, "data", "inspect", "--help").exit_code == 0
    for name in ("liverrt", "liverrt.kernels.compile_notice"):
        assert logging.getLogger(name).getEffectiveLevel() == ours, name
    for name in ("highdicom", "highdicom.seg.sop", "torch", "onnxruntime", "polygraphy", "some_library_not_named"):
        assert logging.getLogger(name).getEffectiveLevel() == theirs, name
    # their DEBUG logs are floods (73,000 lines of Numba compiler passes in one eval): only at -vvv
    floods = theirs if flags == ["-vvv"] else max(theirs, logging.INFO)
    for name in ("numba.core.ssa", "PIL.PngImagePlugin", "matplotlib.font_manager"):
        assert logging.getLogger(name).getEffectiveLevel() == floods, name
    # pydicom warns about each odd header value before liverrt's reader names the file and tag once
    assert logging.getLogger("pydicom").getEffectiveLevel() == pydicom


# -- 3. lines stay whole off a terminal --------------------------------------------------------------

def test_long_log_and_console_lines_stay_one_line_off_a_terminal(monkeypatch, no_terminal):
    from liverrt.cli.common import console

    message = " ".join(f"word{i:03d}" for i in range(25)) + "."
    assert len(message) == 200

    @click.command("say")
    def say() -> None:
        logging.getLogger("liverrt.test").info(message)
        console.print(f"[bold]printed[/] {message}")

    monkeypatch.setitem(cli.commands, "say", say)
    r = run("say")
    assert r.exit_code == 0, r.output
    assert r.output.splitlines() == [f"INFO     {message}", f"printed {message}"]


# -- 4. elapsed time and ETA -------------------------------------------------------------------------

def test_eta_from_the_rate_after_the_first_report():
    clock = Clock()
    eta = Eta(clock=clock)
    clock.t = 5.0  # the first step includes start-up: left out of the rate
    assert eta.report(1, 11) == "elapsed 0:05"
    clock.t = 7.0
    assert eta.report(2, 11) == "elapsed 0:07, ETA 0:18"  # 2 s per step, 9 steps left
    clock.t = 3605.0
    assert eta.report(11, 11) == "elapsed 1:00:05"  # done: no ETA


def test_eta_with_a_time_budget_names_the_epoch_it_stops_after():
    clock = Clock()
    eta = Eta(TimeBudget(30.0, chunks=10), clock=clock)  # 10 epochs of 10 steps, stop after the epoch past 30 s
    clock.t = 1.0
    eta.left(1, 100)
    clock.t = 11.0  # 1 s per step: epoch 3 ends at 30 s (not past the budget), epoch 4 at 40 s
    assert eta.left(11, 100) == "ETA 0:29 (--max-minutes ends it after epoch 4/10)"
    clock.t = 35.0  # past the budget: the running epoch is the last
    assert eta.left(35, 100) == "ETA 0:05 (--max-minutes ends it after epoch 4/10)"
    assert Eta(TimeBudget(1e6, chunks=10)).left(5, 100) == ""  # a budget never reached: the plain ETA


def test_log_progress_lines_carry_elapsed_and_eta():
    lines, clock = [], Clock()
    update = LogProgress("training U-Net", 100, write=lines.append, clock=clock)
    for done in range(1, 101):
        clock.t += 0.5
        update(done, info="epoch 1/1")
    assert lines[0] == "training U-Net: 1/100 epoch 1/1 (elapsed 0:00)"
    assert lines[1] == "training U-Net: 11/100 epoch 1/1 (elapsed 0:06, ETA 0:44)"
    assert lines[-1] == "training U-Net: 100/100 epoch 1/1 (elapsed 0:50)"
    assert len(lines) == 11  # a line per tenth: readable in a CI log


def test_infer_prints_each_case_with_an_eta_from_finished_cases(tmp_path, tiny_onnx, no_terminal):
    for i in range(3):
        vol = make_volume(case_id=f"c{i}", seed=i)
        write_nifti(vol.image, vol.affine, tmp_path / "data" / f"c{i}.nii.gz")
    r = run("infer", "--model", tiny_onnx, "--input", tmp_path / "data", "--out", tmp_path / "pred")
    assert r.exit_code == 0, r.output
    lines = [line for line in r.output.splitlines() if line.startswith("[")]
    assert lines[0] == "[1/3] c0", r.output
    assert [re.fullmatch(r"\[(\d)/3\] c\d \(ETA \d+:\d\d\)", line).group(1) for line in lines[1:]] == ["2", "3"]


def test_train_progress_says_when_max_minutes_will_stop_it(tmp_path, no_terminal):
    synth_dataset(tmp_path / "ph", 3, config=PhantomConfig(size=48, slices=4))
    r = run("train", "unet", "--data", tmp_path / "ph", "--out", tmp_path / "run", "--size", 32, "--batch-size", 2,
            "--width-scale", 0.25, "--device", "cpu", "--val-fraction", 0.34, "--epochs", 3,
            "--steps-per-epoch", 4, "--max-minutes", 1e-5)  # a budget gone by the second step
    assert r.exit_code == 0, r.output
    progress = [line for line in r.output.splitlines() if line.startswith("training U-Net: ")]
    assert progress, r.output
    assert "ETA" in progress[1] and "(--max-minutes ends it after epoch 1/3)" in progress[1], r.output
    assert "time budget of 0.0 min reached after epoch 1" in r.output


# -- 5. the help lists whole sentences ---------------------------------------------------------------

@pytest.mark.parametrize("width", [80, 200])
@pytest.mark.parametrize("group", [[], ["data"], ["train"]])
def test_help_shows_each_command_summary_whole(group, width):
    r = run(*group, "--help", terminal_width=width)
    assert r.exit_code == 0, r.output
    commands = r.output.split("Commands:")[1]
    assert not [line for line in commands.splitlines() if line.rstrip().endswith("...")], r.output
    listing = " ".join(commands.split())
    if not group:
        for name, (_, summary) in COMMANDS.items():
            assert f"{name} {summary}" in listing, name


# -- 6. short flags ----------------------------------------------------------------------------------

def _params(path: list[str], args: list[str]) -> dict:
    """The values ``liverrt PATH ARGS`` parses to (the writer and --overwrite it sets stay in a copied context)."""
    command: click.Command = cli
    for name in path:
        command = command.get_command(None, name)
    return contextvars.copy_context().run(lambda: command.make_context(" ".join(path), list(args)).params)


def test_short_flags_parse_like_the_long_ones(tmp_path):
    p = str(tmp_path)
    cases = [
        (["infer"], ["-m", "bundled", "-i", p, "-o", p + "/o"], ["--model", "bundled", "--input", p, "--out", p + "/o"]),
        (["eval"], ["-p", p, "-g", p], ["--pred", p, "--gt", p]),
        (["export"], [p, "-o", p + "/m.onnx"], [p, "--out", p + "/m.onnx"]),
        (["train", "unet"], ["--data", p, "-o", p + "/r"], ["--data", p, "--out", p + "/r"]),
        (["data", "synth"], ["-o", p + "/s"], ["--out", p + "/s"]),
        (["data", "convert"], [p, "-o", p + "/c", "--to", "png"], [p, "--out", p + "/c", "--to", "png"]),
        (["data", "split"], [p, "-o", p + "/f.json"], [p, "--out", p + "/f.json"]),
        (["demo"], ["-o", p + "/d"], ["--out", p + "/d"]),
        (["import-detectron2"], [p, "-o", p + "/x.pt"], [p, "--out", p + "/x.pt"]),
    ]
    for path, short, long in cases:
        assert _params(path, short) == _params(path, long), path


def _commands(group: click.Group, path: tuple[str, ...] = ()):
    for name in group.list_commands(None):
        command = group.get_command(None, name)
        yield (*path, name), command
        if isinstance(command, click.Group):
            yield from _commands(command, (*path, name))


def test_a_short_flag_means_one_thing_in_every_command():
    meaning: dict[str, set[str]] = {}
    for path, command in [((), cli), *_commands(cli)]:
        for param in command.params:
            if not isinstance(param, click.Option):
                continue
            long = max(param.opts, key=len)
            for opt in param.opts + param.secondary_opts:
                if len(opt) == 2:
                    meaning.setdefault(opt, set()).add(long)
                    assert opt not in ("-h", "-v", "-q") or not path, (path, opt)  # help and the global flags
    assert {opt: longs for opt, longs in meaning.items() if len(longs) > 1} == {}
    assert meaning["-o"] == {"--out"} and meaning["-m"] == {"--model"} and meaning["-i"] == {"--input"}
