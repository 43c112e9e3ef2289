"""The bad-input corpus: damaged data, artifacts and paths that every liverrt command must refuse cleanly.

Each case states its expectation (exit code, what the one-line error names) in its parametrization; the
harness in :mod:`badinput.harness` checks the rest of the README's promise for every case: no traceback,
inputs unchanged (sha256 before and after), no hidden or temporary leftovers in the output, nothing partial
after a failure, the good cases of a batch written whole.
"""
