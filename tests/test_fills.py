"""Fill rules shared by the backtest and the paper broker, and the venue rules of the brokers."""

from __future__ import annotations

from decimal import Decimal

import pandas as pd
import pytest

from serving.brokers.base import OrderRefusedError, SymbolRules, client_order_id
from tasks.fills import (
    Bar,
    ExitLeg,
    InvalidExitError,
    fee,
    market_fill_price,
    triggered_exits,
    validate_exits,
)


def long_legs(entry: float, qty: float = 1.0) -> list[ExitLeg]:
    """A stop 2 % below, take-profits at +1 % / +2 % / +3 % (30 / 30 / 40 %)."""
    return [
        ExitLeg("stop", entry * 0.98, qty, "stop"),
        ExitLeg("take_profit", entry * 1.01, qty * 0.3, "tp1"),
        ExitLeg("take_profit", entry * 1.02, qty * 0.3, "tp2"),
        ExitLeg("take_profit", entry * 1.03, qty * 0.4, "tp3"),
    ]


def test_market_orders_pay_the_slippage_and_the_fee() -> None:
    assert market_fill_price(100.0, "buy", 5) == pytest.approx(100.05)
    assert market_fill_price(100.0, "sell", 5) == pytest.approx(99.95)
    assert fee(-2000.0, 10) == pytest.approx(2.0)


@pytest.mark.parametrize(
    ("side", "legs", "message"),
    [
        ("long", [ExitLeg("stop", 101.0, 1.0)], "must lie below the entry"),
        ("short", [ExitLeg("stop", 99.0, 1.0)], "must lie above the entry"),
        ("long", [ExitLeg("stop", -5.0, 1.0)], "must be > 0"),
        ("long", [ExitLeg("stop", 98.0, 1.0), ExitLeg("take_profit", 97.0, 0.5, "tp1")], "tp1"),
        ("long", [ExitLeg("stop", 98.0, 0.5)], "all of it must be"),
        ("long", [ExitLeg("stop", 98.0, 1.5)], "exceeds the position"),
        ("long", [ExitLeg("take_profit", 102.0, 1.0)], "exactly one stop"),
        ("long", [ExitLeg("stop", 98.0, 1.0), ExitLeg("take_profit", 102.0, 1.2)], "more than the position"),
    ],
)
def test_exits_that_would_not_protect_are_refused(side: str, legs: list[ExitLeg], message: str) -> None:
    with pytest.raises(InvalidExitError, match=message):
        validate_exits(side, 100.0, 1.0, legs)  # type: ignore[arg-type]


def test_a_candle_touching_stop_and_target_fills_the_stop_first() -> None:
    legs = long_legs(100.0)
    validate_exits("long", 100.0, 1.0, legs)
    both = triggered_exits("long", 1.0, legs, Bar(100.0, 101.5, 97.0, 100.5), slippage_bps=0)
    assert [(f.leg.name, f.quantity) for f in both] == [("stop", 1.0)]
    assert both[0].price == pytest.approx(98.0)
    targets = triggered_exits("long", 1.0, legs, Bar(100.0, 102.5, 99.0, 102.0))
    assert [(f.leg.name, round(f.quantity, 6), round(f.price, 6)) for f in targets] == [
        ("tp1", 0.3, 101.0),
        ("tp2", 0.3, 102.0),
    ]
    assert triggered_exits("long", 1.0, legs, Bar(100.0, 100.9, 98.1, 100.0)) == []


def test_a_gap_through_the_stop_fills_at_the_open_and_shorts_mirror_longs() -> None:
    gap = triggered_exits("long", 1.0, long_legs(100.0), Bar(95.0, 96.0, 94.0, 95.5), slippage_bps=10)
    assert gap[0].price == pytest.approx(95.0 * 0.999)  # the open, less slippage: worse than the stop
    short = [ExitLeg("stop", 102.0, 2.0, "stop"), ExitLeg("take_profit", 99.0, 1.0, "tp1")]
    validate_exits("short", 100.0, 2.0, short)
    assert [f.leg.name for f in triggered_exits("short", 2.0, short, Bar(100.0, 102.0, 98.0, 99.0))] == [
        "stop"
    ]
    assert [f.leg.name for f in triggered_exits("short", 2.0, short, Bar(100.0, 101.0, 98.0, 99.0))] == [
        "tp1"
    ]


def test_on_real_candles_a_stop_fills_whenever_the_low_reaches_it(btc_raw: pd.DataFrame) -> None:
    """Over 10,968 real BTC hours, a long opened at each open with ±1 % exits."""
    stops = targets = 0
    for row in btc_raw.itertuples():
        bar = Bar(float(row.open), float(row.high), float(row.low), float(row.close))
        stop, target = bar.open * 0.99, bar.open * 1.01
        legs = [ExitLeg("stop", stop, 1.0, "stop"), ExitLeg("take_profit", target, 1.0, "tp")]
        fills = triggered_exits("long", 1.0, legs, bar)
        if bar.low <= stop:
            assert [f.leg.name for f in fills] == ["stop"]
            stops += 1
        elif bar.high >= target:
            assert [f.leg.name for f in fills] == ["tp"]
            targets += 1
        else:
            assert fills == []
    assert stops > 100 and targets > 100  # both rules were exercised


def test_client_order_ids_are_deterministic_and_fit_binance() -> None:
    bar = pd.Timestamp("2025-06-14 23:00", tz="UTC")
    first = client_order_id("BTCUSDT", bar, "stop")
    assert first == client_order_id("BTCUSDT", bar, "stop") == "qt-BTCUSDT-1749942000000-stop"
    assert first != client_order_id("BTCUSDT", bar, "tp1")
    long_name = client_order_id("1000SHIBUSDTPERPETUALX", bar, "tp3")
    assert len(long_name) <= 36 and long_name.endswith("-tp3")
    with pytest.raises(ValueError, match="leg"):
        client_order_id("BTCUSDT", bar, "Take Profit")


def test_symbol_rules_round_and_refuse_with_the_filter_named() -> None:
    rules = SymbolRules("BTCUSDT", Decimal("0.01"), Decimal("0.00001"), Decimal("0.00001"), Decimal("5"))
    assert rules.round_price(Decimal("65432.126")) == Decimal("65432.13")
    assert rules.round_quantity(Decimal("0.0123456")) == Decimal("0.01234")
    rules.check(Decimal("0.01234"), Decimal("65432.13"))
    for quantity, price, name in [
        (Decimal("0.000001"), Decimal("65432.13"), "LOT_SIZE minQty"),
        (Decimal("0.0123456"), Decimal("65432.13"), "stepSize"),
        (Decimal("0.01"), Decimal("65432.125"), "tickSize"),
        (Decimal("0.00005"), Decimal("65432.13"), "MIN_NOTIONAL"),
        (Decimal("0.01"), Decimal("0"), "must be > 0"),
    ]:
        with pytest.raises(OrderRefusedError, match=name):
            rules.check(quantity, price)
