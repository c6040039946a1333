"""Rendering for the command line: JSON on stdout, people's output and logs on stderr."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from core import progress

stdout = Console()
stderr = Console(stderr=True)


def emit_json(document: dict[str, Any]) -> None:
    """Print one JSON document on stdout (the ``--json`` contract)."""
    sys.stdout.write(json.dumps(document, indent=2, default=str) + "\n")
    sys.stdout.flush()


def table(title: str, columns: list[str], rows: list[list[Any]]) -> Table:
    """A compact Rich table: numbers right-aligned with thousands separators, no wrapping."""
    cells = [[f"{v:,}" if isinstance(v, int) else str(v) for v in row] for row in rows]
    out = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, padding=0)
    for i, name in enumerate(columns):
        numeric = bool(rows) and all(isinstance(r[i], (int, float)) for r in rows)
        width = max([len(name)] + [len(c[i]) for c in cells])
        out.add_column(name, justify="right" if numeric else "left", min_width=width, no_wrap=True)
    for row in cells:
        out.add_row(*row)
    return out


@contextmanager
def progress_bars(enabled: bool) -> Iterator[None]:
    """Show :mod:`core.progress` reports as Rich progress bars on stderr while inside."""
    if not enabled:
        yield
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=stderr, transient=True) as bars:
        ids: dict[str, Any] = {}

        def sink(key: str, done: int, total: int) -> None:
            if key not in ids:
                ids[key] = bars.add_task(key, total=total)
            bars.update(ids[key], completed=done, total=total)

        progress.set_sink(sink)
        try:
            yield
        finally:
            progress.set_sink(None)


class _CliReportsFailures(logging.Filter):
    """Drop Prefect's own error records for failed runs from the console.

    Every failure reaches the CLI as an exception, which prints it once: a clear message
    for our errors, a traceback for anything unexpected. Prefect's API still records the
    failed runs and their logs.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        from_runs = record.name.startswith(("prefect.flow_runs", "prefect.task_runs"))
        return not (from_runs and record.levelno >= logging.ERROR)


def setup_console_logging() -> None:
    """Logs (ours and Prefect's) to stderr, WARNING and up, failures reported once."""
    root = logging.getLogger()
    if any(isinstance(f, _CliReportsFailures) for h in root.handlers for f in h.filters):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handler.addFilter(_CliReportsFailures())
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("great_expectations").setLevel(logging.WARNING)
