"""A process-wide progress hub: long-running work reports, the CLI decides how to show it.

Tasks call :func:`report`; the command line installs a sink (a Rich progress bar on
stderr). With no sink installed, reports are dropped: progress is display, not data.

Work also says which units it plans (:func:`plan`) and which it finished and kept
(:func:`complete`), so an interrupted command can say what was stored and what was not.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

Sink = Callable[[str, int, int], None]
_lock = threading.Lock()
_sink: Sink | None = None
_planned: list[str] = []
_completed: dict[str, object] = {}


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


def reset() -> None:
    """Forget planned and completed units (a command starts)."""
    with _lock:
        _planned.clear()
        _completed.clear()


def plan(*keys: str) -> None:
    """Announce units of work (e.g. ``spot BTCUSDT 1h``) that this command will do."""
    with _lock:
        _planned.extend(k for k in keys if k not in _planned)


def complete(key: str, summary: object) -> None:
    """Record that a unit finished and its result is kept (stored, registered)."""
    with _lock:
        if key not in _planned:
            _planned.append(key)
        _completed[key] = summary


def completed() -> dict[str, object]:
    """Finished units and their summaries, in the order they finished."""
    with _lock:
        return dict(_completed)


def pending() -> list[str]:
    """Planned units that have not finished."""
    with _lock:
        return [k for k in _planned if k not in _completed]
