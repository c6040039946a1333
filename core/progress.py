"""A process-wide progress hub: long-running work reports, the CLI decides how to show it.

Tasks call :func:`report`; the command line installs a sink (a Rich progress bar on
stderr). With no sink installed, reports are dropped: progress is display, not data.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

Sink = Callable[[str, int, int], None]
_lock = threading.Lock()
_sink: Sink | None = None


def set_sink(sink: Sink | None) -> None:
    """Install (or with None, remove) the function that displays progress."""
    global _sink
    with _lock:
        _sink = sink


def report(key: str, done: int, total: int) -> None:
    """Report that ``done`` of ``total`` units of the work named ``key`` are finished."""
    with _lock:
        sink = _sink
    if sink is not None:
        sink(key, done, total)
