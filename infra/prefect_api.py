"""Find the Prefect server ``qt ui`` keeps up for a home, so commands skip the ephemeral one.

``qt ui`` records its Prefect API in ``<home>/prefect/server.json`` (``api_url``, the
server's ``pid``, ``started``, ``home``) once the server is healthy, and removes it when it
stops.
:func:`discover` trusts a record only while its pid is alive and ``GET {api_url}/health``
answers ``true`` within half a second; a command then sets ``PREFECT_API_URL`` to it (see
:func:`core.settings.configure_environment`) and starts in seconds instead of paying ~15 s
for an ephemeral server, and its runs show in the UI at once.

Only the standard library here: importing Prefect takes about a second, and this runs at
the start of every command. Reading never fails and never creates anything: a read-only
home keeps working.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from core.settings import Settings

RECORD_NAME = "server.json"
HEALTH_TIMEOUT_S = 0.5
#: What ``qt ingest`` of one file takes with the server up vs. ephemeral (bench/cli.py).
FAST_START_S = 7
EPHEMERAL_START_S = 23

_tip_shown = False


def record_path(settings: Settings) -> Path:
    """Where ``qt ui`` records the Prefect server of this home."""
    return settings.prefect_home / RECORD_NAME


def write_record(settings: Settings, api_url: str, pid: int) -> Path:
    """Record a healthy server atomically (temp file + rename): readers see all or nothing."""
    path = record_path(settings)
    started = datetime.now(UTC).isoformat(timespec="seconds")
    record = {"api_url": api_url, "pid": pid, "started": started, "home": str(settings.home)}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        tmp.write_text(json.dumps(record, indent=2) + "\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def remove_record(path: Path, pid: int) -> None:
    """Remove the record at ``path`` if it still names ``pid`` (another ``qt ui`` may own it now)."""
    record = _read(path)
    if record is not None and record.get("pid") == pid:
        _unlink_quietly(path)


def discover(settings: Settings) -> str | None:
    """The API URL of this home's running Prefect server, or None.

    None when there is no record, it is unreadable or names another home (a copied one), its
    pid is dead, or the server does not answer its health check in time. A record whose pid
    is dead is removed when the home allows it (never an error: the home may be read-only).
    """
    path = record_path(settings)
    record = _read(path)
    if record is None:
        return None
    api_url, pid = record.get("api_url"), record.get("pid")
    if not isinstance(api_url, str) or not isinstance(pid, int) or isinstance(pid, bool):
        return None
    if record.get("home") != str(settings.home):  # a copied or moved home: not its server
        return None
    if not _pid_alive(pid):
        if _read(path) == record:  # not rewritten meanwhile by a qt ui starting now
            _unlink_quietly(path)
        return None
    return api_url.rstrip("/") if healthy(api_url) else None


def healthy(api_url: str, timeout: float = HEALTH_TIMEOUT_S) -> bool:
    """Whether ``GET {api_url}/health`` answers 200 ``true`` within ``timeout`` seconds."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # localhost: no proxy
    try:
        with opener.open(f"{api_url.rstrip('/')}/health", timeout=timeout) as reply:
            return reply.status == 200 and reply.read(64).strip() == b"true"
    except (urllib.error.URLError, OSError, ValueError):
        return False


def tip(settings: Settings) -> str:
    """The one-line advice printed when a flow is about to start an ephemeral server."""
    return (
        f"tip: `qt ui --home {settings.home}` in another terminal keeps a Prefect server up for "
        f"this home; commands then use it and start in ~{FAST_START_S} s instead of "
        f"~{EPHEMERAL_START_S} s (and their runs show in the Prefect UI)"
    )


def note_ephemeral(settings: Settings) -> bool:
    """Print :func:`tip` on stderr, once per process, when no Prefect API is configured.

    Call it in a command that is about to run a flow, after
    :func:`core.settings.configure_environment` (which sets ``PREFECT_API_URL`` when this
    home's server is up). A ``PREFECT_API_URL`` in the environment, even empty, is the
    person's choice: no tip then. Returns whether it printed.
    """
    global _tip_shown
    if _tip_shown or "PREFECT_API_URL" in os.environ:
        return False
    _tip_shown = True
    print(tip(settings), file=sys.stderr, flush=True)
    return True


def _read(path: Path) -> dict[str, Any] | None:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, somebody else's
        return True
    except OSError:
        return False
    return True


def _unlink_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):  # a read-only home: leave it, it is ignored anyway
        path.unlink(missing_ok=True)
