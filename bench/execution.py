"""Execution benchmark: protected entries and reconcile, Binance broker (local exchange) vs. paper.

For 10 symbols, each round on a fresh exchange and a fresh journal (SQLite, WAL, synchronous=FULL):

* ``place_protected``: market entry + stop (closePosition) + 2 take-profits, one symbol;
* ``reconcile`` right after it (the round's 1..10 positions so far), and the two together
  ("place + protect + reconcile", one symbol's full cycle);
* ``reconcile`` with all 10 positions protected (nothing to do, 10 calls a round);
* ``reconcile`` repairing one vanished stop (each symbol once a round).

The Binance broker is the real python-binance client over HTTP to ``infra.exchange.FakeExchange``
on loopback; the paper broker is the journal only. Every call is instrumented: HTTP requests
and their time (the client's ``requests`` session), journal transactions and their time, SQL
statements. Candles: the 10 shared 1h pairs (../shared/data/binance), else the 5 bundled sample
pairs registered twice under 10 names (printed). Prints two tables and writes
bench/results/execution.json.

    .venv/bin/python bench/execution.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402
from sqlalchemy import event  # noqa: E402

from bench import write_results  # noqa: E402
from infra.exchange import FakeExchange  # noqa: E402
from serving.brokers.base import ProtectedEntry, SymbolRules, client_order_id  # noqa: E402
from serving.brokers.binance import BinanceBroker  # noqa: E402
from serving.brokers.paper import PaperBroker  # noqa: E402
from serving.journal import Journal  # noqa: E402
from tasks.ingest.files import read_candle_file  # noqa: E402

SHARED = ROOT.parent / "shared" / "data" / "binance"
SAMPLE = ROOT / "tasks" / "ingest" / "sample_data"
SYMBOLS = 10
START = 3000  # the entries' bar: this many common candles in (as tests/test_broker_contract.py)
BEFORE, AFTER = 100, 500  # candles served around it
NOTIONAL = Decimal("600")  # per entry: take-profit legs (30 %) stay above LOT_SIZE / MIN_NOTIONAL
HOUR = 3_600_000
OPS = (
    "place_protected",
    "reconcile after entry (1..10 pos.)",
    "place + protect + reconcile",
    "reconcile no-op (10 pos.)",
    "reconcile repair (1 stop gone)",
)


# -- measuring ------------------------------------------------------------------------------
@dataclass
class Counters:
    """Running totals the probes add to."""

    http: int = 0
    http_s: float = 0.0
    writes: int = 0
    reads: int = 0
    journal_s: float = 0.0
    sql: int = 0

    def snapshot(self) -> tuple[int, float, int, int, float, int]:
        return self.http, self.http_s, self.writes, self.reads, self.journal_s, self.sql


@dataclass
class Samples:
    """Per operation: wall seconds and the counters' deltas of every call."""

    wall: list[float] = field(default_factory=list)
    deltas: list[tuple[float, ...]] = field(default_factory=list)


def _instrument(journal: Journal, counters: Counters, client: Any = None) -> None:
    """Count (and time) journal transactions, SQL statements and, for a client, HTTP requests."""
    transaction, read = journal.transaction, journal.read

    @contextmanager
    def timed_transaction() -> Iterator[Any]:
        began = time.perf_counter()
        try:
            with transaction() as session:
                yield session
        finally:
            counters.writes += 1
            counters.journal_s += time.perf_counter() - began

    def timed_read(question: Callable[[Any], Any]) -> Any:
        began = time.perf_counter()
        try:
            return read(question)
        finally:
            counters.reads += 1
            counters.journal_s += time.perf_counter() - began

    journal.transaction = timed_transaction  # type: ignore[method-assign]
    journal.read = timed_read  # type: ignore[method-assign]

    def count_sql(*_: Any) -> None:
        counters.sql += 1

    event.listen(journal.engine, "before_cursor_execute", count_sql)
    if client is None:
        return
    request = client.session.request

    def timed_request(*args: Any, **kwargs: Any) -> Any:
        began = time.perf_counter()
        try:
            return request(*args, **kwargs)
        finally:
            counters.http += 1
            counters.http_s += time.perf_counter() - began

    client.session.request = timed_request


class Recorder:
    """Times calls and keeps each one's counter deltas under an operation name."""

    def __init__(self, counters: Counters, samples: dict[str, Samples]) -> None:
        self.counters, self.samples = counters, samples

    def __call__(self, op: str, fn: Callable[[], Any]) -> tuple[Any, float, tuple[float, ...]]:
        before = self.counters.snapshot()
        began = time.perf_counter()
        result = fn()
        wall = time.perf_counter() - began
        delta = tuple(b - a for a, b in zip(before, self.counters.snapshot(), strict=True))
        self.samples[op].wall.append(wall)
        self.samples[op].deltas.append(delta)
        return result, wall, delta

    def add(self, op: str, wall: float, delta: tuple[float, ...]) -> None:
        self.samples[op].wall.append(wall)
        self.samples[op].deltas.append(delta)


