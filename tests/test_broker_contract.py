"""One contract, three brokers: paper, Binance futures and Binance spot (the real python-binance
client, local exchange).

Each broker is driven over the same real BTC candles; ``advance`` closes the current candle
(paper: :meth:`PaperBroker.on_bar`; Binance: the exchange clock moves to the next open).
Spot holds a little less than it bought (the fee is paid in BTC) and protects with OCOs.
Then the Binance broker's own faults: every one ends with 0 duplicate entries, 0
unprotected positions and a consistent journal.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from infra.exchange import FakeExchange, Fault
from serving.brokers.base import OrderRefusedError, ProtectedEntry, SymbolRules
from serving.brokers.binance import BinanceBroker
from serving.brokers.binance_spot import BinanceSpotBroker
from serving.brokers.paper import PaperBroker
from serving.journal import Journal
from serving.journal import models as db
from tasks.fills import Bar, InvalidExitError

START = 3000
HOUR = 3_600_000
RULES = {
    "BTCUSDT": SymbolRules("BTCUSDT", Decimal("0.1"), Decimal("0.001"), Decimal("0.001"), Decimal("100"))
}


@dataclass
class Venue:
    """A broker and the means to move its market one candle on."""

    name: str
    broker: Any
    candles: pd.DataFrame
    exchange: FakeExchange | None = None
    bar: int = START
    market: str = "futures"
    #: what a 0.010 BTC entry leaves held (spot: less the fee paid in BTC, on the step grid)
    held: Decimal = Decimal("0.010")
    exit_kinds: tuple[str, ...] = ("stop_market", "take_profit_market", "take_profit_market")
    stop_kind: str = "stop_market"

    def price(self) -> Decimal:
        return Decimal(str(self.candles["open"].iloc[self.bar]))

    def bar_time(self) -> pd.Timestamp:
        return pd.Timestamp(int(self.candles["open_time"].iloc[self.bar]), unit="ms", tz="UTC")

    def advance(self) -> None:
        row = self.candles.iloc[self.bar]
        if self.exchange is not None:
            self.exchange.now_ms = int(self.candles["open_time"].iloc[self.bar + 1])
        else:
            bar = Bar(float(row["open"]), float(row["high"]), float(row["low"]), float(row["close"]))
            self.broker.on_bar("BTCUSDT", self.bar_time(), bar)
            self.broker.set_price("BTCUSDT", Decimal(str(self.candles["open"].iloc[self.bar + 1])))
        self.bar += 1

    def entry(self, side: str = "long", quantity: str = "0.010", stop_pct: str = "2") -> ProtectedEntry:
        price, sign = self.price(), Decimal(1 if side == "long" else -1)
        size = Decimal(quantity)
        return ProtectedEntry(
            "BTCUSDT", side, size, price * (1 - sign * Decimal(stop_pct) / 100),  # type: ignore[arg-type]
            ((price * (1 + sign * Decimal("0.02")), size * Decimal("0.3")),
             (price * (1 + sign * Decimal("0.04")), size * Decimal("0.3"))),
            self.bar_time(), price,
        )  # fmt: skip


@pytest.fixture
def candles(btc_raw: pd.DataFrame) -> pd.DataFrame:
    return btc_raw.iloc[: START + 600].reset_index(drop=True)


@pytest.fixture
def exchange(candles: pd.DataFrame) -> Iterator[FakeExchange]:
    ex = FakeExchange(now_ms=int(candles["open_time"].iloc[START]), taker_bps=4)
    ex.add_candles("BTCUSDT", "1h", candles, market="futures")
    ex.add_candles("BTCUSDT", "1h", candles, market="spot")
    with ex:
        yield ex


@pytest.fixture
def journal(tmp_path: Path) -> Journal:
    return Journal(f"sqlite:///{tmp_path / 'journal.db'}")


@pytest.fixture(params=["paper", "binance", "binance-spot"])
def venue(request: pytest.FixtureRequest, candles: pd.DataFrame, journal: Journal) -> Venue:
    if request.param == "paper":
        paper = PaperBroker(journal, "futures", RULES, cash=Decimal("10000"), fee_bps=4, slippage_bps=0)
        paper.set_price("BTCUSDT", Decimal(str(candles["open"].iloc[START])))
        return Venue("paper", paper, candles)
    exchange = request.getfixturevalue("exchange")
    if request.param == "binance":
        return Venue("binance", BinanceBroker(exchange.client(timeout_s=1.0), journal), candles, exchange)
    spot = BinanceSpotBroker(exchange.client(timeout_s=1.0), journal)
    kinds = ("limit_maker", "limit_maker", "stop_loss_limit", "stop_loss_limit", "stop_loss_limit")
    return Venue(
        "binance-spot", spot, candles, exchange, market="spot", held=Decimal("0.00999"), exit_kinds=kinds,
        stop_kind="stop_loss_limit",
    )  # fmt: skip


def test_a_protected_entry_is_one_position_with_a_live_stop(venue: Venue) -> None:
    venue.broker.place_protected(venue.entry())
    [position] = venue.broker.positions()
    assert (position.symbol, position.side, position.quantity) == ("BTCUSDT", "long", venue.held)
    assert venue.broker.unprotected_positions() == 0
    kinds = sorted(o.type for o in venue.broker.open_orders("BTCUSDT"))
    assert kinds == list(venue.exit_kinds)


def test_the_same_decision_twice_sends_nothing_new(venue: Venue) -> None:
    venue.broker.place_protected(venue.entry())
    before = sorted(o.client_order_id for o in venue.broker.open_orders())
    venue.broker.place_protected(venue.entry())  # a retry, or a restart replaying the decision
    assert sorted(o.client_order_id for o in venue.broker.open_orders()) == before
    assert [p.quantity for p in venue.broker.positions()] == [venue.held]
    if venue.exchange is not None:
        entries = [o for o in venue.exchange.orders(venue.market) if o.client_id.endswith("-entry")]
        assert len(entries) == 1


def test_a_moved_stop_replaces_the_old_one_and_the_position_stays_protected(venue: Venue) -> None:
    venue.broker.place_protected(venue.entry())
    moved = (venue.price() * Decimal("0.995")).quantize(Decimal("0.1"))  # tighter, still below the price
    venue.broker.replace_stop("BTCUSDT", moved, venue.bar_time())
    stops = [o for o in venue.broker.open_orders("BTCUSDT") if o.type == venue.stop_kind]
    assert {o.stop_price for o in stops} == {moved}
    assert venue.broker.unprotected_positions() == 0
    assert [p.quantity for p in venue.broker.positions()] == [venue.held]


def test_a_signal_close_flattens_the_position_and_leaves_no_exit_resting(venue: Venue) -> None:
    """The policy turned: close at market (on spot the exits lock the coins: they go first)."""
    venue.broker.place_protected(venue.entry())
    venue.advance()
    closed = venue.broker.close_position("BTCUSDT", venue.bar_time(), "signal turned")
    assert closed is not None and closed.client_order_id.endswith("-exit")
    venue.broker.reconcile()
    assert venue.broker.positions() == []
    assert venue.broker.open_orders("BTCUSDT") == []
    assert venue.broker.close_position("BTCUSDT", venue.bar_time(), "again") is None  # nothing held
    if venue.exchange is not None:
        exits = [o for o in venue.exchange.orders(venue.market) if o.client_id.endswith("-exit")]
        assert len(exits) == 1


def test_exits_fill_as_candles_close_until_the_position_is_flat(venue: Venue) -> None:
    venue.broker.place_protected(venue.entry(stop_pct="1"))
    for _ in range(500):
        venue.advance()
        if not venue.broker.positions():
            break
    assert not venue.broker.positions()
    assert venue.broker.unprotected_positions() == 0


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        ({"symbol": "NOPEUSDT"}, OrderRefusedError, "unknown symbol"),
        ({"quantity": Decimal("0.000004")}, OrderRefusedError, "LOT_SIZE"),
        ({"stop": Decimal("999999")}, InvalidExitError, "must lie below the entry"),
    ],
)
def test_bad_input_is_refused_before_anything_is_sent(
    venue: Venue, change: dict[str, Any], error: type[Exception], message: str
) -> None:
    entry = ProtectedEntry(**{**venue.entry().__dict__, **change})
    with pytest.raises(error, match=message):
        venue.broker.place_protected(entry)
    assert not venue.broker.positions() and not venue.broker.open_orders()
    if venue.exchange is not None:
        assert venue.exchange.orders(venue.market) == []


def test_reconcile_replaces_a_stop_that_vanished(venue: Venue) -> None:
    venue.broker.place_protected(venue.entry())
    stop = next(o for o in venue.broker.open_orders() if o.type == venue.stop_kind)
    if venue.exchange is not None:
        venue.exchange.vanish(stop.client_order_id)
    else:
        venue.broker.cancel_order("BTCUSDT", stop.client_order_id)
    assert venue.broker.unprotected_positions() == 1
    report = venue.broker.reconcile()
    assert report.missing_stops == ["BTCUSDT"] and report.unprotected_positions == 0
    assert venue.broker.unprotected_positions() == 0
    if venue.exchange is not None:
        _record(
            "stop order vanished from the venue", venue.exchange, venue.broker, venue.broker.journal, True
        )


@pytest.mark.parametrize("market", ["futures", "spot"])
def test_the_journal_learns_the_venues_fills_and_fees(
    exchange: FakeExchange, journal: Journal, candles: pd.DataFrame, market: str
) -> None:
    """Exits fill on the venue, unseen; reconcile journals them from the venue's trades, fees included."""
    from serving.journal import report

    venue = _binance(exchange, journal, candles, market)
    venue.broker.place_protected(venue.entry(stop_pct="1"))
    [shown] = report.positions(journal, {})  # qt positions: the legs as the venue holds them
    assert shown["stop"] is not None and len(shown["take_profits"]) == 2
    while venue.broker.positions():
        venue.advance()
    venue.broker.reconcile()
    assert journal.open_positions() == [] and "new" not in _statuses(journal)
    [trade] = journal.read(lambda s: list(s.query(db.Position)))
    venue_fees = sum((f.fee for f in exchange.fills if f.market == market), Decimal(0))
    if (
        market == "spot"
    ):  # the buy's fee is in BTC: in the journal it is that BTC (and dust) at the fill price
        buy = next(f for f in exchange.fills if f.side == "BUY")
        kept = journal.read(lambda s: s.query(db.Fill).join(db.Order).filter(db.Order.leg == "entry").one())
        venue_fees += (buy.qty - kept.quantity) * buy.price - buy.fee
    journal_fees = journal.read(lambda s: sum((f.fee for f in s.query(db.Fill)), Decimal(0)))
    assert journal_fees == venue_fees
    [closed] = report.trades(journal)  # qt trades: every fill of the trade, its fees and R
    assert Decimal(closed["fees"]) == journal_fees and closed["r_multiple"] is not None
    sold = sum((f.qty * f.price for f in exchange.fills if f.side == "SELL"), Decimal(0))
    bought = sum((f.qty * f.price for f in exchange.fills if f.side == "BUY"), Decimal(0))
    if market == "futures":  # long then flat: P&L is what the sells brought in less what the buy cost
        assert trade.realised_pnl == sold - bought


