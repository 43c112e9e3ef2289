"""Atomic writes that never lose a user's data.

Every file liverrt writes goes through :func:`atomic_path` (a temporary file
next to the target, renamed onto it when complete) and every folder through
:func:`atomic_dir` (a temporary sibling folder, swapped in with one rename), so
an interrupted run leaves either the old output or the new one, never half of
one.

Replacing something that already exists is allowed only when liverrt wrote it:

* each folder liverrt writes into holds a hidden ``.liverrt-output.json`` that
  lists the files liverrt put there (relative path, size, modification time,
  and the command that wrote it, e.g. ``liverrt infer``);
* a file may be replaced only by the command that wrote it, and only if the
  list names it with the same size and time (the user has not replaced or
  edited it since): ``liverrt infer`` never replaces a case folder that
  ``liverrt data synth`` wrote, which is a dataset;
* a folder may be replaced only if every file under it is listed so (by its
  own folder's list or one above it); an empty folder loses nothing.

Anything else is refused with an :class:`~liverrt.errors.InputError` naming the
path and ``--overwrite`` (exit code 2), unless the caller runs inside
:func:`overwrite_allowed` (what the CLI's ``--overwrite`` does). Inputs are
never replaced, with or without it (``protect``).

OS errors while writing are reported with the target's name, not the
temporary one's: exit code 2 when the location cannot be written (permissions,
a read-only file system), 1 when the write itself fails (a full disk).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import json
import os
import secrets
import shutil
from collections.abc import Iterable, Iterator
from contextvars import ContextVar
from pathlib import Path

from liverrt import __version__
from liverrt.errors import InputError, LiverrtError

#: the hidden list of what liverrt wrote in a folder
MARKER = ".liverrt-output.json"
_MARKER_VERSION = 1

_overwrite: ContextVar[bool] = ContextVar("liverrt_overwrite", default=False)
#: who is writing: the command (``liverrt infer``), set by the CLI and by the library function behind it
_writer: ContextVar[str] = ContextVar("liverrt_writer", default="liverrt (Python)")
#: set inside a :func:`writes_outputs` function: the functions it calls write under its name
_writer_fixed: ContextVar[bool] = ContextVar("liverrt_writer_fixed", default=False)

#: temporary files and folders of atomic writes not yet renamed or removed. What is written inside such a
#: folder is listed once, by its seal (:func:`_in_pending`). The CLI removes what is left on its way out
#: (:func:`remove_unfinished`): a signal can land where the writer's own cleanup never runs, e.g. in
#: contextlib's ``__enter__`` after the generator yielded, so the ``with`` block never starts and never exits.
_unfinished: set[Path] = set()


def temp_name(parent: Path, prefix: str, suffix: str = "") -> Path:
    """A fresh hidden name for a temporary entry in ``parent`` (not created)."""
    return Path(parent) / f"{prefix}{secrets.token_hex(6)}{suffix}"


def _create_temp(parent: Path, prefix: str, suffix: str = "", *, folder: bool) -> Path:
    """Create a private temporary file or folder in ``parent`` and list it in ``_unfinished``.

    The name is listed *before* the entry exists (and stays listed if a signal lands after it was
    created), so there is no moment in which a SIGINT or SIGTERM leaves an entry that
    :func:`remove_unfinished` does not know about; ``tempfile.mkstemp``/``mkdtemp`` followed by
    ``_unfinished.add`` had one.
    """
    for _ in range(100):
        tmp = temp_name(parent, prefix, suffix)
        _unfinished.add(tmp)
        try:
            if folder:
                os.mkdir(tmp, 0o700)
            else:
                os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
            return tmp
        except FileExistsError:
            _unfinished.discard(tmp)
        except OSError:
            _unfinished.discard(tmp)
            raise
    raise FileExistsError(errno.EEXIST, "no free temporary name", str(parent / prefix))


#: errnos that mean "this location cannot be written" (bad input) rather than "the write failed"
_UNWRITABLE = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EISDIR, errno.ENAMETOOLONG,
               errno.ENOENT, errno.EEXIST, errno.ENOTEMPTY}


@contextlib.contextmanager
def overwrite_allowed(allow: bool = True) -> Iterator[None]:
    """Within this block, outputs may replace files and folders liverrt did not write (never inputs)."""
    token = _overwrite.set(allow)
    try:
        yield
    finally:
        _overwrite.reset(token)


@contextlib.contextmanager
def writing_as(name: str) -> Iterator[None]:
    """Within this block, outputs are recorded as written by ``name`` (a command, e.g. ``liverrt infer``)."""
    token = _writer.set(name)
    try:
        yield
    finally:
        _writer.reset(token)


def start_command(command: str, *, overwrite: bool) -> None:
    """Set the writer and the overwrite policy for the rest of a CLI command (its caller resets both after it)."""
    _writer.set(command)
    _overwrite.set(overwrite)


def writes_outputs(command: str):
    """Decorate a library function that writes outputs like the CLI command ``command`` does.

    Its outputs are recorded as written by ``command`` (so ``run_inference`` never replaces a case
    folder ``synth_dataset`` wrote, from Python as from the CLI), unless an enclosing decorated
    function already named the writer (the demo's phantoms stay the demo's). A true ``overwrite``
    keyword argument lets it replace what liverrt did not write (never an input).
    """
    def decorate(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            with contextlib.ExitStack() as stack:
                if not _writer_fixed.get():
                    stack.enter_context(writing_as(command))
                    token = _writer_fixed.set(True)
                    stack.callback(_writer_fixed.reset, token)
                if kwargs.get("overwrite"):
                    stack.enter_context(overwrite_allowed(True))
                return fn(*args, **kwargs)

        return wrapper

    return decorate


def overwriting() -> bool:
    """Whether the current block allows replacing what liverrt did not write."""
    return _overwrite.get()


def os_error(exc: OSError, target: Path, doing: str = "write") -> LiverrtError:
    """A one-line :class:`LiverrtError` for ``exc`` raised while writing ``target``.

    Unwritable locations are bad input (exit 2); a failed write (full disk, I/O error) is a runtime failure.
    """
    reason = exc.strerror or str(exc) or type(exc).__name__
    if doing != "write" and not doing.startswith("create"):  # not known to be an output (the CLI's last resort)
        expected = "expected readable inputs and writable outputs"
        return (InputError if exc.errno in _UNWRITABLE else LiverrtError)(f"Cannot {doing} {target}: {reason}; {expected}.")
    if exc.errno in _UNWRITABLE:
        return InputError(f"Cannot {doing} {target}: {reason}; expected a writable output location.")
    return LiverrtError(f"Cannot {doing} {target}: {reason}; nothing was written there.")


# ----------------------------------------------------------------------------- what liverrt wrote


def _read_marker(folder: Path) -> dict[str, dict]:
    """``{relative path: {"size", "mtime_ns"}}`` from ``folder``'s marker; empty if none or unreadable."""
    try:
        data = json.loads((folder / MARKER).read_text(encoding="utf-8"))
        files = data.get("files", {}) if data.get("written_by") == "liverrt" else {}
        return {str(k): v for k, v in files.items() if isinstance(v, dict)}
    except (OSError, ValueError, AttributeError):
        return {}


