"""One log line before Numba compiles a liverrt kernel that its on-disk cache does not hold.

A first ``liverrt eval`` spends most of a minute on 2 cores compiling kernels (measured 44 s, against
2 s once they are cached), and said nothing while it did. Numba emits a ``numba:compile`` event only
on a cache miss (``Dispatcher.compile`` first tries ``load_overload`` from the cache), so listening
for it tells exactly when compilation starts: the notice is logged (INFO, logger
``liverrt.kernels.compile_notice``) once per process, on the first miss of a liverrt kernel, and
never when every kernel a command needs comes from the cache. Each kernel compiled is logged at
DEBUG. :mod:`liverrt.kernels` imports this module, so every kernel module is covered.
"""

from __future__ import annotations

import logging
import threading

from numba.core import event

log = logging.getLogger(__name__)

NOTICE = ("compiling liverrt's Numba kernels (first run only, up to about a minute on 2 cores; later runs load "
          "them from Numba's cache)...")


class _FirstCompile(event.Listener):
    """Logs :data:`NOTICE` at the first compilation of a liverrt kernel in this process."""

    def __init__(self) -> None:
        self.told = False
        self._lock = threading.Lock()

    def on_start(self, ev: event.Event) -> None:
        dispatcher = ev.data["dispatcher"]
        name = f"{getattr(dispatcher.py_func, '__module__', '')}.{dispatcher.__name__}"
        if not name.startswith("liverrt."):
            return
        with self._lock:
            first, self.told = not self.told, True
        if first:
            log.info(NOTICE)
        log.debug("compiling %s(%s)", name, ", ".join(map(str, ev.data["args"])))

    def on_end(self, ev: event.Event) -> None:
        pass


_listener = _FirstCompile()
event.register("numba:compile", _listener)  # once: a module runs once per process