def test_spot_is_long_only_and_sends_nothing_for_a_short(
    exchange: FakeExchange, journal: Journal, candles: pd.DataFrame
) -> None:
    venue = _binance(exchange, journal, candles, "spot")
    with pytest.raises(OrderRefusedError, match="long only"):
        venue.broker.place_protected(venue.entry("short"))
    assert exchange.orders("spot") == [] and _statuses(journal) == []


# -- Binance faults: 0 duplicate orders, 0 unprotected positions, a consistent journal --------
def _binance(
    exchange: FakeExchange, journal: Journal, candles: pd.DataFrame, market: str = "futures"
) -> Venue:
    if market == "futures":
        return Venue("binance", BinanceBroker(exchange.client(timeout_s=1.0), journal), candles, exchange)
    broker = BinanceSpotBroker(exchange.client(timeout_s=1.0), journal)
    return Venue("binance-spot", broker, candles, exchange, market="spot", held=Decimal("0.00999"))


def _statuses(journal: Journal) -> list[str]:
    return journal.read(lambda s: [o.status for o in s.query(db.Order)])


def _entries(exchange: FakeExchange, market: str = "futures") -> int:
    return sum(o.client_id.endswith("-entry") for o in exchange.orders(market))


FAULTS: list[dict[str, Any]] = []