def _stamp(path: Path) -> dict:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "by": _writer.get()}


def _mismatch(entry: dict, path: Path, name: str) -> str | None:
    """Why the listed ``entry`` does not allow replacing ``path`` now (None if it does)."""
    now = _stamp(path)
    if (entry.get("size"), entry.get("mtime_ns")) != (now["size"], now["mtime_ns"]):
        return f"{name} changed after liverrt wrote it"
    if entry.get("by") != now["by"]:
        return f"{name} was written by `{entry.get('by')}`, not by this command (`{now['by']}`)"
    return None


def _write_marker(folder: Path, files: dict[str, dict]) -> None:
    payload = {"written_by": "liverrt", "marker_version": _MARKER_VERSION, "liverrt_version": __version__,
               "note": "files liverrt wrote here; it replaces only these (see `--overwrite`)",
               "files": dict(sorted(files.items()))}
    tmp = _create_temp(folder, f"{MARKER}.", ".tmp", folder=False)
    try:
        tmp.write_text(json.dumps(payload, indent=1), encoding="utf-8")
        set_default_mode(tmp)
        os.replace(tmp, folder / MARKER)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        _unfinished.discard(tmp)


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """An exclusive lock on ``folder`` (flock on the directory itself): concurrent writers update its marker in turn."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:  # a file system without flock on folders (some network mounts): unlocked
            pass
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _in_pending(folder: Path) -> bool:
    """Whether ``folder`` is, or is inside, the temporary folder of an unfinished atomic_dir."""
    return any(folder == t or t in folder.parents for t in _unfinished)


def _commit_file(tmp: Path, path: Path) -> None:
    """Rename ``tmp`` onto ``path`` and list it in its folder's marker, under the folder's lock.

    The check, the rename and the list change as one step, so a concurrent writer never sees a
    file liverrt wrote without its entry. Inside an open atomic_dir, its seal lists the file.
    """
    folder = path.parent
    if _in_pending(folder):
        os.replace(tmp, path)
        return
    with _locked(folder):
        check_replaceable(path)  # again: another process may have put something there meanwhile
        files = _read_marker(folder)
        before = dict(files)
        files[path.name] = _stamp(tmp)  # a rename keeps size and modification time
        try:
            _write_marker(folder, files)
        except OSError as exc:  # the list could not be written: nothing was replaced
            raise os_error(exc, path) from exc
        try:
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                _write_marker(folder, before)  # the old file keeps its entry
            raise


def record_written(path: Path) -> None:
    """List ``path``, just put in place by a writer with its own staging (the Triton repository), as liverrt's."""
    path = Path(path)
    with _locked(path.parent):
        files = _read_marker(path.parent)
        files[path.name] = _stamp(path)
        _write_marker(path.parent, files)


