"""``POST /api/predict`` latency at 1 and 20 concurrent clients, 10 symbols per request (goal p99 ≤ 250 ms).

The ten shared 1h pairs (``../shared/data/binance``; skipped, saying so, when absent), a small
XGBoost + LightGBM champion, and ``qt serve`` in its own process (uvicorn, as a user runs it);
clients are threads with their own HTTP session. Measured: the first request (loads the
champion and computes features), requests between bars (the prediction cache answers),
and the request right after a new bar was stored (features and P(up) computed again).

    .venv/bin/python bench/api.py [--requests 400]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import requests  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from bench import shared_candles, train_champion, write_results  # noqa: E402

HISTORY = 3000
NEW_BARS = 5


def _post(session: requests.Session, url: str, symbols: list[str]) -> float:
    began = time.perf_counter()
    answer = session.post(f"{url}/api/predict", json={"symbols": symbols}, timeout=60)
    answer.raise_for_status()
    return time.perf_counter() - began


def _load(url: str, symbols: list[str], clients: int, total: int) -> list[float]:
    sessions = [requests.Session() for _ in range(clients)]

    def client(i: int) -> list[float]:
        return [_post(sessions[i], url, symbols) for _ in range(total // clients)]

    with ThreadPoolExecutor(clients) as pool:
        return [s for part in pool.map(client, range(clients)) for s in part]


def main() -> None:
    """Build a home, train, serve, measure."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=400, help="requests per concurrency level")
    args = parser.parse_args()
    candles = shared_candles(HISTORY + NEW_BARS)
    if candles is None:
        return

    from core.settings import configure_environment, load_settings
    from tasks.features.dataset import features_from_store
    from tasks.store import CandleStore
    from tests.conftest import free_port

    results: dict[str, object] = {"symbols_per_request": len(candles), "requests": args.requests}
    with tempfile.TemporaryDirectory() as tmp:
        settings = load_settings(Path(tmp) / "home")
        configure_environment(settings)
        store = CandleStore(settings.store_dir)
        later = {}
        for symbol, frame in candles.items():
            store.upsert(symbol, "1h", "spot", frame.iloc[:-NEW_BARS])
            later[symbol] = frame.iloc[-NEW_BARS:]
        symbols = sorted(later)
        matrix = features_from_store(store, symbols, "1h")
        train_champion(settings, matrix, matrix["open_time"].max() - pd.Timedelta(days=1), days=20)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = {**os.environ, "QT_HOME": str(settings.home)}
        server = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "serve", "--port", str(port)], cwd=ROOT, env=env,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            for _ in range(600):
                try:
                    requests.get(f"{url}/openapi.json", timeout=5).raise_for_status()
                    break
                except requests.ConnectionError:
                    time.sleep(0.1)
            session = requests.Session()
            results["first_request_s"] = _post(session, url, symbols)
            for clients in (1, 20):
                seconds = _load(url, symbols, clients, args.requests)
                results[f"{clients}_clients"] = {
                    "p50_ms": float(np.percentile(seconds, 50) * 1000),
                    "p99_ms": float(np.percentile(seconds, 99) * 1000),
                    "requests_per_s": len(seconds) / max(sum(seconds) / clients, 1e-9),
                }
            after_bar = []
            for i in range(NEW_BARS):
                for symbol, rows in later.items():
                    store.upsert(symbol, "1h", "spot", rows.iloc[i : i + 1])
                after_bar.append(_post(session, url, symbols))
            results["after_new_bar_ms"] = {
                "mean": float(np.mean(after_bar) * 1000), "max": float(np.max(after_bar) * 1000),
            }  # fmt: skip
        finally:
            server.terminate()
            server.wait(20)

    table = Table(title=f"POST /api/predict, {len(symbols)} symbols per request, qt serve on 127.0.0.1")
    for column in ("clients", "p50 ms", "p99 ms", "requests/s"):
        table.add_column(column, justify="right")
    for clients in (1, 20):
        row = results[f"{clients}_clients"]
        assert isinstance(row, dict)
        table.add_row(
            str(clients), f"{row['p50_ms']:.1f}", f"{row['p99_ms']:.1f}", f"{row['requests_per_s']:.0f}"
        )
    Console().print(table)
    bar = results["after_new_bar_ms"]
    assert isinstance(bar, dict)
    print(
        f"first request (loads the champion, computes features): {results['first_request_s']:.2f} s; "
        f"first request after a new bar: mean {bar['mean']:.0f} ms, max {bar['max']:.0f} ms"
    )
    write_results("api", results)


if __name__ == "__main__":
    main()
