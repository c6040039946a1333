"""The paper broker: protected entries, exits on real candles, idempotence, restarts, reconcile."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pandas as pd
import pytest
from sqlalchemy import func, select

from core.errors import BadConfigError
from serving.brokers.base import OrderRefusedError, ProtectedEntry, SymbolRules
from serving.brokers.paper import PaperBroker
from serving.journal import Journal
from serving.journal import models as db
from tasks.fills import Bar

RULES = {
    "BTCUSDT": SymbolRules("BTCUSDT", Decimal("0.01"), Decimal("0.00001"), Decimal("0.00001"), Decimal("5"))
}


@pytest.fixture
def journal(tmp_path: Path) -> Journal:
    return Journal(f"sqlite:///{tmp_path / 'journal.db'}")


def broker(journal: Journal, market: str = "spot", leverage: int = 1) -> PaperBroker:
    return PaperBroker(
        journal, market, RULES, cash=Decimal("10000"), fee_bps=10, slippage_bps=0,  # type: ignore[arg-type]
        leverage=leverage,
    )  # fmt: skip


def candles(btc_raw: pd.DataFrame) -> pd.DataFrame:
    frame = btc_raw.iloc[2000:2400].copy()
    frame.index = pd.to_datetime(frame["open_time"], unit="ms", utc=True)
    return frame


def entry_at(price: Decimal, bar: pd.Timestamp, side: str = "long", qty: str = "0.1") -> ProtectedEntry:
    sign = Decimal(1) if side == "long" else Decimal(-1)
    quantity = Decimal(qty)
    return ProtectedEntry(
        symbol="BTCUSDT", side=side, quantity=quantity, stop=price * (1 - sign * Decimal("0.01")),  # type: ignore[arg-type]
        take_profits=tuple(
            (price * (1 + sign * Decimal(r) / 100), quantity * Decimal(w))
            for r, w in (("1", "0.3"), ("2", "0.3"), ("3", "0.4"))
        ),
        bar_time=bar, reference_price=price,
    )  # fmt: skip


def count(journal: Journal, table: type[db.Base]) -> int:
    return journal.read(lambda s: int(s.scalar(select(func.count()).select_from(table)) or 0))


def test_a_protected_entry_is_one_position_with_a_live_stop_and_idempotent(journal: Journal) -> None:
    paper = broker(journal)
    paper.set_price("BTCUSDT", Decimal("65000"))
    bar = pd.Timestamp("2025-01-01 10:00", tz="UTC")
    orders = paper.place_protected(entry_at(Decimal("65000"), bar))
    assert [o.client_order_id.rsplit("-", 1)[1] for o in orders] == ["entry", "stop", "tp1", "tp2", "tp3"]
    assert orders[0].status == "filled" and all(o.status == "new" for o in orders[1:])
    assert paper.unprotected_positions() == 0
    cash = paper.balance()["USDT"]
    assert cash == Decimal("10000") - Decimal("6500") - Decimal("6.5")  # notional and the 10 bps fee, exactly
    again = paper.place_protected(entry_at(Decimal("65000"), bar))  # a retry after a timeout
    assert [o.client_order_id for o in again] == [o.client_order_id for o in orders]
    assert count(journal, db.Order) == 5 and len(paper.positions()) == 1


def test_exits_fill_on_real_candles_and_a_restart_reads_the_same_book(
    journal: Journal, btc_raw: pd.DataFrame
) -> None:
    frame = candles(btc_raw)
    paper = broker(journal)
    first = frame.iloc[0]
    paper.set_price("BTCUSDT", Decimal(str(first["open"])))
    paper.place_protected(entry_at(Decimal(str(first["open"])), frame.index[0]))
    restarted = broker(Journal(journal.url))  # a new process on the same journal
    assert restarted.positions() == paper.positions()
    assert restarted.open_orders() == paper.open_orders()
    exits = []
    for when, row in frame.iloc[1:].iterrows():
        exits += restarted.on_bar("BTCUSDT", when, Bar(row["open"], row["high"], row["low"], row["close"]))
        if not restarted.positions():
            break
    assert exits and not restarted.positions() and not restarted.open_orders()
    assert restarted.unprotected_positions() == 0
    trade = journal.trades_since()[0]
    legs = [o.client_order_id.rsplit("-", 1)[1] for o in exits]
    if legs == ["stop"]:
        assert trade.realised_pnl < 0
    else:
        assert legs[0] == "tp1"
    assert restarted.balance()["USDT"] == Decimal("10000") + trade.realised_pnl - sum(
        journal.read(lambda s: [f.fee for f in s.scalars(select(db.Fill))]), Decimal(0)
    )


def test_a_candle_touching_stop_and_target_closes_at_the_stop(journal: Journal) -> None:
    paper = broker(journal, "futures", leverage=2)
    paper.set_price("BTCUSDT", Decimal("100000"))
    bar = pd.Timestamp("2025-01-01 10:00", tz="UTC")
    paper.place_protected(entry_at(Decimal("100000"), bar, side="short"))
    filled = paper.on_bar("BTCUSDT", bar + pd.Timedelta(hours=1), Bar(100000.0, 101500.0, 97500.0, 99000.0))
    assert [o.client_order_id.rsplit("-", 1)[1] for o in filled] == ["stop"]
    trade = journal.trades_since()[0]
    assert trade.realised_pnl == Decimal("-100.0")  # 0.1 short stopped at +1 %


def test_bad_orders_are_refused_naming_the_field_and_nothing_is_written(journal: Journal) -> None:
    paper = broker(journal)
    paper.set_price("BTCUSDT", Decimal("65000"))
    bar = pd.Timestamp("2025-01-01 10:00", tz="UTC")
    before = count(journal, db.Order)
    wrong_stop = entry_at(Decimal("65000"), bar)
    wrong_stop = ProtectedEntry(**{**wrong_stop.__dict__, "stop": Decimal("66000")})
    cases = [
        (wrong_stop, BadConfigError, "must lie below the entry"),
        (entry_at(Decimal("65000"), bar, qty="0.000001"), OrderRefusedError, "LOT_SIZE"),
        (entry_at(Decimal("65000"), bar, side="short"), OrderRefusedError, "spot is long only"),
        (entry_at(Decimal("65000"), bar, qty="1"), OrderRefusedError, r"needs 65065\.00 USDT, 10000\.00"),
        (ProtectedEntry(**{**entry_at(Decimal("65000"), bar).__dict__, "symbol": "NOPEUSDT"}),
         OrderRefusedError, "unknown symbol"),
    ]  # fmt: skip
    for entry, error, message in cases:
        with pytest.raises(error, match=message):
            paper.place_protected(entry)
    assert count(journal, db.Order) == before and not paper.positions()


def test_reconcile_replaces_a_vanished_stop_and_journals_it(journal: Journal) -> None:
    paper = broker(journal)
    paper.set_price("BTCUSDT", Decimal("65000"))
    orders = paper.place_protected(entry_at(Decimal("65000"), pd.Timestamp("2025-01-01 10:00", tz="UTC")))
    paper.cancel_order("BTCUSDT", orders[1].client_order_id)  # the stop vanished from the venue
    assert paper.unprotected_positions() == 1
    report = paper.reconcile()
    assert report.missing_stops == ["BTCUSDT"] and len(report.replaced) == 1
    assert report.unprotected_positions == 0 and paper.unprotected_positions() == 0
    assert [e.kind for e in journal.recent_events(kind="stop_replaced")] == ["stop_replaced"]


def test_futures_entries_need_their_margin_at_the_leverage(journal: Journal) -> None:
    """10,000 USDT: a 10,000 notional entry is refused at 1x (its fee does not fit), taken at 5x."""
    bar = pd.Timestamp("2025-01-01 10:00", tz="UTC")
    flat = broker(journal, "futures")
    flat.set_price("BTCUSDT", Decimal("100000"))
    with pytest.raises(
        OrderRefusedError, match=r"margin 10000\.00 USDT needed at 1x leverage, 10000\.00 free"
    ):
        flat.place_protected(entry_at(Decimal("100000"), bar))
    assert count(journal, db.Order) == 0
    levered = broker(journal, "futures", leverage=5)
    levered.set_price("BTCUSDT", Decimal("100000"))
    levered.place_protected(entry_at(Decimal("100000"), bar))  # 2,000 margin
    with pytest.raises(
        OrderRefusedError, match=r"2000\.00 in use"
    ):  # 0.4 more: 8,000 margin + fee > 7,990 free
        levered.place_protected(entry_at(Decimal("100000"), bar + pd.Timedelta(hours=1), qty="0.4"))
    assert [p.quantity for p in levered.positions()] == [Decimal("0.1")]


@pytest.mark.parametrize(("side", "funding"), [("long", Decimal("-3")), ("short", Decimal("3"))])
def test_futures_funding_every_8_hours_once_each(journal: Journal, side: str, funding: Decimal) -> None:
    """Open from 06:00 to midnight: funding at 08:00, 16:00 and 00:00, 1 bp of 10,000 notional each."""
    paper = broker(journal, "futures", leverage=5)
    start = pd.Timestamp("2025-01-01 06:00", tz="UTC")
    paper.set_price("BTCUSDT", Decimal("100000"), at=start)
    paper.place_protected(entry_at(Decimal("100000"), start, side=side))
    calm = Bar(100000.0, 100200.0, 99800.0, 100000.0)  # inside the 1 % stop and the first target
    for hour in range(18):
        paper.on_bar("BTCUSDT", start + pd.Timedelta(hours=hour), calm)
    paper.on_bar("BTCUSDT", start + pd.Timedelta(hours=17), calm)  # the same candle again: no second charge
    [position] = journal.open_positions()
    assert position.funding == funding
    assert position.opened_at == start.to_pydatetime()  # fills carry the simulated time
    fees = journal.read(lambda s: sum((f.fee for f in s.scalars(select(db.Fill))), Decimal(0)))
    assert paper.balance()["USDT"] == Decimal("10000") + funding - fees
