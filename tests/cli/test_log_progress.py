"""Progress in logs: where stderr is no terminal, long work still reports as it goes."""

from liverrt_test_helpers import Clock

from liverrt.cli.common import LogProgress, progress_bar


def test_a_line_per_tenth_and_one_at_the_end():
    lines, clock = [], Clock()
    update = LogProgress("search", 100, write=lines.append, clock=clock)
    for done in range(101):
        clock.t += 0.1
        update(done, info=f"objective {done}")
    assert [line.split(":")[1].split()[0] for line in lines] == [f"{d}/100" for d in range(0, 101, 10)]
    assert lines[1] == "search: 10/100 objective 10 (elapsed 0:01, ETA 0:09)"  # 0.1 s per step since the first
    assert lines[-1] == "search: 100/100 objective 100 (elapsed 0:10)"
    update(100)  # repeated completions add nothing
    assert len(lines) == 11


def test_slow_work_reports_every_interval_and_totals_can_arrive_late():
    lines, clock = [], Clock()
    update = LogProgress("calibrating", write=lines.append, clock=clock, every_s=30)
    update(0)
    for done in range(1, 5):
        clock.t += 20  # 20 s per step: a line every second step
        update(done)
    assert lines == ["calibrating: 0 (elapsed 0:00)", "calibrating: 2 (elapsed 0:40)", "calibrating: 4 (elapsed 1:20)"]
    update(5, total=5)
    assert lines[-1] == "calibrating: 5/5 (elapsed 1:20)"


def test_a_new_total_or_a_count_that_goes_back_starts_a_new_phase():
    lines, clock = [], Clock()
    update = LogProgress("demo", write=lines.append, clock=clock)
    update(3, 3, "phantoms ")  # done at once (the demo's stage names come with a trailing space)
    update(0, 40, "train")
    update(40, 40, "train")
    update(0, 40, "export")  # same total, count back at 0
    assert lines == ["demo: 3/3 phantoms (elapsed 0:00)", "demo: 0/40 train (elapsed 0:00)",
                     "demo: 40/40 train (elapsed 0:00)", "demo: 0/40 export (elapsed 0:00)"]


def test_the_cli_bar_writes_plain_unwrapped_lines_where_stderr_is_not_a_terminal(monkeypatch):
    import io

    from rich.console import Console

    import liverrt.cli.common as common

    log = io.StringIO()  # a log file, whatever FORCE_COLOR or the terminal running pytest say
    monkeypatch.setattr(common, "console", Console(file=log, force_terminal=False, width=80))
    info = "sweep 1/2: " + "a_long_torchscript_tensor_name_" * 4
    with progress_bar("INT8 range search", 3) as update:
        assert isinstance(update, LogProgress)
        update(0, info=info)
        update(3, info="done")
    assert log.getvalue().splitlines() == [f"INT8 range search: 0/3 {info} (elapsed 0:00)",
                                           "INT8 range search: 3/3 done (elapsed 0:00)"]
