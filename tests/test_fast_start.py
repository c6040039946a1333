"""Commands find the Prefect server ``qt ui`` keeps up for their home (no ephemeral server).

Without one they keep the ephemeral server and say once, on stderr, how to be fast.
"""

from __future__ import annotations

import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import infra.prefect_api as prefect_api
from core.settings import Settings, configure_environment, load_settings
from infra.prefect_api import discover, note_ephemeral, record_path, write_record
from tests.conftest import copy_sample, free_port, start_qt_ui
from tests.test_cli import QT, ROOT
from tests.test_deploy import _read_json


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.fixture
def no_api_url(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No PREFECT_API_URL inside, the session's value back after; the tip not yet shown.

    Not ``monkeypatch.delenv``: configure_environment sets the variable itself, and a later
    ``monkeypatch.setenv`` would restore that value (a dead test server) for the next tests.
    """
    saved = os.environ.pop("PREFECT_API_URL", None)
    monkeypatch.setattr(prefect_api, "_tip_shown", False)
    yield
    os.environ.pop("PREFECT_API_URL", None)
    if saved is not None:
        os.environ["PREFECT_API_URL"] = saved


@pytest.fixture
def health_server() -> Iterator[str]:
    """A local stand-in for a Prefect API: ``GET /api/health`` answers ``true``."""

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            ok = self.path == "/api/health"
            body = b"true" if ok else b"{}"
            self.send_response(200 if ok else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/api"
    finally:
        server.shutdown()
        server.server_close()


def test_a_live_healthy_server_is_used_unless_the_person_exported_another(
    settings: Settings, health_server: str, no_api_url: None
) -> None:
    write_record(settings, health_server, os.getpid())
    assert discover(settings) == health_server
    moved = settings.model_copy(update={"home": settings.home.with_name("copied-home")})
    record_path(moved).parent.mkdir(parents=True)
    record_path(moved).write_text(record_path(settings).read_text())
    assert discover(moved) is None  # a copied home's record names another home's server
    configure_environment(settings)
    assert os.environ["PREFECT_API_URL"] == health_server
    assert note_ephemeral(settings) is False  # a server: no tip

    os.environ["PREFECT_API_URL"] = "http://127.0.0.1:1/api"  # the person's choice wins
    configure_environment(settings)
    assert os.environ["PREFECT_API_URL"] == "http://127.0.0.1:1/api"


def test_a_stale_record_is_ignored_and_the_tip_shows_once(
    settings: Settings, no_api_url: None, capsys: pytest.CaptureFixture[str]
) -> None:
    record = write_record(settings, f"http://127.0.0.1:{free_port()}/api", _dead_pid())
    configure_environment(settings)
    assert "PREFECT_API_URL" not in os.environ
    assert not record.exists()  # a dead pid's record is cleaned up (the home is writable)

    assert note_ephemeral(settings) is True
    assert note_ephemeral(settings) is False
    err = capsys.readouterr().err
    assert err.count("tip:") == 1 and f"qt ui --home {settings.home}" in err


def test_a_live_pid_that_does_not_answer_is_ignored_and_kept(settings: Settings, no_api_url: None) -> None:
    record = write_record(settings, f"http://127.0.0.1:{free_port()}/api", os.getpid())
    assert discover(settings) is None
    assert record.exists()  # maybe still starting, or somebody else's: not ours to remove


def test_discovery_never_fails_nor_creates_anything(
    settings: Settings, no_api_url: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    configure_environment(settings)  # no home at all: nothing created
    assert not settings.home.exists() and "PREFECT_API_URL" not in os.environ

    path = record_path(settings)
    path.parent.mkdir(parents=True)
    for text in ("", "{not json", "[]", '{"api_url": 1, "pid": "x"}', '{"api_url": "http://x", "pid": true}'):
        path.write_text(text)
        assert discover(settings) is None

    write_record(settings, f"http://127.0.0.1:{free_port()}/api", _dead_pid())

    def refuse(self: Path, missing_ok: bool = False) -> None:
        raise PermissionError(13, "Read-only file system", str(self))

    monkeypatch.setattr(Path, "unlink", refuse)  # a read-only home (tests run as root: no chmod)
    assert discover(settings) is None
    assert path.exists()


def test_a_process_prints_the_tip_once_on_stderr(tmp_path: Path) -> None:
    """Two flows in one command (e.g. qt demo): one tip, on stderr only."""
    script = (
        "from core.settings import load_settings, configure_environment\n"
        "from infra.prefect_api import note_ephemeral\n"
        "s = load_settings()\nconfigure_environment(s)\nnote_ephemeral(s)\nnote_ephemeral(s)\n"
    )
    home = tmp_path / "home"
    write_record(load_settings(home), f"http://127.0.0.1:{free_port()}/api", _dead_pid())
    env = {**os.environ, "QT_HOME": str(home)}
    env.pop("PREFECT_API_URL", None)
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "" and done.stderr.count("tip: `qt ui") == 1


def _flow_runs(api: str) -> list[dict[str, Any]]:
    request = urllib.request.Request(
        f"{api}/flow_runs/filter", data=b"{}", headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as reply:
        return list(json.loads(reply.read()))


@pytest.mark.slow
def test_qt_ingest_runs_on_the_server_qt_ui_keeps_up_without_being_told(tmp_path: Path) -> None:
    home = tmp_path / "home"
    files = copy_sample(tmp_path / "dumps", ["BTCUSDT"])
    ui, _, _ = start_qt_ui(home)
    env = {**os.environ, "QT_HOME": str(home)}
    env.pop("PREFECT_API_URL", None)
    env.pop("PREFECT_HOME", None)
    record = home / "prefect" / "server.json"
    try:
        assert ui.stdout is not None
        api = _read_json(ui.stdout)["prefect_api"]  # printed once both servers answer (≤ 120 s)
        assert json.loads(record.read_text())["api_url"] == api

        done = subprocess.run(
            [*QT, "ingest", "--source", "files", "--path", str(files[0]), "--json"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        assert json.loads(done.stdout)["symbols"]["BTCUSDT"]["rows_added"] == 10_968
        assert "tip:" not in done.stderr

        runs = [r for r in _flow_runs(api) if r["parameters"].get("home") == str(home.resolve())]
        assert [r["state_type"] for r in runs] == ["COMPLETED"]
    finally:
        ui.send_signal(signal.SIGTERM)
        code = ui.wait(timeout=60)
    assert code == 0
    assert not record.exists()  # stopped: commands go back to ephemeral mode


@pytest.mark.slow
def test_without_a_server_a_flow_command_says_once_how_to_start_fast(tmp_path: Path) -> None:
    home = tmp_path / "home"
    files = copy_sample(tmp_path / "dumps", ["BTCUSDT"])
    record = write_record(load_settings(home), f"http://127.0.0.1:{free_port()}/api", _dead_pid())
    env = {**os.environ, "QT_HOME": str(home)}
    env.pop("PREFECT_API_URL", None)
    done = subprocess.run(
        [*QT, "ingest", "--source", "files", "--path", str(files[0]), "--json"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr.count("tip: `qt ui") == 1
    assert "tip" not in done.stdout and not record.exists()
