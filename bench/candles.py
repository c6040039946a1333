"""The live tick's candles phase alone: fetch, one GX run and store for 10 symbols, one new bar each.

The bundled sample's five 1h pairs, each also under a second name (10 symbols, the newest
3,000 candles), served bar by bar by the local exchange to the real python-binance client;
each tick is :func:`serving.live.update_candles`. Ticks alternate between preparing the
batches for GX stacked (:func:`tasks.validate.prepare_many`, the default) and one by one
(what it replaced), so both see the same machine load. Prints a table and writes
bench/results/candles.json.

    .venv/bin/python bench/candles.py [--ticks 24]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from bench import write_results  # noqa: E402

HISTORY = 3000
PAIRS = ["BTCUSDT", "ETHUSDT", "SOLUSDT", "XRPUSDT", "BNBUSDT"]


def main() -> None:
    """Store the history, then time ticks of both variants, alternating."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ticks", type=int, default=24, help="ticks per variant")
    args = parser.parse_args()

    import tasks.validate as validate
    from core.candles import to_store_frame
    from core.settings import configure_environment, load_settings
    from infra.exchange import FakeExchange
    from serving.live import LiveConfig, update_candles
    from tasks.ingest.binance import BinanceKlineSource
    from tasks.ingest.files import read_candle_file
    from tasks.ingest.sample import sample_paths
    from tasks.store import CandleStore

    stacked = validate.prepare_many
    variants = {
        "stacked (prepare_many)": stacked,
        "one by one (prepare per batch)": lambda batches: [validate.prepare(b, c) for b, c in batches],
    }
    ticks = 2 * args.ticks + 2
    with tempfile.TemporaryDirectory() as tmp:
        settings = load_settings(Path(tmp) / "home")
        configure_environment(settings)
        store = CandleStore(settings.store_dir)
        raws = {}
        for path in sample_paths(PAIRS, "1h"):
            raw = read_candle_file(path).drop(columns=["source_file", "source_row"]).tail(HISTORY)
            symbol = path.name.split("-")[0]
            raws[symbol] = raws[symbol.replace("USDT", "2USDT")] = raw.reset_index(drop=True)
        for symbol, raw in raws.items():
            store.upsert(symbol, "1h", "spot", to_store_frame(raw.iloc[:-ticks]))
        newest = min(int(raw["open_time"].iloc[-ticks - 1]) for raw in raws.values())
        config = LiveConfig(tuple(raws), "1h", "spot")
        seconds: dict[str, list[float]] = {name: [] for name in variants}
        with FakeExchange(now_ms=newest + 3_600_000) as exchange:
            for symbol, raw in raws.items():
                exchange.add_candles(symbol, "1h", raw, market="spot")
            source = BinanceKlineSource(settings, "spot", client=exchange.client())
            for tick in range(ticks):
                name = list(variants)[tick % len(variants)]
                validate.prepare_many = variants[name]  # type: ignore[assignment]
                exchange.now_ms = newest + (tick + 2) * 3_600_000 + 1_000  # one more bar has closed
                began = time.perf_counter()
                errors = update_candles(settings, source, config)
                if errors:
                    raise SystemExit(f"tick {tick}: {errors}")
                if tick >= 2:  # the first two warm imports and GX's suites
                    seconds[name].append(time.perf_counter() - began)
        validate.prepare_many = stacked
    table = Table(
        title=f"Candles phase of a tick, {len(raws)} symbols, one new bar each ({args.ticks} ticks)"
    )
    for column in ("preparing the batches", "median s", "p90 s", "max s"):
        table.add_column(column, justify="left" if column.startswith("prep") else "right")
    results = {}
    for name, values in seconds.items():
        ordered = sorted(values)
        figures = {"median_s": statistics.median(values), "p90_s": ordered[int(0.9 * (len(ordered) - 1))],
                   "max_s": ordered[-1], "ticks": len(values)}  # fmt: skip
        results[name] = figures
        table.add_row(name, *(f"{figures[k]:.3f}" for k in ("median_s", "p90_s", "max_s")))
    Console().print(table)
    write_results("candles", {"symbols": len(raws), "history_candles": HISTORY, "variants": results})


if __name__ == "__main__":
    main()
