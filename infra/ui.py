"""``qt ui``: the Prefect server (API + UI) and the MLflow UI on localhost, over the home's state.

Both run as child processes with the settings STACK.md names: Prefect's host and port
through ``PREFECT_SERVER_API_HOST``/``PREFECT_SERVER_API_PORT`` (its ``--port`` flag does
not update the UI's settings), MLflow with one worker and job execution off (healthy in
about 5 s on 2 cores). Their logs go to ``<home>/logs``.

Once both answer, the Prefect API is recorded in the home (:mod:`infra.prefect_api`): every
``qt`` command for this home then runs its flows on this server instead of an ephemeral one.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from core.errors import QTError
from core.settings import Settings
from infra.prefect_api import remove_record, write_record


@dataclass
class Servers:
    """The running UI servers and where to reach them."""

    prefect_url: str
    mlflow_url: str
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    #: ``<home>/prefect/server.json`` once written, and the Prefect server's pid it names.
    record: Path | None = None
    record_pid: int = 0

    @property
    def prefect_api(self) -> str:
        """The Prefect API URL (export it as ``PREFECT_API_URL`` to run flows against this server)."""
        return f"{self.prefect_url}/api"

    def stop(self) -> None:
        """Forget the record (commands go back to ephemeral mode), terminate the servers, wait."""
        if self.record is not None:
            remove_record(self.record, self.record_pid)
            self.record = None
        for proc in self.processes:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.processes:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()

    def wait(self) -> int:
        """Block until a server exits; returns its exit code."""
        while True:
            for proc in self.processes:
                code = proc.poll()
                if code is not None:
                    return code
            time.sleep(0.5)


def _tool(name: str) -> str:
    """The console script installed beside this interpreter (the project's venv)."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def start(
    settings: Settings, prefect_port: int = 4200, mlflow_port: int = 5000, timeout: float = 120
) -> Servers:
    """Start both servers and wait until each answers its health check.

    Raises:
        QTError: a server exited or did not become healthy in ``timeout`` seconds
            (naming its log file).
    """
    logs = settings.home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    settings.mlflow_dir.mkdir(parents=True, exist_ok=True)
    host = "127.0.0.1"
    servers = Servers(f"http://{host}:{prefect_port}", f"http://{host}:{mlflow_port}")
    prefect_env = {
        **os.environ,
        "PREFECT_HOME": str(settings.prefect_home),
        "PREFECT_SERVER_API_HOST": host,
        "PREFECT_SERVER_API_PORT": str(prefect_port),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_API_URL": f"{servers.prefect_url}/api",
    }
    prefect_env.pop("PREFECT_API_URL", None)
    mlflow_env = {
        **os.environ,
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }
    commands = [
        ("prefect", [_tool("prefect"), "server", "start"], prefect_env, f"{servers.prefect_url}/api/health"),
    ]
    remote = settings.mlflow_tracking_uri or ""
    if not remote.startswith(("http://", "https://")):  # a store (SQLite, Postgres): serve a UI over it
        mlflow_cmd = [
            _tool("mlflow"), "server", "--backend-store-uri", settings.tracking_uri,
            "--default-artifact-root", settings.artifact_root, "--host", host, "--port", str(mlflow_port),
            "--workers", "1",
        ]  # fmt: skip
        commands.append(("mlflow", mlflow_cmd, mlflow_env, f"{servers.mlflow_url}/health"))
    else:
        servers.mlflow_url = remote
    checks = []
    try:
        for name, cmd, env, health in commands:
            log = (logs / f"{name}-server.log").open("ab")
            proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=settings.home)
            servers.processes.append(proc)
            checks.append((name, proc, health, logs / f"{name}-server.log"))
        for name, proc, health, log_path in checks:
            _wait_healthy(name, proc, health, log_path, timeout)
        prefect = servers.processes[0]
        servers.record = write_record(settings, servers.prefect_api, prefect.pid)
        servers.record_pid = prefect.pid
    except BaseException:
        servers.stop()
        raise
    return servers


def _wait_healthy(name: str, proc: subprocess.Popen[bytes], url: str, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise QTError(f"the {name} server exited with code {proc.returncode}; see {log}")
        try:
            with urllib.request.urlopen(url, timeout=2) as reply:
                if reply.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    raise QTError(f"the {name} server did not answer {url} within {timeout:.0f} s; see {log}")