def _record(
    fault: str, exchange: FakeExchange, broker: BinanceBroker, journal: Journal, survived: bool
) -> None:
    """One row of the fault table in docs/live.md, measured on the venue and in the journal."""
    market = broker.market
    venue_ids = [o.client_id for o in exchange.orders(market)]
    journal_ids = set(journal.read(lambda s: [o.client_order_id for o in s.query(db.Order)]))
    FAULTS.append(
        {
            "fault": f"{market}: {fault}",
            "survived": survived,
            "duplicate_orders": len(venue_ids) - len(set(venue_ids)) + max(0, _entries(exchange, market) - 1),
            "unprotected_positions": broker.unprotected_positions(),
            "journal_rows_lost": sum(cid not in journal_ids for cid in venue_ids if cid.startswith("qt-")),
        }
    )


@pytest.fixture(scope="module", autouse=True)
def _fault_table() -> Iterator[None]:
    yield
    target = os.environ.get("QT_FAULT_TABLE")
    if target and FAULTS:
        header = (
            "| fault injected | survived | duplicate orders | unprotected positions | journal rows lost |"
        )
        lines = [header, "|---|---|---|---|---|"]
        lines += [
            f"| {r['fault']} | {'yes' if r['survived'] else 'refused, nothing open'} | "
            f"{r['duplicate_orders']} | {r['unprotected_positions']} | {r['journal_rows_lost']} |"
            for r in FAULTS
        ]
        Path(target).write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize(
    ("fault", "survives"),
    [
        (Fault("accept_timeout", "/fapi/v1/order", delay_s=1.5), True),
        (Fault("500", "/fapi/v1/order", times=2), True),
        (Fault("500", "/fapi/v1/algoOrder", times=2), True),
        (Fault("clock_skew", "*"), True),
        (Fault("reject", "/fapi/v1/order", code=-2010, method="POST"), False),
    ],
    ids=["timeout-after-accept", "entry-5xx-twice", "stop-5xx-twice", "clock-skew", "entry-rejected"],
)
def test_binance_faults_end_protected_without_duplicates(
    exchange: FakeExchange, journal: Journal, candles: pd.DataFrame, fault: Fault, survives: bool
) -> None:
    venue = _binance(exchange, journal, candles)
    label = f"{fault.kind} on {fault.method or 'any'} {fault.path}" + (
        f" ×{fault.times}" if fault.times > 1 else ""
    )
    exchange.inject(fault)
    if survives:
        venue.broker.place_protected(venue.entry())
        assert [p.quantity for p in venue.broker.positions()] == [Decimal("0.010")]
    else:
        with pytest.raises(OrderRefusedError, match="-2010"):
            venue.broker.place_protected(venue.entry())
        assert not venue.broker.positions()
        assert journal.read(lambda s: [o.status for o in s.query(db.Order)]) == ["rejected"]
    assert _entries(exchange) == (1 if survives else 0)
    assert venue.broker.unprotected_positions() == 0
    assert venue.broker.reconcile().unprotected_positions == 0
    _record(label, exchange, venue.broker, journal, survives)


