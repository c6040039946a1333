"""Scaling benchmark: training-flow wall time and memory against the number of symbols.

For each universe size (default 1, 5, 10, 50) and each task runner (Prefect's process pool,
and Dask: a ``LocalCluster`` of 2 workers), one ``qt retrain`` runs in a fresh home on real
1h candles of ../shared/data/binance (the newest ``--days``). Above 10 symbols the real
series are re-used under other names with their timestamps shifted by whole weeks (copy k
of BTCUSDT is ``BTCX{k}USDT``, k weeks later, cut at the real series' end, where the
cross-asset features end), so every symbol is a real market path and
no two rows of one bar are copies of each other.

Measured per run: the process's wall time, the flow's own span (its MLflow parent run),
each step's span (first task start to last task end, read from the Prefect server every
run reports to: one server, started by the benchmark, outside the measured processes), the
summed ``fit_seconds`` of every (family, fold) fit, and the peak of the summed RSS of the
run's process tree (the CLI and its fit processes or Dask workers), sampled every 0.2 s.
Prints a table and writes bench/results/scale.json.

    .venv/bin/python bench/scale.py                               # 1, 5, 10, 50 × local, dask
    .venv/bin/python bench/scale.py --sizes 1,5 --runners local   # a quick look
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared" / "data" / "binance"
PAIRS = ["BTCUSDT", "ETHUSDT", "BNBUSDT", "SOLUSDT", "XRPUSDT"]
PAIRS += ["ADAUSDT", "DOGEUSDT", "AVAXUSDT", "LINKUSDT", "DOTUSDT"]


def universe(size: int) -> list[tuple[str, str, int]]:
    """(name, real pair, weeks shifted) for ``size`` symbols: the real pairs, then shifted copies."""
    out = []
    for k in range(-(-size // len(PAIRS))):
        for pair in PAIRS:
            name = pair if k == 0 else f"{pair[:-4]}X{k}USDT"
            out.append((name, pair, k))
    return out[:size]


def real_candles(days: int) -> dict[str, Any]:
    """The newest ``days`` of each real pair, ingested (validated) from ../shared once."""
    import pandas as pd

    from core.settings import load_settings
    from tasks.ingest import ingest_files
    from tasks.store import CandleStore

    settings = load_settings(Path(tempfile.mkdtemp(prefix="qt-scale-real-")))
    store, out = CandleStore(settings.store_dir), {}
    for pair in PAIRS:
        ingest_files(pair, "1h", "spot", [SHARED / f"{pair}-1h.csv"], "files", settings)
        candles = store.read(pair, "1h", "spot")
        out[pair] = candles[candles.index > candles.index[-1] - pd.Timedelta(days=days)]
    shutil.rmtree(settings.home, ignore_errors=True)
    return out


def build_store(home: Path, size: int, real: dict[str, Any]) -> None:
    """A home whose store holds ``size`` symbols: the real pairs, then week-shifted copies."""
    import pandas as pd

    from core.settings import load_settings
    from tasks.store import CandleStore

    store = CandleStore(load_settings(home).store_dir)
    for name, pair, weeks in universe(size):
        shift, candles = pd.Timedelta(weeks=weeks), real[pair]
        closes = (candles["close_time"] + shift).to_numpy()  # values, not aligned on the old index
        moved = candles.set_axis(candles.index + shift).assign(close_time=closes)
        moved = moved[moved.index <= candles.index[-1]]  # within BTCUSDT's span (cross-asset features)
        store.upsert(name, "1h", "spot", moved)


def free_port() -> int:
    """A free TCP port on loopback."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def prefect_server() -> tuple[subprocess.Popen[bytes], str]:
    """One Prefect server for every run (outside the measured process trees): its process, API URL."""
    import urllib.request

    home, port = Path(tempfile.mkdtemp(prefix="qt-scale-prefect-")), free_port()
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_API_HOST": "127.0.0.1"}
    env.update({"PREFECT_SERVER_API_PORT": str(port), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"})
    env.pop("PREFECT_API_URL", None)
    log = (home / "server.log").open("wb")
    tool = ROOT / ".venv" / "bin" / "prefect"
    proc = subprocess.Popen([str(tool), "server", "start"], env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as reply:
                if reply.status == 200:
                    return proc, url
        except OSError:
            time.sleep(0.5)
    proc.terminate()
    raise SystemExit(f"the Prefect server did not start; see {home / 'server.log'}")


def stages(api_url: str, flow_run_id: str) -> dict[str, float]:
    """Seconds per step of the flow run (first task start to last task end of each step)."""
    import urllib.request

    query = json.dumps({"flow_runs": {"id": {"any_": [flow_run_id]}}, "limit": 200}).encode()
    request = urllib.request.Request(
        f"{api_url}/task_runs/filter", data=query, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as reply:
        runs = json.loads(reply.read())
    spans: dict[str, list[float]] = {}
    for run in runs:
        if not (run.get("start_time") and run.get("end_time")):
            continue
        name = "fit" if run["name"].startswith("fit-") else run["name"].rsplit("-", 1)[0]
        began = datetime.fromisoformat(run["start_time"]).timestamp()
        ended = datetime.fromisoformat(run["end_time"]).timestamp()
        span = spans.setdefault(name, [began, ended])
        span[0], span[1] = min(span[0], began), max(span[1], ended)
    return {name: round(end - start, 1) for name, (start, end) in sorted(spans.items())}


class PeakRSS:
    """The peak of the summed RSS of a process and all its descendants, sampled."""

    def __init__(self, pid: int, every_s: float = 0.2) -> None:
        self.pid, self.every_s, self.peak_mb = pid, every_s, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import psutil

        try:
            root = psutil.Process(self.pid)
        except psutil.NoSuchProcess:
            return
        while not self._stop.is_set():
            total = 0
            try:
                for p in [root, *root.children(recursive=True)]:
                    with contextlib.suppress(psutil.Error):
                        total += p.memory_info().rss
            except psutil.Error:
                break
            self.peak_mb = max(self.peak_mb, total / 2**20)
            self._stop.wait(self.every_s)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak_mb


def flow_figures(home: Path, run_id: str) -> dict[str, Any]:
    """The flow's span (its MLflow parent run) and the summed fit seconds of its child runs."""
    import mlflow

    from core.settings import load_settings

    client = mlflow.MlflowClient(load_settings(home).tracking_uri)
    parent = client.get_run(run_id)
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{run_id}'"
    )
    fits = {c.data.tags.get("mlflow.runName", "?"): c.data.metrics.get("fit_seconds", 0.0) for c in children}
    return {
        "flow_s": ((parent.info.end_time or 0) - parent.info.start_time) / 1000,
        "fit_s_total": float(sum(fits.values())),
        "fit_s_by_run": fits,
    }


def one_run(
    template: Path, size: int, runner: str, models: str, workers: int, api_url: str
) -> dict[str, Any]:
    """``qt retrain`` in a copy of the template home on ``runner``; its figures."""
    home = Path(tempfile.mkdtemp(prefix=f"qt-scale-{size}-{runner}-"))
    shutil.copytree(template / "store", home / "store")
    env = {**os.environ, "QT_TASK_RUNNER": runner, "QT_WORKERS": str(workers), "QT_HOME": str(home)}
    env["PREFECT_API_URL"] = api_url
    cmd = [str(ROOT / ".venv" / "bin" / "qt"), "retrain", "--source", "store", "--models", models, "--json"]
    began = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = PeakRSS(proc.pid)
    out, err = proc.communicate()
    wall = time.perf_counter() - began
    peak_mb = peak.stop()
    if proc.returncode != 0:
        failed = f"qt retrain ({size} symbols, {runner}) failed, exit {proc.returncode}"
        raise SystemExit(f"{failed}:\n{err[-3000:]}")
    doc = json.loads(out)
    figures = {**flow_figures(home, doc["run_id"]), "stages_s": stages(api_url, doc["flow_run_id"])}
    shutil.rmtree(home, ignore_errors=True)
    return {
        "symbols": size,
        "runner": runner,
        "workers": workers,
        "wall_s": wall,
        "peak_rss_mb": peak_mb,
        "rows": None,
        **figures,
        "oof_log_loss": doc["metrics"].get("oof_log_loss"),
    }


def runs(args: argparse.Namespace, api_url: str, console: Any) -> list[dict[str, Any]]:
    """Every (universe size, runner) run's figures, printed as each ends."""
    rows, real = [], real_candles(args.days)
    for size in [int(s) for s in args.sizes.split(",")]:
        template = Path(tempfile.mkdtemp(prefix=f"qt-scale-template-{size}-"))
        build_store(template, size, real)
        for runner in args.runners.split(","):
            console.print(f"{size} symbols on {runner} …", highlight=False)
            row = one_run(template, size, runner, args.models, args.workers, api_url)
            row["rows"] = int(sum(len(real[pair]) for _, pair, _ in universe(size)))
            rows.append(row)
            save(args, rows)  # after every run: a failure later keeps what was measured
            console.print(
                f"  {row['wall_s']:.0f} s wall, flow {row['flow_s']:.0f} s, fits {row['fit_s_total']:.0f} s, "
                f"peak {row['peak_rss_mb']:.0f} MB; steps {row['stages_s']}",
                highlight=False,
            )
        shutil.rmtree(template, ignore_errors=True)
    return rows


def save(args: argparse.Namespace, rows: list[dict[str, Any]]) -> Path:
    """bench/results/scale.json with the runs so far (``--keep``: and the file's other runs)."""
    machine = {"cores": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}
    out = ROOT / "bench" / "results" / "scale.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.keep and out.exists():
        done = {(r["symbols"], r["runner"]) for r in rows}
        earlier = [r for r in json.loads(out.read_text())["runs"] if (r["symbols"], r["runner"]) not in done]
        rows = sorted([*earlier, *rows], key=lambda r: (r["symbols"], r["runner"] != "local"))
    settings = {"models": args.models, "days": args.days, "workers": args.workers, "profile": "fast"}
    out.write_text(json.dumps({"machine": machine, "settings": settings, "runs": rows}, indent=2))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="1,5,10,50", help="universe sizes (comma separated)")
    ap.add_argument("--runners", default="local,dask", help="local and/or dask")
    ap.add_argument("--models", default="xgb,lgbm,nhits", help="families fitted (fast profile)")
    ap.add_argument("--days", type=int, default=365, help="newest days of candles per symbol")
    ap.add_argument("--workers", type=int, default=2, help="fit processes / Dask workers")
    ap.add_argument("--keep", action="store_true", help="keep the other sizes' runs of scale.json")
    args = ap.parse_args()
    if not (SHARED / "BTCUSDT-1h.csv").exists():
        raise SystemExit(f"{SHARED} is absent: the scaling benchmark needs ../shared's candles")
    from rich.console import Console
    from rich.table import Table

    console = Console()
    server, api_url = prefect_server()
    try:
        rows = runs(args, api_url, console)
    finally:
        server.terminate()
        server.wait(timeout=30)

    table = Table(title=f"Training flow vs universe size ({os.cpu_count()} cores, models {args.models})")
    columns = ["symbols", "runner", "candles", "wall s", "flow s", "fits s", "fit s (sum)", "peak MB"]
    for col in columns:
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(
            str(r["symbols"]), r["runner"], f"{r['rows']:,}", f"{r['wall_s']:.0f}", f"{r['flow_s']:.0f}",
            f"{r['stages_s'].get('fit', 0):.0f}", f"{r['fit_s_total']:.0f}", f"{r['peak_rss_mb']:.0f}",
        )  # fmt: skip
    console.print(table)
    console.print(f"wrote {save(args, rows).relative_to(ROOT)}")


if __name__ == "__main__":
    main()