# -- market ---------------------------------------------------------------------------------
def _load_candles() -> tuple[dict[str, pd.DataFrame], str]:
    """10 symbols' 1h kline frames (int-ms times), aligned on common open times; the source in words."""
    files = sorted(SHARED.glob("*-1h.csv"))
    if len(files) >= SYMBOLS:
        pairs = {f.name.split("-")[0]: f for f in files[:SYMBOLS]}
        source = f"{SYMBOLS} shared pairs ({SHARED})"
        names = {sym: sym for sym in pairs}
    else:
        pairs = {f.name.split("-")[0]: f for f in sorted(SAMPLE.glob("*-1h.zip"))}
        base = list(pairs)
        names = {}
        for i in range(SYMBOLS):
            pair = base[i % len(base)]
            alias = pair if i < len(base) else pair.replace("USDT", f"{i // len(base) + 1}USDT")
            names[alias] = pair
        source = (
            f"{len(base)} bundled sample pairs registered under {SYMBOLS} symbol names "
            f"({', '.join(f'{a}={p}' for a, p in names.items() if a != p)}); "
            f"{SHARED} has {len(files)} 1h files, not {SYMBOLS}"
        )
        print(f"note: {source}", file=sys.stderr)
    raw = {
        pair: read_candle_file(path).drop(columns=["source_file", "source_row"])
        for pair, path in pairs.items()
    }
    common = sorted(set.intersection(*(set(frame["open_time"].astype("int64")) for frame in raw.values())))
    start = int(common[START])
    low, high = start - BEFORE * HOUR, start + AFTER * HOUR
    frames = {}
    for alias, pair in names.items():
        frame = raw[pair]
        window = frame[(frame["open_time"] >= low) & (frame["open_time"] < high)]
        frames[alias] = window.reset_index(drop=True)
    return frames, source


def _start_time(frames: dict[str, pd.DataFrame]) -> int:
    return int(next(iter(frames.values()))["open_time"].iloc[BEFORE])


def _open_at(frame: pd.DataFrame, at: int) -> Decimal:
    return Decimal(str(frame.loc[frame["open_time"] == at, "open"].iloc[0]))


def _exchange(frames: dict[str, pd.DataFrame], at: int) -> FakeExchange:
    exchange = FakeExchange(now_ms=at, taker_bps=4, quote_balance=100_000.0)
    for symbol, frame in frames.items():
        exchange.add_candles(symbol, "1h", frame, market="futures")
    return exchange


def _rules(exchange: FakeExchange, symbols: list[str]) -> dict[str, SymbolRules]:
    """The exchange's default futures filters (they scale with the price level), for both brokers."""
    out = {}
    for symbol in symbols:
        f = exchange.filters(symbol, "futures")
        out[symbol] = SymbolRules(symbol, f.tick_size, f.step_size, f.min_qty, f.min_notional)
    return out


def _entry(symbol: str, price: Decimal, rules: SymbolRules, bar_time: pd.Timestamp) -> ProtectedEntry:
    """Long, ~NOTIONAL USDT, stop 2 % below, take-profits +2 % / +4 % of 30 % each."""
    size = rules.round_quantity(NOTIONAL / price)
    leg = rules.round_quantity(size * Decimal("0.3"))
    if leg < rules.min_qty or leg * price < rules.min_notional:
        raise SystemExit(f"{symbol}: a take-profit of {leg} at {price} is below the filters {rules}")
    return ProtectedEntry(
        symbol, "long", size, price * Decimal("0.98"),
        ((price * Decimal("1.02"), leg), (price * Decimal("1.04"), leg)),
        bar_time, price,
    )  # fmt: skip


# -- one round per broker -------------------------------------------------------------------
def _drive(
    broker: Any,
    record: Recorder,
    entries: list[ProtectedEntry],
    remove_stop: Callable[[str, str], object],
) -> None:
    for entry in entries:
        _, place_s, place_d = record(OPS[0], lambda e=entry: broker.place_protected(e))  # type: ignore[misc]
        report, rec_s, rec_d = record(OPS[1], broker.reconcile)
        assert report.unprotected_positions == 0 and not report.missing_stops, report
        record.add(OPS[2], place_s + rec_s, tuple(a + b for a, b in zip(place_d, rec_d, strict=True)))
    for _ in range(len(entries)):
        report, _, _ = record(OPS[3], broker.reconcile)
        assert len(report.positions) == len(entries) and not report.missing_stops, report
    for entry in entries:
        remove_stop(entry.symbol, client_order_id(entry.symbol, entry.bar_time, "stop"))
        report, _, _ = record(OPS[4], broker.reconcile)
        assert report.missing_stops == [entry.symbol] and report.unprotected_positions == 0, report


def _binance_round(
    frames: dict[str, pd.DataFrame], at: int, journal: Journal, samples: dict[str, Samples]
) -> dict[str, int]:
    counters = Counters()
    with _exchange(frames, at) as exchange:
        client = exchange.client(timeout_s=5.0)
        broker = BinanceBroker(client, journal)
        _instrument(journal, counters, client)
        bar = pd.Timestamp(at, unit="ms", tz="UTC")
        entries = [_entry(s, _open_at(f, at), broker.rules[s], bar) for s, f in frames.items()]
        _drive(broker, Recorder(counters, samples), entries, lambda _s, cid: exchange.vanish(cid))
        entry_orders = sum(o.client_id.endswith("-entry") for o in exchange.orders("futures"))
        positions = len(broker.positions())
        assert entry_orders == positions == len(entries), (entry_orders, positions)
        return {"http_requests": len(exchange.requests), "entries": entry_orders}