def _raise(exc: OSError) -> None:
    raise exc


def _files_under(folder: Path) -> Iterator[Path]:
    """Every file under ``folder`` but the markers; an unreadable sub-folder raises (it is not liverrt's to judge)."""
    for root, _dirs, names in os.walk(folder, onerror=_raise):
        for name in names:
            if name != MARKER:
                yield Path(root) / name


def _seal(folder: Path) -> None:
    """Write ``folder``'s marker listing every file under it (a finished output folder)."""
    _write_marker(folder, {p.relative_to(folder).as_posix(): _stamp(p) for p in _files_under(folder)})


def _first_foreign(root: Path) -> str | None:
    """Why some file under the folder ``root`` is not liverrt's (None if every one is).

    A file is liverrt's when the marker of its folder, or of a folder above it up to
    ``root``, lists it with its current size and modification time.
    """
    markers: dict[Path, dict[str, dict]] = {}
    for p in _files_under(root):
        d, verdict = p.parent, f"it holds {p.relative_to(root).as_posix()}, which liverrt did not write"
        while True:
            listed = markers.setdefault(d, _read_marker(d))
            rel = p.relative_to(d).as_posix()
            if rel in listed:
                verdict = _mismatch(listed[rel], p, f"{p.relative_to(root).as_posix()} in it")
                break
            if d == root:
                break
            d = d.parent
        if verdict is not None:
            return verdict
    return None


def _not_ours(path: Path) -> str | None:
    """Why ``path`` (which exists) is not something liverrt wrote, or None if it is."""
    if path.is_symlink():
        return "it is a symbolic link liverrt did not create"
    if path.is_dir():
        try:
            return _first_foreign(path)
        except OSError as exc:
            return f"it holds {exc.filename}, which liverrt cannot read ({exc.strerror})"
    entry = _read_marker(path.parent).get(path.name)
    if entry is None:
        return "liverrt did not write it"
    return _mismatch(entry, path, "it")


def check_replaceable(path: Path) -> None:
    """Raise :class:`InputError` if ``path`` exists and may not be replaced (see the module docstring)."""
    path = Path(path)
    if not os.path.lexists(path) or overwriting():
        return
    why = _not_ours(path)
    if why is not None:
        raise InputError(f"Refusing to replace {path}: {why}; pass --overwrite (overwrite=True in Python) to "
                         "replace it, or choose another output path.")


def check_outputs(paths: Iterable[Path]) -> None:
    """:func:`check_replaceable` for every path, before any work starts (fail fast)."""
    for p in paths:
        check_replaceable(p)


def refuse_overwriting_inputs(path: Path, inputs: Iterable[Path]) -> None:
    """Raise :class:`InputError` if ``path`` is, holds, or lies inside one of ``inputs`` (even with --overwrite).

    The same rule whether ``path`` exists yet or not: liverrt never writes into its input.
    """
    path = Path(path)
    target = path.resolve()
    for p in inputs:
        p = Path(p)
        if not os.path.lexists(p):
            continue
        src = p.resolve()
        if target == src or (os.path.lexists(path) and target in src.parents):
            raise InputError(f"Refusing to overwrite {path}: it would replace the input {p}; choose another output path.")
        if src in target.parents and src.is_dir():
            verb = "overwrite" if os.path.lexists(path) else "write"
            raise InputError(f"Refusing to {verb} {path}: it lies inside the input folder {p}; liverrt never writes "
                             "into its input: choose a path outside it.")


