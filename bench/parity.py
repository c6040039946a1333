"""Backtest ↔ live parity: a stretch of the bundled sample replayed through the live loop and backtested.

A small ensemble (XGBoost + LightGBM) is trained on the five bundled pairs before the
stretch and registered as champion. The stretch is then (1) replayed through the live loop
(paper broker, the local exchange serving the candles bar by bar, the real python-binance
client) and (2) run through the backtest with exits (``tasks/strategy/simulate.py``) on
the same candles with the same model's P(up). The table compares trades, their net P&L,
the open positions and the equity curve. The strategy enters on any call (policy
thresholds 0) so the stretch has trades to compare; the registered policy rarely trades.

    .venv/bin/python bench/parity.py [--hours 96]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pandas as pd  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from bench import train_champion, write_results  # noqa: E402


def main() -> None:
    """Train, replay, backtest, compare."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hours", type=int, default=96, help="bars replayed (1h)")
    args = parser.parse_args()

    from core.settings import configure_environment, load_settings
    from serving.journal import Journal, report
    from serving.journal import models as db
    from serving.live import LiveConfig
    from serving.replay import backtest_of, replay
    from tasks.features.dataset import features_from_store
    from tasks.ingest import ingest_files
    from tasks.ingest.sample import sample_paths
    from tasks.store import CandleStore
    from tasks.strategy.engine import Strategy
    from tasks.strategy.policy import Policy

    hour = pd.Timedelta(hours=1)
    with tempfile.TemporaryDirectory() as tmp:
        settings = load_settings(Path(tmp) / "home")
        configure_environment(settings)
        paths = sample_paths(None, "1h")
        for path in paths:
            ingest_files(path.name.split("-")[0], "1h", "spot", [path], "sample", settings)
        store = CandleStore(settings.store_dir)
        symbols = tuple(store.symbols("1h", "spot"))
        newest = min(span[1] for s in symbols if (span := store.time_range(s, "1h", "spot")) is not None)
        start, end = newest - (args.hours + 1) * hour, newest - 2 * hour
        matrix = features_from_store(store, None, "1h")
        ensemble = train_champion(settings, matrix, start, days=60)

        strategy = Strategy(policy=Policy(enter=0.0, exit=0.0, allow_short=False))
        began = time.perf_counter()
        config = LiveConfig(symbols, "1h", "spot", strategy, model_policy=False)
        summary, home = replay(settings, config, "paper", start, end)
        replay_s = time.perf_counter() - began
        journal = Journal.open(home)

        began = time.perf_counter()
        sim = backtest_of(settings, ensemble, config, start, end)
        backtest_s = time.perf_counter() - began

        live_trades = report.trades(journal)
        pairs = list(zip(live_trades, sim.trades, strict=False))
        same = [
            a["symbol"] == b.symbol and abs(float(a["quantity"]) - b.quantity) < 1e-9
            and pd.Timestamp(a["closed_at"]) == b.exit_time
            for a, b in pairs
        ]  # fmt: skip
        net_gap = max((abs(float(a["net_pnl"]) - b.net) for a, b in pairs), default=0.0)
        equity = journal.read(
            lambda s: [float(e.equity) for e in s.query(db.EquitySnapshot).order_by(db.EquitySnapshot.time)]
        )
        equity_gap = max(
            (abs(x - y) for x, y in zip(equity, sim.equity.to_list(), strict=False)), default=0.0
        )
        held_live = sorted((p.symbol, float(p.quantity)) for p in journal.open_positions())
        held_sim = sorted((s, h.quantity) for s, h in sim.open_positions.items())
        document = {
            "bars": args.hours,
            "symbols": list(symbols),
            "from": str(start),
            "to": str(end),
            "trades_live": len(live_trades),
            "trades_backtest": len(sim.trades),
            "trades_identical": sum(same),
            "max_abs_net_pnl_gap_usdt": net_gap,
            "max_abs_equity_gap_usdt": equity_gap,
            "final_equity_live": equity[-1] if equity else None,
            "final_equity_backtest": float(sim.equity.iloc[-1]),
            "open_positions_identical": len(held_live) == len(held_sim)
            and all(
                a[0] == b[0] and abs(a[1] - b[1]) < 1e-9 for a, b in zip(held_live, held_sim, strict=True)
            ),
            "replay_seconds": replay_s,
            "backtest_seconds": backtest_s,
            "tick_p50_s": sorted(summary.tick_seconds)[len(summary.tick_seconds) // 2],
        }
    table = Table(title=f"Parity: {args.hours} bars × {len(symbols)} pairs, replay vs backtest")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for key, value in document.items():
        if key not in ("symbols",):
            table.add_row(key, f"{value:.6g}" if isinstance(value, float) else str(value))
    Console().print(table)
    write_results("parity", document)


if __name__ == "__main__":
    main()
