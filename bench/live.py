"""Live tick latency for 10 and 50 symbols, the model reload, and Prefect's flow-run overhead.

The ten shared 1h pairs (``../shared/data/binance``; skipped, saying so, when absent) and,
for 50 symbols, the same candles under four more names each. A small ensemble
(XGBoost + LightGBM) is trained before the replayed stretch and registered as champion;
each tick of the replay is a bar closing on the local exchange: candles fetched by the
real python-binance client and validated by Great Expectations, exits, features, P(up),
the strategy, the paper broker, the journal. Every tick's phases are timed.

    .venv/bin/python bench/live.py [--ticks 8]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from bench import shared_candles, train_champion, write_results  # noqa: E402

HISTORY = 3000  # candles per symbol in the store before the replay (training needs ~70 days)
PHASES = ("model", "candles", "exits", "predict", "execute", "reconcile")


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def main() -> None:
    """Build a home, train, then time replays at 10 and 50 symbols."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ticks", type=int, default=8, help="ticks (bars) per universe size")
    args = parser.parse_args()
    candles = shared_candles(HISTORY + args.ticks)
    if candles is None:
        return

    from core.settings import configure_environment, load_settings
    from model_registry.registry import load_ensemble, register, set_alias
    from serving.live import LiveConfig, ModelCache
    from serving.replay import replay
    from tasks.features.dataset import features_from_store
    from tasks.store import CandleStore

    results: dict[str, object] = {"ticks": args.ticks, "history_candles": HISTORY}
    with tempfile.TemporaryDirectory() as tmp:
        settings = load_settings(Path(tmp) / "home")
        configure_environment(settings)
        store = CandleStore(settings.store_dir)
        base = candles
        for copy in range(5):
            for symbol, frame in base.items():
                name = symbol if copy == 0 else symbol.replace("USDT", f"{copy}USDT")
                store.upsert(name, "1h", "spot", frame)
        ten = tuple(base)
        fifty = tuple(store.symbols("1h", "spot"))
        start = min(f.index[-args.ticks] for f in base.values())
        matrix = features_from_store(store, list(ten), "1h")
        ensemble = train_champion(settings, matrix, start, days=20)

        for label, universe in (("10 symbols", ten), ("50 symbols", fifty)):
            summary, _ = replay(settings, LiveConfig(universe, "1h", "spot"), "paper", start, None)
            ticks = summary.tick_seconds[1:]  # the first tick loads the model and warms imports
            results[label] = {
                "tick_p50_s": _percentile(ticks, 50),
                "tick_p99_s": _percentile(ticks, 99),
                "first_tick_s": summary.tick_seconds[0],
                "errors": summary.errors[:3],
            }
            results[label]["phases_mean_s"] = summary.phase_means()  # type: ignore[index]

        version = register(settings, ensemble, matrix.tail(2))
        cache = ModelCache(settings, "1h", "spot")
        cache.current()
        set_alias(settings, "1h", "champion", version)
        began = time.perf_counter()
        cache.current()
        results["model_reload_s"] = time.perf_counter() - began
        began = time.perf_counter()
        for _ in range(20):
            cache.current()
        results["alias_resolution_s"] = (time.perf_counter() - began) / 20
        began = time.perf_counter()
        load_ensemble(settings, "1h", version)
        results["model_load_from_mlflow_s"] = time.perf_counter() - began
        results["prefect"] = _prefect_overhead(settings, list(ten))

    table = Table(title=f"Live tick latency ({args.ticks} bars, paper broker, local exchange)")
    for column in ("universe", "tick p50 s", "tick p99 s", "first tick s", *PHASES):
        table.add_column(column, justify="right")
    for label in ("10 symbols", "50 symbols"):
        row = results[label]
        assert isinstance(row, dict)
        means = row["phases_mean_s"]
        figures = [f"{row[k]:.2f}" for k in ("tick_p50_s", "tick_p99_s", "first_tick_s")]
        table.add_row(label, *figures, *(f"{means.get(p, 0.0):.3f}" for p in PHASES))
    Console().print(table)
    print(
        f"model reload (new champion version): {results['model_reload_s']:.2f} s; "
        f"alias resolution: {results['alias_resolution_s'] * 1000:.1f} ms; "
        f"load from MLflow: {results['model_load_from_mlflow_s']:.2f} s"
    )
    prefect = results["prefect"]
    assert isinstance(prefect, dict)
    print(
        f"Prefect flow run of one idle tick (10 symbols, server warm): {prefect['flow_run_s']:.2f} s; "
        f"the same tick called directly: {prefect['direct_tick_s']:.2f} s"
    )
    write_results("live", results)


def _prefect_overhead(settings: object, symbols: list[str]) -> dict[str, float]:
    """One idle tick (no new bar) as a Prefect flow run, and called directly, against the local exchange."""
    import os

    from core.settings import load_settings
    from flows.live import build_loop, live_flow
    from infra.exchange import FakeExchange
    from tasks.store import CandleStore

    home = settings.home  # type: ignore[attr-defined]
    store = CandleStore(home / "store")
    newest = max(span[1] for s in symbols if (span := store.time_range(s, "1h", "spot")) is not None)
    with FakeExchange(now_ms=int((newest + pd.Timedelta(hours=1)).value // 1_000_000)) as exchange:
        for symbol in symbols:
            exchange.add_candles(symbol, "1h", store.read(symbol, "1h", "spot"))
        os.environ["QT_BINANCE_SPOT_URL"] = exchange.spot_url
        live_flow(home=str(home), symbols=symbols)  # starts the ephemeral server; decides the newest bar
        began = time.perf_counter()
        live_flow(home=str(home), symbols=symbols)
        flow_s = time.perf_counter() - began
        loop = build_loop(load_settings(home), "paper", "spot", None, symbols)
        began = time.perf_counter()
        loop.tick()
        direct_s = time.perf_counter() - began
    return {"flow_run_s": flow_s, "direct_tick_s": direct_s, "overhead_s": flow_s - direct_s}


if __name__ == "__main__":
    main()
