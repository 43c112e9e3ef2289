"""liverrt.atomic: outputs appear whole or not at all, and only what liverrt wrote is ever replaced."""

import errno
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from liverrt.atomic import (
    MARKER,
    atomic_dir,
    atomic_path,
    check_replaceable,
    os_error,
    overwrite_allowed,
    refuse_output_in_input,
    refuse_overwriting_inputs,
    remove_unfinished,
    write_text_atomic,
    writing_as,
)
from liverrt.errors import InputError, LiverrtError


def _case(folder, text="x"):
    with atomic_dir(folder) as tmp:
        (tmp / "mask.txt").write_text(text)
        (tmp / "sub").mkdir()
        (tmp / "sub" / "a.png").write_bytes(b"png")


def test_a_file_liverrt_wrote_is_replaced_and_listed(tmp_path):
    write_text_atomic("one", tmp_path / "r.json")
    write_text_atomic("two", tmp_path / "r.json")
    assert (tmp_path / "r.json").read_text() == "two"
    listed = json.loads((tmp_path / MARKER).read_text())["files"]
    assert set(listed) == {"r.json"} and listed["r.json"]["size"] == 3


def test_a_users_file_is_never_replaced_without_overwrite(tmp_path):
    (tmp_path / "r.json").write_text("mine")
    with pytest.raises(InputError, match=r"r\.json: liverrt did not write it; pass --overwrite") as err:
        write_text_atomic("theirs", tmp_path / "r.json")
    assert "\n" not in str(err.value)
    assert (tmp_path / "r.json").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]  # no temp file, no marker
    with overwrite_allowed():
        write_text_atomic("theirs", tmp_path / "r.json")
    assert (tmp_path / "r.json").read_text() == "theirs"


def test_a_file_edited_after_liverrt_wrote_it_is_not_replaced(tmp_path):
    write_text_atomic("one", tmp_path / "r.json")
    (tmp_path / "r.json").write_text("edited by hand")
    with pytest.raises(InputError, match="changed after liverrt wrote it"):
        write_text_atomic("two", tmp_path / "r.json")
    assert (tmp_path / "r.json").read_text() == "edited by hand"


def test_another_command_does_not_replace_a_dataset_case(tmp_path):
    """The data-loss defect: `infer --out DS` over a case folder that `data synth` wrote."""
    with writing_as("liverrt data synth"):
        _case(tmp_path / "phantom_001", "ground truth")
    with writing_as("liverrt infer"), pytest.raises(InputError, match="written by `liverrt data synth`, not by"):
        _case(tmp_path / "phantom_001", "prediction")
    assert (tmp_path / "phantom_001" / "mask.txt").read_text() == "ground truth"
    with writing_as("liverrt data synth"):  # the same command replaces its own output
        _case(tmp_path / "phantom_001", "again")
    assert (tmp_path / "phantom_001" / "mask.txt").read_text() == "again"


def test_a_folder_is_replaced_only_if_every_file_in_it_is_liverrts(tmp_path):
    _case(tmp_path / "c1")
    assert json.loads((tmp_path / "c1" / MARKER).read_text())["files"].keys() == {"mask.txt", "sub/a.png"}
    assert not (tmp_path / "c1" / "sub" / MARKER).exists()  # one list per written folder
    _case(tmp_path / "c1", "second")
    (tmp_path / "c1" / "sub" / "notes.txt").write_text("a user's note")
    with pytest.raises(InputError, match=r"it holds sub/notes\.txt, which liverrt did not write"):
        _case(tmp_path / "c1", "third")
    assert (tmp_path / "c1" / "sub" / "notes.txt").read_text() == "a user's note"
    assert (tmp_path / "c1" / "mask.txt").read_text() == "second"
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "image.nii.gz").write_bytes(b"ct")
    with pytest.raises(InputError, match="image.nii.gz, which liverrt did not write"):
        _case(tmp_path / "plain")
    (tmp_path / "empty").mkdir()
    _case(tmp_path / "empty")  # an empty folder loses nothing
    assert (tmp_path / "empty" / "mask.txt").read_text() == "x"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp or trash folder left


