"""The few exceptions liverrt raises on purpose.

Every message says what happened, then what was expected. The CLI turns
:class:`InputError` into exit code 2 and any other :class:`LiverrtError` into
exit code 1, without a traceback.
"""


class LiverrtError(Exception):
    """Base class: a failure liverrt understands and can explain."""

    exit_code = 1


class InputError(LiverrtError):
    """The user's input is missing, unreadable or not what was expected (exit code 2)."""

    exit_code = 2


class ArtifactError(InputError):
    """A checkpoint or exported model is of the wrong kind or lacks liverrt metadata."""


class ExportError(LiverrtError):
    """An export was produced but failed its verification; nothing was written."""


class BackendUnavailableError(InputError):
    """An optional backend (onnxruntime-gpu, TensorRT, CUDA) is not installed or usable here."""


def skipped_case(case_id: str, source: object, exc: Exception) -> dict:
    """How a batch command reports a case it left out: ``{"id", "source", "reason", "kind"}``.

    ``kind`` is ``input`` for an :class:`InputError` (exit code 2), else ``runtime`` (exit code 1),
    whose reason also names the exception type.
    """
    kind = "input" if isinstance(exc, InputError) else "runtime"
    reason = str(exc) if kind == "input" else f"{type(exc).__name__}: {exc}"
    return {"id": case_id, "source": str(source), "reason": reason, "kind": kind}
