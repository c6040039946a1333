"""The order side of the local exchange, driven by the real python-binance Client over HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import ROUND_DOWN, Decimal
from typing import Any

import pandas as pd
import pytest
import requests
from binance.exceptions import BinanceAPIException

from infra.exchange import FakeExchange, Fault

HOUR = 3_600_000
START = 3000  # the clock starts at this candle's open
TICK = Decimal("0.1")  # BTCUSDT futures tick (spot: 0.01)


@pytest.fixture
def candles(btc_raw: pd.DataFrame) -> pd.DataFrame:
    return btc_raw.iloc[: START + 400].reset_index(drop=True)


@pytest.fixture
def exchange(candles: pd.DataFrame) -> Iterator[FakeExchange]:
    ex = FakeExchange(now_ms=int(candles["open_time"].iloc[START]), maker_bps=2, taker_bps=4)
    ex.add_candles("BTCUSDT", "1h", candles)
    ex.add_candles("BTCUSDT", "1h", candles, market="futures")
    with ex:
        yield ex


@pytest.fixture
def client(exchange: FakeExchange) -> Any:
    return exchange.client(timeout_s=2.0)


def code_of(call: Any, *args: Any, **kwargs: Any) -> int:
    with pytest.raises(BinanceAPIException) as caught:
        call(*args, **kwargs)
    return int(caught.value.code)


def dec(value: Any) -> Decimal:
    return Decimal(str(value))


def on_tick(value: Decimal, tick: Decimal = TICK) -> Decimal:
    return (value / tick).to_integral_value(ROUND_DOWN) * tick


def first_touch(candles: pd.DataFrame, stop: Decimal, take_profit: Decimal) -> int:
    """Index of the first candle from START whose low reaches ``stop`` or high ``take_profit``."""
    touched = (candles["low"] <= float(stop)) | (candles["high"] >= float(take_profit))
    return next(i for i in range(START, len(candles)) if touched.iloc[i])


def entry_long(client: Any, qty: str = "0.010", cid: str = "qt-entry") -> dict[str, Any]:
    client.futures_change_leverage(symbol="BTCUSDT", leverage=5)
    return dict(
        client.futures_create_order(
            symbol="BTCUSDT",
            side="BUY",
            type="MARKET",
            quantity=qty,
            newClientOrderId=cid,
            newOrderRespType="RESULT",
        )
    )


def protect(client: Any, stop: Decimal, take_profit: Decimal) -> None:
    for kind, price, cid in (("STOP_MARKET", stop, "qt-stop"), ("TAKE_PROFIT_MARKET", take_profit, "qt-tp1")):
        client.futures_create_order(
            symbol="BTCUSDT",
            side="SELL",
            type=kind,
            stopPrice=str(price),
            closePosition="true",
            clientAlgoId=cid,
        )


# ----- signing ---------------------------------------------------------------------------------
def test_signed_request_is_accepted_and_a_wrong_secret_or_key_rejected(
    exchange: FakeExchange, client: Any
) -> None:
    assert {b["asset"]: b["free"] for b in client.get_account()["balances"]} == {"USDT": "10000"}
    assert code_of(exchange.client(api_secret="wrong").get_account) == -1022
    assert code_of(exchange.client(api_key="other").futures_account_balance) == -2015


def test_timestamp_outside_recv_window_is_minus_1021_until_resynced(
    exchange: FakeExchange, client: Any
) -> None:
    client.timestamp_offset = -30_000  # our clock 30 s behind, recvWindow 10 s
    assert code_of(client.futures_position_information) == -1021
    client.timestamp_offset = client.futures_time()["serverTime"] - int(pd.Timestamp.now().value // 1_000_000)
    assert client.futures_position_information() == []  # synced to serverTime: accepted (v3: no positions)
    exchange.clock_skew_ms = 120_000
    assert code_of(exchange.client().get_account) == -1021


# ----- spot --------------------------------------------------------------------------------------
def test_spot_market_buy_fills_at_the_open_and_moves_balances(
    exchange: FakeExchange, client: Any, candles: pd.DataFrame
) -> None:
    open_price = dec(candles["open"].iloc[START])
    answer = client.order_market_buy(symbol="BTCUSDT", quantity="0.01000", newClientOrderId="qt-spot-1")
    assert answer["status"] == "FILLED" and dec(answer["fills"][0]["price"]) == open_price
    fee = Decimal("0.01") * Decimal("0.0004")
    assert dec(client.get_asset_balance("BTC")["free"]) == Decimal("0.01") - fee
    assert dec(client.get_asset_balance("USDT")["free"]) == Decimal(10_000) - Decimal("0.01") * open_price
    assert exchange.fills[0].fee == fee and exchange.fills[0].fee_asset == "BTC"


def test_spot_filters_and_funds_are_enforced(client: Any) -> None:
    info = client.get_symbol_info("BTCUSDT")
    assert {f["filterType"] for f in info["filters"]} >= {"PRICE_FILTER", "LOT_SIZE", "NOTIONAL"}
    assert code_of(client.order_market_buy, symbol="BTCUSDT", quantity="0.000001") == -1013  # below minQty
    assert code_of(client.order_market_buy, symbol="BTCUSDT", quantity="0.00001") == -1013  # notional < 5
    assert code_of(client.order_market_buy, symbol="BTCUSDT", quantity="5") == -2010  # 10k USDT is not enough


def test_spot_oco_sell_fills_one_leg_and_expires_the_other(
    exchange: FakeExchange, client: Any, candles: pd.DataFrame
) -> None:
    client.order_market_buy(symbol="BTCUSDT", quantity="0.01000")
    price = dec(candles["open"].iloc[START])
    stop, tp = (
        on_tick(price * Decimal("0.99"), Decimal("0.01")),
        on_tick(price * Decimal("1.01"), Decimal("0.01")),
    )
    qty = "0.00999"  # what the buy left after its fee, on the step grid
    client.create_oco_order(
        symbol="BTCUSDT",
        side="SELL",
        quantity=qty,
        aboveType="LIMIT_MAKER",
        abovePrice=str(tp),
        belowType="STOP_LOSS_LIMIT",
        belowStopPrice=str(stop),
        belowPrice=str(stop - 10),
        belowTimeInForce="GTC",
        aboveClientOrderId="qt-tp",
        belowClientOrderId="qt-sl",
    )
    assert dec(client.get_asset_balance("BTC")["locked"]) == Decimal(qty)
    first = first_touch(candles, stop, tp)
    exchange.now_ms = int(candles["close_time"].iloc[first]) + 1
    row = candles.iloc[first]
    winner, loser = ("qt-sl", "qt-tp") if row["low"] <= float(stop) else ("qt-tp", "qt-sl")
    assert exchange.order(winner).status == "FILLED" and exchange.order(loser).status == "EXPIRED"
    assert client.get_open_orders(symbol="BTCUSDT") == []


def test_spot_stop_loss_limit_that_would_trigger_at_once_is_refused(
    client: Any, candles: pd.DataFrame
) -> None:
    client.order_market_buy(symbol="BTCUSDT", quantity="0.01000")
    above = on_tick(dec(candles["open"].iloc[START]) * Decimal("1.01"), Decimal("0.01"))
    code = code_of(
        client.create_order,
        symbol="BTCUSDT",
        side="SELL",
        type="STOP_LOSS_LIMIT",
        quantity="0.00500",
        stopPrice=str(above),
        price=str(above),
        timeInForce="GTC",
    )
    assert code == -2010


# ----- futures -----------------------------------------------------------------------------------
def test_futures_entry_then_stop_or_take_profit_fills_as_the_clock_walks_the_candles(
    exchange: FakeExchange, client: Any, candles: pd.DataFrame
) -> None:
    client.futures_change_margin_type(symbol="BTCUSDT", marginType="ISOLATED")
    entry = entry_long(client)
    price = dec(entry["avgPrice"])
    assert price == dec(candles["open"].iloc[START]) and entry["status"] == "FILLED"
    stop, tp = on_tick(price * Decimal("0.985")), on_tick(price * Decimal("1.015"))
    protect(client, stop, tp)
    assert len(client.futures_get_open_orders(symbol="BTCUSDT", conditional=True)) == 2
    first = first_touch(candles, stop, tp)
    for _ in range(first - START):  # bar by bar: nothing fills before that candle closes
        exchange.advance(HOUR)
        assert dec(client.futures_position_information(symbol="BTCUSDT")[0]["positionAmt"]) == Decimal("0.01")
    exchange.advance(HOUR)
    # flat; v3 still lists the symbol because the other leg rests until it triggers and expires
    assert [p["positionAmt"] for p in client.futures_position_information(symbol="BTCUSDT")] == ["0"]
    row = candles.iloc[first]
    leg, fill_at = ("qt-stop", min(dec(row["open"]), stop)) if row["low"] <= float(stop) else ("qt-tp1", tp)
    exit_fill = exchange.fills[-1]
    assert (exit_fill.client_id, exit_fill.price, exit_fill.side) == (leg, fill_at, "SELL")
    assert client.futures_get_order(symbol="BTCUSDT", clientAlgoId=leg)["algoStatus"] == "FINISHED"
    fees = sum(f.fee for f in exchange.fills)
    pnl = (fill_at - price) * Decimal("0.01")
    assert dec(client.futures_account_balance()[0]["balance"]) == Decimal(10_000) + pnl - fees


def test_when_one_candle_touches_both_legs_the_stop_fills_first(
    exchange: FakeExchange, client: Any, candles: pd.DataFrame
) -> None:
    k = next(
        i
        for i in range(START, START + 300)
        if candles["open"].iloc[i] - candles["low"].iloc[i] > 5
        and candles["high"].iloc[i] - candles["open"].iloc[i] > 5
    )
    row = candles.iloc[k]
    exchange.now_ms = int(row["open_time"])
    entry_long(client)
    stop = on_tick((dec(row["low"]) + dec(row["open"])) / 2)
    tp = on_tick((dec(row["high"]) + dec(row["open"])) / 2)
    protect(client, stop, tp)
    exchange.advance(HOUR)
    assert [f.client_id for f in exchange.fills] == ["qt-entry", "qt-stop"]
    assert exchange.fills[-1].price == stop
    assert exchange.order("qt-tp1").status == "EXPIRED"
    assert exchange.position("BTCUSDT").amount == 0


def test_futures_rules_leverage_margin_type_and_immediate_trigger(client: Any, candles: pd.DataFrame) -> None:
    assert code_of(client.futures_change_leverage, symbol="BTCUSDT", leverage=500) == -4028
    assert code_of(client.futures_change_margin_type, symbol="BTCUSDT", marginType="CROSSED") == -4046
    entry_long(client)
    assert code_of(client.futures_change_margin_type, symbol="BTCUSDT", marginType="ISOLATED") == -4048
    above = on_tick(dec(candles["open"].iloc[START]) * Decimal("1.01"))
    code = code_of(
        client.futures_create_order,
        symbol="BTCUSDT",
        side="SELL",
        type="STOP_MARKET",
        stopPrice=str(above),
        closePosition="true",
    )
    assert code == -2021  # a sell stop above the price would trigger at once
    assert (
        code_of(client.futures_create_order, symbol="BTCUSDT", side="BUY", type="MARKET", quantity="0.0105")
        == -1111
    )
    assert (
        code_of(client.futures_create_order, symbol="BTCUSDT", side="BUY", type="MARKET", quantity="0.001")
        == -4164
    )
    assert (
        code_of(client.futures_create_order, symbol="BTCUSDT", side="BUY", type="MARKET", quantity="50")
        == -2019
    )
    assert (
        code_of(
            client.futures_create_order,
            symbol="BTCUSDT",
            side="BUY",
            type="MARKET",
            quantity="0.010",
            reduceOnly="true",
        )
        == -2022
    )
    positions = client.futures_position_information(version=2)
    assert positions[0]["leverage"] == "5" and dec(positions[0]["positionAmt"]) == Decimal("0.01")


def test_duplicate_client_order_id_is_rejected(
    exchange: FakeExchange, client: Any, candles: pd.DataFrame
) -> None:
    entry_long(client)
    stop = on_tick(dec(candles["open"].iloc[START]) * Decimal("0.95"))
    protect(client, stop, on_tick(stop * 2))
    code = code_of(
        client.futures_create_order,
        symbol="BTCUSDT",
        side="SELL",
        type="STOP_MARKET",
        stopPrice=str(stop),
        closePosition="true",
        clientAlgoId="qt-stop",
    )
    assert code == -4116
    assert len(exchange.open_orders("futures")) == 2
    exchange.reject_known_client_ids = True  # the filled entry's id is known too
    assert code_of(entry_long, client) == -4116
    assert exchange.position("BTCUSDT").amount == Decimal("0.01")


# ----- faults --------------------------------------------------------------------------------------
@pytest.mark.parametrize("code", [-2010, -1013])
def test_reject_fault_places_nothing(exchange: FakeExchange, client: Any, code: int) -> None:
    exchange.inject(Fault("reject", path="/fapi/v1/order", code=code))
    assert code_of(entry_long, client) == code
    assert exchange.orders("futures") == []
    assert entry_long(client, cid="qt-entry-2")["status"] == "FILLED"  # one-shot


def test_timeout_after_accept_leaves_the_order_on_the_venue(exchange: FakeExchange) -> None:
    client = exchange.client(timeout_s=0.3)
    exchange.inject(Fault("accept_timeout", path="/fapi/v1/order", delay_s=1.0))
    with pytest.raises(requests.exceptions.Timeout):
        entry_long(client)
    assert client.futures_get_order(symbol="BTCUSDT", origClientOrderId="qt-entry")["status"] == "FILLED"
    assert exchange.position("BTCUSDT").amount == Decimal("0.01")


def test_5xx_faults_500_not_executed_503_executed_status_unknown(exchange: FakeExchange, client: Any) -> None:
    exchange.inject(Fault("500", path="/fapi/v1/order"))
    with pytest.raises(BinanceAPIException) as caught:
        entry_long(client)
    assert caught.value.status_code == 500 and exchange.orders("futures") == []
    exchange.inject(Fault("503", path="/fapi/v1/order"))
    assert code_of(entry_long, client) == -1007
    assert exchange.order("qt-entry").status == "FILLED"


def test_an_open_order_that_vanishes_is_gone_from_the_venue(
    exchange: FakeExchange, client: Any, candles: pd.DataFrame
) -> None:
    entry_long(client)
    stop = on_tick(dec(candles["open"].iloc[START]) * Decimal("0.95"))
    exchange.inject(Fault("vanish", path="/fapi/v1/algoOrder", method="POST"))
    protect(client, stop, on_tick(stop * 2))  # both answered normally
    open_ids = [o["clientAlgoId"] for o in client.futures_get_open_orders(symbol="BTCUSDT", conditional=True)]
    assert open_ids == ["qt-tp1"]
    assert code_of(client.futures_get_order, symbol="BTCUSDT", clientAlgoId="qt-stop") == -2013
    exchange.vanish("qt-tp1")
    assert client.futures_get_open_orders(symbol="BTCUSDT", conditional=True) == []


def test_clock_skew_fault_fails_the_next_signed_request_only(exchange: FakeExchange, client: Any) -> None:
    exchange.inject(Fault("clock_skew", path="*"))
    client.futures_time()  # unsigned: not affected
    assert code_of(client.futures_account_balance) == -1021
    assert client.futures_account_balance()[0]["asset"] == "USDT"
