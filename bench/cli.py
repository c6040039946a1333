"""Command start-up benchmark: `qt` wall time, ephemeral Prefect vs. the server `qt ui` keeps up.

Each command runs as a person runs it (a subprocess, `--json`), a few times; the table shows
medians. Cold: no Prefect server, every flow starts an ephemeral one (a fresh home: its
Prefect DB is created on the first ingest). Server up: `qt ui` runs for the home (free
ports), and commands find it on their own (no PREFECT_API_URL exported); the store is
emptied before each first ingest. Then one no-op ingest with the server up is profiled
(`python -X importtime`) to show where the time goes. Writes bench/results/cli.json.

    .venv/bin/python bench/cli.py [--reps 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from bench import write_results  # noqa: E402

SAMPLE = ROOT / "tasks" / "ingest" / "sample_data" / "BTCUSDT-1h.zip"
QT = [sys.executable, "-m", "cli.main"]
COMMANDS: dict[str, list[str]] = {
    "qt ingest (first, 1 file)": ["ingest", "--source", "files", "--path", str(SAMPLE), "--json"],
    "qt ingest (no-op re-ingest)": ["ingest", "--source", "files", "--path", str(SAMPLE), "--json"],
    "qt registry list": ["registry", "list", "--json"],
}
GOAL_S = 3.0


def _env(home: Path) -> dict[str, str]:
    env = {**os.environ, "QT_HOME": str(home), "COLUMNS": "200"}
    for key in ("PREFECT_API_URL", "PREFECT_HOME"):  # the home's own server / database
        env.pop(key, None)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _timed_qt(args: list[str], home: Path, prefix: list[str] | None = None) -> tuple[float, str]:
    began = time.perf_counter()
    done = subprocess.run(
        [*(prefix or QT), *args], cwd=ROOT, env=_env(home), capture_output=True, text=True, timeout=600
    )
    took = time.perf_counter() - began
    if done.returncode != 0:
        raise SystemExit(f"`qt {' '.join(args)}` exited {done.returncode}:\n{done.stderr[-3000:]}")
    return took, done.stderr


def _run_round(home: Path, samples: dict[str, list[float]], before_first: Any = None) -> None:
    for label, args in COMMANDS.items():
        if label.startswith("qt ingest (first") and before_first is not None:
            before_first()
        took, _ = _timed_qt(args, home)
        samples[label].append(round(took, 2))


def _flow_runs(api: str) -> int:
    request = urllib.request.Request(
        f"{api}/flow_runs/count", data=b"{}", headers={"Content-Type": "application/json"}
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=10) as reply:
        return int(json.loads(reply.read()))


def _start_ui(home: Path) -> tuple[subprocess.Popen[str], str]:
    ports = [str(_free_port()), str(_free_port())]
    ui = subprocess.Popen(
        [*QT, "ui", "--prefect-port", ports[0], "--mlflow-port", ports[1], "--json"],
        cwd=ROOT, env=_env(home), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    assert ui.stdout is not None
    text = ""
    for line in ui.stdout:  # the URLs come once both servers answer (or the stream closes)
        text += line
        if line.startswith("}"):
            return ui, str(json.loads(text)["prefect_api"])
    raise SystemExit(f"qt ui exited {ui.wait()} before printing its URLs: {text!r}")


def _stop_ui(ui: subprocess.Popen[str]) -> None:
    ui.send_signal(signal.SIGTERM)
    try:
        ui.wait(timeout=60)
    except subprocess.TimeoutExpired:
        ui.kill()


def _import_profile(home: Path) -> tuple[float, float, list[tuple[str, float]]]:
    """Wall time of a no-op ingest under -X importtime, its import time, the top packages."""
    prefix = [sys.executable, "-X", "importtime", "-m", "cli.main"]
    wall, err = _timed_qt(COMMANDS["qt ingest (no-op re-ingest)"], home, prefix)
    by_root: dict[str, float] = {}
    for line in err.splitlines():
        match = re.match(r"import time:\s+\d+ \|\s+(\d+) \| (\s*)(\S+)", line)
        if match and not match.group(2):  # imported at top level (not by another import)
            root = match.group(3).split(".")[0]
            by_root[root] = by_root.get(root, 0.0) + int(match.group(1)) / 1e6
    top = sorted(by_root.items(), key=lambda kv: -kv[1])[:6]
    return wall, sum(by_root.values()), [(name, round(s, 2)) for name, s in top]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    reps = parser.parse_args().reps
    cold: dict[str, list[float]] = {label: [] for label in COMMANDS}
    served: dict[str, list[float]] = {label: [] for label in COMMANDS}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(reps):
            _run_round(Path(tmp) / f"cold-{rep}", cold)
        home = Path(tmp) / "served"
        began = time.perf_counter()
        ui, api = _start_ui(home)
        ui_start_s = time.perf_counter() - began
        try:
            runs_before = _flow_runs(api)

            def empty_store() -> None:
                for name in ("store", "quarantine"):
                    shutil.rmtree(home / name, ignore_errors=True)

            for _ in range(reps):
                _run_round(home, served, empty_store)
            runs_on_server = _flow_runs(api) - runs_before
            profile_wall, import_s, top = _import_profile(home)
        finally:
            _stop_ui(ui)
    if runs_on_server != 2 * reps:
        raise SystemExit(f"expected {2 * reps} flow runs on the server, found {runs_on_server}")

    med = {label: (statistics.median(cold[label]), statistics.median(served[label])) for label in COMMANDS}
    results = {
        "reps": reps,
        "goal_server_up_s": GOAL_S,
        "commands": {
            label: {
                "cold_median_s": c,
                "server_median_s": s,
                "cold_s": cold[label],
                "server_s": served[label],
                "meets_goal": s <= GOAL_S,
            }
            for label, (c, s) in med.items()
        },
        "qt_ui_start_s": round(ui_start_s, 1),
        "flow_runs_on_server": runs_on_server,
        "profile_noop_ingest_server_up": {
            "wall_s": round(profile_wall, 2),
            "imports_s": round(import_s, 2),
            "top_imports_s": dict(top),
            "rest_s": round(profile_wall - import_s, 2),
        },
        "machine": f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}",
    }
    table = Table(title=f"`qt` wall time, median of {reps} (s)", title_justify="left")
    table.add_column("command")
    table.add_column("cold (ephemeral)", justify="right")
    table.add_column("server up (qt ui)", justify="right")
    table.add_column(f"≤ {GOAL_S:.0f} s?", justify="center")
    for label, (c, s) in med.items():
        table.add_row(label, f"{c:.1f}", f"{s:.1f}", "yes" if s <= GOAL_S else "no")
    console = Console()
    console.print(table)
    console.print(
        f"qt ui to healthy: {ui_start_s:.1f} s; flow runs seen on its API: {runs_on_server}\n"
        f"no-op ingest, server up, under -X importtime: {profile_wall:.1f} s wall, "
        f"{import_s:.1f} s importing ("
        + ", ".join(f"{name} {s:.1f}" for name, s in top)
        + f"), {profile_wall - import_s:.1f} s the rest (interpreter, flow run, work, exit)",
        highlight=False,
    )
    write_results("cli", results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