def test_a_symlink_is_not_followed_or_replaced(tmp_path):
    (tmp_path / "target.json").write_text("keep")
    (tmp_path / "r.json").symlink_to(tmp_path / "target.json")
    with pytest.raises(InputError, match="symbolic link"):
        write_text_atomic("x", tmp_path / "r.json")
    assert (tmp_path / "target.json").read_text() == "keep"


def test_a_failed_write_leaves_the_previous_output_and_no_temp(tmp_path):
    _case(tmp_path / "c1", "first")
    with pytest.raises(RuntimeError):
        with atomic_dir(tmp_path / "c1") as tmp:
            (tmp / "mask.txt").write_text("half")
            raise RuntimeError("boom")
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(tmp_path / "r.json") as tmp:
            tmp.write_text("half")
            raise KeyboardInterrupt
    assert (tmp_path / "c1" / "mask.txt").read_text() == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c1"]


def test_writes_a_signal_cut_off_before_their_block_are_removed_on_the_way_out(tmp_path):
    """A signal can land in contextlib's __enter__ after the generator yielded: the ``with`` block never
    starts, so neither the writer's cleanup nor its rename runs (a CI run left ``.case01.xxxx`` so). The
    CLI's exit calls remove_unfinished, which removes such temporaries and nothing else."""
    _case(tmp_path / "done", "kept")
    cut_off = [atomic_dir(tmp_path / "c1"), atomic_path(tmp_path / "r.json")]
    temps = [cm.__enter__() for cm in cut_off]  # entered, never exited
    (temps[0] / "mask.txt").write_text("half")
    assert all(t.exists() for t in temps)
    remove_unfinished()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["done"]
    assert (tmp_path / "done" / "mask.txt").read_text() == "kept"
    for cm in cut_off:  # the suspended generators, closed later (at exit), do not fail on the missing temporaries
        cm.gen.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["done"]



@pytest.mark.parametrize("where", ["folder", "file", "marker"])
def test_a_signal_right_after_the_temporary_is_created_leaves_nothing(tmp_path, monkeypatch, where):
    """The signal lands the moment the temporary entry exists, before the writer gets its name back (a CI
    run's SIGTERM left ``.case01.xxxx`` so, when the name was listed only after mkdtemp returned): the
    entry is already listed, and the CLI's remove_unfinished takes it."""
    import liverrt.atomic as atomic

    _case(tmp_path / "done", "kept")
    real_mkdir, real_open = os.mkdir, os.open

    def mkdir_then_signal(path, mode=0o777, **kw):
        real_mkdir(path, mode, **kw)
        raise KeyboardInterrupt

    def open_then_signal(path, flags, mode=0o777, **kw):
        fd = real_open(path, flags, mode, **kw)
        if where == "file" or Path(path).name.startswith(MARKER):
            raise KeyboardInterrupt
        return fd

    if where == "folder":
        monkeypatch.setattr(atomic.os, "mkdir", mkdir_then_signal)
    else:
        monkeypatch.setattr(atomic.os, "open", open_then_signal)
    with pytest.raises(KeyboardInterrupt):
        if where == "folder":
            _case(tmp_path / "c1")
        else:
            write_text_atomic("x", tmp_path / "r.json")
    monkeypatch.undo()
    remove_unfinished()
    names = sorted(p.name for p in tmp_path.iterdir())
    # the list is written before the rename: a signal in it leaves the target as it was (here: absent)
    assert names == ["done"], names
    assert (tmp_path / "done" / "mask.txt").read_text() == "kept"