@pytest.mark.parametrize(
    ("fault", "survives"),
    [
        (Fault("accept_timeout", "/api/v3/order", delay_s=1.5), True),
        (Fault("500", "/api/v3/orderList/oco", times=2), True),
        (Fault("clock_skew", "*"), True),
        (Fault("reject", "/api/v3/order", code=-2010, method="POST"), False),
    ],
    ids=["timeout-after-accept", "oco-5xx-twice", "clock-skew", "entry-rejected"],
)
def test_binance_spot_faults_end_protected_without_duplicates(
    exchange: FakeExchange, journal: Journal, candles: pd.DataFrame, fault: Fault, survives: bool
) -> None:
    venue = _binance(exchange, journal, candles, "spot")
    label = f"{fault.kind} on {fault.method or 'any'} {fault.path}" + (
        f" ×{fault.times}" if fault.times > 1 else ""
    )
    exchange.inject(fault)
    if survives:
        venue.broker.place_protected(venue.entry())
        assert [p.quantity for p in venue.broker.positions()] == [venue.held]
        kinds = sorted(o.type for o in exchange.open_orders("spot"))
        assert kinds == [
            "LIMIT_MAKER",
            "LIMIT_MAKER",
            "STOP_LOSS_LIMIT",
            "STOP_LOSS_LIMIT",
            "STOP_LOSS_LIMIT",
        ]
    else:
        with pytest.raises(OrderRefusedError, match="-2010"):
            venue.broker.place_protected(venue.entry())
        assert not venue.broker.positions() and _statuses(journal) == ["rejected"]
    assert _entries(exchange, "spot") == (1 if survives else 0)
    assert venue.broker.unprotected_positions() == 0
    assert venue.broker.reconcile().unprotected_positions == 0
    _record(label, exchange, venue.broker, journal, survives)


def test_exchange_down_for_longer_than_the_retries(
    exchange: FakeExchange, journal: Journal, candles: pd.DataFrame
) -> None:
    """Every call fails for a while: the entry is not placed, nothing is left half-done."""
    from core.errors import RetryableError

    venue = _binance(exchange, journal, candles)
    exchange.inject(Fault("500", "*", times=6))
    with pytest.raises(RetryableError, match="exchange error"):
        venue.broker.place_protected(venue.entry())
    for _ in range(10):  # the live loop reconciles every tick until the exchange is back
        try:
            report = venue.broker.reconcile()
            break
        except RetryableError:
            continue
    assert _entries(exchange) == 0 and not venue.broker.positions() and report.unprotected_positions == 0
    assert "pending" not in journal.read(lambda s: [o.status for o in s.query(db.Order)])
    _record("exchange down (500 on every call ×6)", exchange, venue.broker, journal, False)