def refuse_output_in_input(out: Path, inputs: Iterable[Path]) -> None:
    """Raise :class:`InputError` if the output folder ``out`` is an input folder or lies inside one.

    liverrt never writes into its input: results inside a dataset folder would
    change what the next run reads from it.
    """
    target = Path(out).resolve()
    for p in inputs:
        src = Path(p).resolve()
        if not src.is_dir():
            continue
        if target == src or src in target.parents:
            raise InputError(f"Output folder {out} {'is' if target == src else 'lies inside'} the input folder "
                             f"{p}; liverrt never writes into its input: choose an --out outside it.")


# ----------------------------------------------------------------------------- atomic writers


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def set_default_mode(path: Path) -> None:
    """Temporary entries are created private (0600/0700); give outputs the usual umask-based mode."""
    base = 0o777 if path.is_dir() else 0o666
    os.chmod(path, base & ~_umask())


def _mkdir(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError as exc:  # a file where the folder should be
        raise InputError(f"Cannot create output folder {folder}: a file of that name exists; "
                         "expected a folder path.") from exc
    except OSError as exc:
        raise os_error(exc, folder, "create output folder") from exc


def _inside(exc: OSError, tmp: Path) -> bool:
    """Whether ``exc`` is about the temporary output (not an input read while writing it)."""
    names = [n for n in (exc.filename, getattr(exc, "filename2", None)) if n]
    return not names or any(str(n).startswith(str(tmp)) for n in names)


@contextlib.contextmanager
def atomic_path(path: Path, *, suffix: str = "", protect: Iterable[Path] = ()) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success.

    Refuses (before anything is written) to replace one of ``protect`` (inputs)
    or a file liverrt did not write (see :func:`check_replaceable`). On any
    error, and on SIGINT/SIGTERM, the temporary file is removed.
    """
    path = Path(path)
    refuse_overwriting_inputs(path, protect)
    check_replaceable(path)
    _mkdir(path.parent)
    try:
        tmp = _create_temp(path.parent, f".{path.name}.", suffix or ".tmp", folder=False)
    except OSError as exc:
        raise os_error(exc, path) from exc
    try:
        try:
            yield tmp
            set_default_mode(tmp)
            _commit_file(tmp, path)
        except OSError as exc:
            if not _inside(exc, tmp):
                raise
            raise os_error(exc, path) from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        _unfinished.discard(tmp)


def _remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(folder: Path, *, protect: Iterable[Path] = ()) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces ``folder`` in one rename.

    The folder appears complete or not at all: on any error (and on SIGINT or
    SIGTERM) the temporary folder is removed and an existing ``folder`` is left
    untouched. An existing ``folder`` is replaced only if liverrt wrote it (see
    :func:`check_replaceable`) and it holds none of ``protect``.
    """
    folder = Path(folder)
    refuse_overwriting_inputs(folder, protect)
    check_replaceable(folder)
    _mkdir(folder.parent)
    old: Path | None = None
    nested = _in_pending(folder.parent)  # inside an outer atomic_dir: its seal lists these files
    try:
        tmp = _create_temp(folder.parent, f".{folder.name}.", folder=True)
    except OSError as exc:
        raise os_error(exc, folder) from exc
    try:
        try:
            yield tmp
            if not nested:
                _seal(tmp)
            set_default_mode(tmp)
            with _locked(folder.parent):
                if os.path.lexists(folder):
                    check_replaceable(folder)
                    old = temp_name(folder.parent, f".{folder.name}.old.")  # named first: a signal
                    os.mkdir(old, 0o700)  # between the two leaves nothing the cleanup below misses
                    os.replace(folder, old / "x")
                os.replace(tmp, folder)
        except OSError as exc:
            if not _inside(exc, tmp):
                raise
            raise os_error(exc, folder) from exc
    except BaseException:
        _remove_tree(tmp)
        if old is not None and (old / "x").exists() and not os.path.lexists(folder):
            os.replace(old / "x", folder)  # put the previous output back
        raise
    finally:
        _unfinished.discard(tmp)
        if old is not None:
            _remove_tree(old)


def remove_unfinished() -> None:
    """Remove the temporary files and folders of atomic writes that neither finished nor cleaned up after
    themselves (see ``_unfinished``); the CLI calls it on its way out, after a signal too."""
    for tmp in list(_unfinished):
        if tmp.is_dir() and not tmp.is_symlink():
            _remove_tree(tmp)
        else:
            tmp.unlink(missing_ok=True)
        _unfinished.discard(tmp)


def write_bytes_atomic(data: bytes, path: Path, *, protect: Iterable[Path] = ()) -> Path:
    with atomic_path(path, protect=protect) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text_atomic(text: str, path: Path, *, protect: Iterable[Path] = ()) -> Path:
    return write_bytes_atomic(text.encode("utf-8"), path, protect=protect)