def test_inputs_are_refused_even_with_overwrite(tmp_path):
    (tmp_path / "case").mkdir()
    (tmp_path / "case" / "image.nii.gz").write_bytes(b"ct")
    with overwrite_allowed(), pytest.raises(InputError, match="would replace the input"):
        with atomic_dir(tmp_path / "case", protect=(tmp_path / "case" / "image.nii.gz",)):
            pass
    with pytest.raises(InputError, match="would replace the input"):
        refuse_overwriting_inputs(tmp_path / "case" / "image.nii.gz", [tmp_path / "case" / "image.nii.gz"])
    for name in ("image.nii.gz", "scores.json"):  # a file inside an input folder: refused, existing or not
        with pytest.raises(InputError, match="lies inside the input folder"):
            refuse_overwriting_inputs(tmp_path / "case" / name, [tmp_path / "case"])
    with pytest.raises(InputError, match="is the input folder"):
        refuse_output_in_input(tmp_path / "case", [tmp_path / "case"])
    with pytest.raises(InputError, match="lies inside the input folder"):
        refuse_output_in_input(tmp_path / "case" / "pred", [tmp_path / "case"])
    refuse_output_in_input(tmp_path / "pred", [tmp_path / "case", tmp_path / "case" / "image.nii.gz"])
    assert (tmp_path / "case" / "image.nii.gz").read_bytes() == b"ct"


def test_nothing_there_is_nothing_to_refuse(tmp_path):
    check_replaceable(tmp_path / "absent")


@pytest.mark.parametrize(("code", "exit_code", "words"), [
    (errno.EACCES, 2, "expected a writable output location"),
    (errno.EROFS, 2, "expected a writable output location"),
    (errno.ENOSPC, 1, "nothing was written there"),
    (errno.EFBIG, 1, "nothing was written there"),
])
def test_os_errors_name_the_target_not_the_temp_file(tmp_path, code, exit_code, words):
    err = os_error(OSError(code, os.strerror(code), str(tmp_path / ".r.json.abc.tmp")), tmp_path / "r.json")
    assert isinstance(err, LiverrtError) and err.exit_code == exit_code
    assert str(err).startswith(f"Cannot write {tmp_path / 'r.json'}: ") and words in str(err)
    assert ".tmp" not in str(err)


def test_the_list_is_written_before_the_rename_and_a_failed_list_replaces_nothing(tmp_path, monkeypatch):
    import liverrt.atomic as atomic

    write_text_atomic("one", tmp_path / "r.json")

    def no_space(folder, files):
        raise OSError(errno.ENOSPC, "No space left on device", str(folder / ".liverrt-output.json.x.tmp"))

    monkeypatch.setattr(atomic, "_write_marker", no_space)
    with pytest.raises(LiverrtError, match=r"Cannot write .*r\.json: No space left on device; nothing was written") as err:
        write_text_atomic("two", tmp_path / "r.json")
    assert ".tmp" not in str(err.value) and err.value.exit_code == 1
    monkeypatch.undo()
    assert (tmp_path / "r.json").read_text() == "one"
    write_text_atomic("three", tmp_path / "r.json")  # still liverrt's: its entry was never changed
    assert (tmp_path / "r.json").read_text() == "three"


def test_a_full_disk_is_one_error_naming_the_target_and_leaves_nothing(tmp_path):
    script = textwrap.dedent(f"""
        import resource, signal, sys
        from liverrt.atomic import write_bytes_atomic
        from liverrt.errors import LiverrtError
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000))
        try:
            write_bytes_atomic(b"x" * 5000, {str(tmp_path / "big.bin")!r})
        except LiverrtError as exc:
            print(exc.exit_code, exc)
            sys.exit(0)
        sys.exit(3)
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    code, message = r.stdout.strip().split(" ", 1)
    assert code == "1" and message.startswith(f"Cannot write {tmp_path / 'big.bin'}: File too large")
    assert list(tmp_path.iterdir()) == []


def test_concurrent_writers_keep_every_entry_of_the_list(tmp_path):
    script = textwrap.dedent("""
        import sys
        from pathlib import Path
        from liverrt.atomic import write_text_atomic
        out = Path(sys.argv[1])
        for i in range(40):
            write_text_atomic(str(i), out / f"{sys.argv[2]}_{i}.txt")
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path), name]) for name in ("a", "b")]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    listed = json.loads((tmp_path / MARKER).read_text())["files"]
    assert len(listed) == 80 and all((tmp_path / name).is_file() for name in listed)