def test_missing_keys_are_a_clear_error(tmp_path: Path, journal: Journal) -> None:
    from core.settings import load_settings

    settings = load_settings(tmp_path / "home")
    with pytest.raises(Exception, match="QT_BINANCE_API_KEY"):
        BinanceBroker.from_settings(settings, journal)


CHILD = """
import sys
from decimal import Decimal
import pandas as pd
from binance.client import Client
from serving.brokers.base import ProtectedEntry
from serving.brokers.binance import BinanceBroker
from serving.brokers.binance_spot import BinanceSpotBroker
from serving.journal import Journal

spot, futures, journal_url, price, bar = sys.argv[1:6]
client = Client("test-key", "test-secret", ping=False)
client.API_URL = client.API_TESTNET_URL = spot
client.FUTURES_URL = client.FUTURES_TESTNET_URL = futures
client.REQUEST_TIMEOUT = 5
price = Decimal(price)
entry = ProtectedEntry("BTCUSDT", "long", Decimal("0.010"), price * Decimal("0.98"),
                       ((price * Decimal("1.02"), Decimal("0.003")),), pd.Timestamp(bar), price)
BinanceBroker(client, Journal(journal_url)).place_protected(entry)
"""


@pytest.mark.parametrize(
    ("method", "stall"),
    [("GET", "/fapi/v1/order"), ("POST", "/fapi/v1/order"), ("POST", "/fapi/v1/algoOrder")],
    ids=["journalled-not-sent", "during-entry", "before-exits"],
)
def test_sigkill_mid_protect_then_restart_ends_with_one_protected_position(
    exchange: FakeExchange, journal: Journal, candles: pd.DataFrame, tmp_path: Path, method: str, stall: str
) -> None:
    """SIGKILL mid-protect, then a restart replays the decision: one position, protected.

    ``journalled-not-sent``: the entry is in the journal, the look-up before its send is
    stalled, so the order never reaches the venue. The other two: the entry (or the first
    exit) is on the wire; the stalled request lands after the kill, as one already sent may.
    """
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.test_cli import ROOT

    venue = _binance(exchange, journal, candles)
    exchange.inject(Fault("timeout", stall, delay_s=2.0, method=method))
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, exchange.spot_url, exchange.futures_url, journal.url.replace("***", ""),
         str(venue.price()), venue.bar_time().isoformat()],
        cwd=ROOT, env={**os.environ}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not any(
        f.client_order_id.endswith("-entry") for f in journal.read(lambda s: list(s.query(db.Order)))
    ):
        time.sleep(0.05)
    time.sleep(0.5)  # the stalled request is now on the wire
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=10)
    time.sleep(2.5)  # it lands after all, as a request already sent may on a real venue
    restarted = BinanceBroker(exchange.client(timeout_s=1.0), Journal(journal.url))
    restarted.reconcile()
    if method == "GET":  # the entry never reached the venue: the restart says so, and sends it now
        assert _entries(exchange) == 0
        assert journal.read(
            lambda s: s.query(db.Event).filter(db.Event.kind == "never_reached_venue").count()
        )
    price = venue.price()
    decision = ProtectedEntry(
        "BTCUSDT", "long", Decimal("0.010"), price * Decimal("0.98"),
        ((price * Decimal("1.02"), Decimal("0.003")),), venue.bar_time(), price,
    )  # fmt: skip
    restarted.place_protected(decision)  # the live loop replays a decision it cannot see done
    report = restarted.reconcile()
    assert [p.quantity for p in restarted.positions()] == [Decimal("0.010")]
    assert _entries(exchange) == 1
    assert report.unprotected_positions == 0 and restarted.unprotected_positions() == 0
    stops = [o for o in exchange.open_orders("futures") if o.type == "STOP_MARKET"]
    assert len(stops) == 1
    assert journal.read(lambda s: s.query(db.Event).filter(db.Event.kind == "protected_entry").count()) == 1
    statuses = journal.read(lambda s: {o.leg: o.status for o in s.query(db.Order)})
    assert (
        statuses["entry"] == "filled" and "pending" not in statuses.values()
    )  # the journal tells what happened
    assert [p.symbol for p in journal.open_positions()] == ["BTCUSDT"]
    where = "after the journal write, before the send" if method == "GET" else f"while {stall} is on the wire"
    _record(f"SIGKILL {where}, then restart", exchange, restarted, journal, True)
