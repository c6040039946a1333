"""Ctrl-C and SIGTERM end a command at once, say what was stored, and leave no process behind.

A terminal's Ctrl-C reaches the whole process group: Prefect's ephemeral API server dies
with it, and a flow that goes on afterwards waits forever for that server (its events
worker retries every few seconds). So the first SIGINT/SIGTERM does not unwind through
Prefect: it prints one document of what finished (:func:`core.progress.completed`) and
what did not, stops every child process (the ephemeral server, the fit workers), and
exits 130 (SIGINT) or 143 (SIGTERM). Stored data stays intact because every store write
is atomic (temp file + rename): an interrupted write leaves the old file.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

from rich.markup import escape

from cli.output import emit_json, stderr
from core import progress


@contextmanager
def handle_interrupts(as_json: bool) -> Iterator[None]:
    """Within the block, SIGINT/SIGTERM report, stop the children and exit 128 + signal."""
    progress.reset()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        _report_and_exit(signum, as_json)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def interrupted_document(signum: int) -> dict[str, Any]:
    """The JSON document of an interrupted command."""
    done, pending = progress.completed(), progress.pending()
    name = signal.Signals(signum).name
    return {
        "error": f"interrupted by {name}: {len(done)} unit(s) finished and kept, {len(pending)} not "
        "finished (each is as before or, if it was being written, whole: writes are atomic); "
        "run the command again to finish them",
        "exit_code": 128 + signum,
        "interrupted": True,
        "completed": done,
        "not_completed": pending,
    }


def _report_and_exit(signum: int, as_json: bool) -> None:
    document = interrupted_document(signum)
    try:
        if as_json:
            emit_json(document)
        stderr.print(f"[bold red]interrupted[/]: {escape(document['error'])}", highlight=False)
        if document["not_completed"]:
            stderr.print("not finished: " + escape(", ".join(document["not_completed"])), highlight=False)
        _end_mlflow_run()
        _stop_children()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(128 + signum)  # skip atexit: Prefect's would wait for a server that is gone


def _end_mlflow_run() -> None:
    """Mark an MLflow run this process left open as KILLED (not RUNNING forever)."""
    mlflow = sys.modules.get("mlflow")
    if mlflow is None:
        return
    try:
        while mlflow.active_run() is not None:
            mlflow.end_run(status="KILLED")
    except Exception as err:  # the store may be mid-write: say so, keep exiting
        stderr.print(f"could not mark the MLflow run as killed: {escape(str(err))}", highlight=False)


def _stop_children(grace_s: float = 3.0) -> None:
    """SIGTERM every descendant process, then SIGKILL those still alive after ``grace_s``."""
    import psutil

    children = psutil.Process().children(recursive=True)
    for child in children:
        try:
            child.terminate()
        except psutil.NoSuchProcess:
            continue
    _, alive = psutil.wait_procs(children, timeout=grace_s)
    for child in alive:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            continue