def _paper_round(
    frames: dict[str, pd.DataFrame],
    at: int,
    rules: dict[str, SymbolRules],
    journal: Journal,
    samples: dict[str, Samples],
) -> None:
    counters = Counters()
    broker = PaperBroker(journal, "futures", rules, cash=Decimal("100000"), fee_bps=4, slippage_bps=0)
    _instrument(journal, counters)
    bar = pd.Timestamp(at, unit="ms", tz="UTC")
    entries = []
    for symbol, frame in frames.items():
        price = _open_at(frame, at)
        broker.set_price(symbol, price)
        entries.append(_entry(symbol, price, rules[symbol], bar))
    _drive(broker, Recorder(counters, samples), entries, lambda s, cid: broker.cancel_order(s, cid))
    assert len(broker.positions()) == len(entries)


# -- report ---------------------------------------------------------------------------------
def _summary(samples: Samples) -> dict[str, float]:
    ms = np.array(samples.wall) * 1000
    d = np.array(samples.deltas).mean(axis=0)
    return {
        "n": len(ms),
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2),
        "mean_ms": round(float(ms.mean()), 2),
        "max_ms": round(float(ms.max()), 2),
        "http_requests": round(float(d[0]), 1),
        "http_ms": round(float(d[1]) * 1000, 2),
        "journal_write_tx": round(float(d[2]), 1),
        "journal_read_tx": round(float(d[3]), 1),
        "journal_ms": round(float(d[4]) * 1000, 2),
        "sql_statements": round(float(d[5]), 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    rounds = parser.parse_args().rounds
    frames, source = _load_candles()
    at = _start_time(frames)
    symbols = list(frames)
    rules = _rules(_exchange(frames, at), symbols)
    samples = {b: {op: Samples() for op in OPS} for b in ("binance", "paper")}
    began = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        warm = {b: {op: Samples() for op in OPS} for b in ("binance", "paper")}  # imports, first connections
        two = dict(list(frames.items())[:2])
        _binance_round(two, at, Journal(f"sqlite:///{Path(tmp) / 'warm-b.db'}"), warm["binance"])
        _paper_round(two, at, rules, Journal(f"sqlite:///{Path(tmp) / 'warm-p.db'}"), warm["paper"])
        per_round: list[dict[str, int]] = []
        for r in range(rounds):
            journal = Journal(f"sqlite:///{Path(tmp) / f'binance-{r}.db'}")
            per_round.append(_binance_round(frames, at, journal, samples["binance"]))
            journal.close()
            journal = Journal(f"sqlite:///{Path(tmp) / f'paper-{r}.db'}")
            _paper_round(frames, at, rules, journal, samples["paper"])
            journal.close()
    total_s = time.perf_counter() - began

    results: dict[str, Any] = {
        "symbols": symbols,
        "candles": source,
        "bar_time": pd.Timestamp(at, unit="ms", tz="UTC").isoformat(),
        "rounds": rounds,
        "http_requests_per_round": per_round[0]["http_requests"] if per_round else 0,
        "total_s": round(total_s, 1),
        "machine": f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}",
        "operations": {op: {b: _summary(samples[b][op]) for b in samples} for op in OPS},
    }
    title = f"Execution benchmark ({len(symbols)} symbols × {rounds} rounds)"
    table = Table(title=title, title_justify="left")
    for name, justify in (("operation", "left"), ("broker", "left"), ("n", "right"), ("p50 ms", "right")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    table.add_column("p99 ms", justify="right")
    where = Table(title="Where the time goes (mean per call)", title_justify="left")
    for name in (
        "operation",
        "broker",
        "HTTP req",
        "HTTP ms",
        "journal tx w/r",
        "journal ms",
        "SQL",
        "rest ms",
    ):
        where.add_column(name, justify="left" if name in ("operation", "broker") else "right")
    for op in OPS:
        for b in ("binance", "paper"):
            s = results["operations"][op][b]
            table.add_row(op, b, str(s["n"]), f"{s['p50_ms']:.1f}", f"{s['p99_ms']:.1f}")
            rest = s["mean_ms"] - s["http_ms"] - s["journal_ms"]
            where.add_row(
                op, b, f"{s['http_requests']:.1f}", f"{s['http_ms']:.1f}",
                f"{s['journal_write_tx']:.1f}/{s['journal_read_tx']:.1f}", f"{s['journal_ms']:.1f}",
                f"{s['sql_statements']:.0f}", f"{rest:.1f}",
            )  # fmt: skip
    console = Console(width=max(Console().width, 120))
    console.print(table)
    console.print(where)
    print(f"candles: {source}")
    print(f"total {total_s:.1f} s; fresh exchange + journal (SQLite WAL, synchronous=FULL) a round")
    write_results("execution", results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
