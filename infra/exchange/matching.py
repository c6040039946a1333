"""The matching engine: resting orders meet each candle that closes as the clock advances."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import numpy as np

from infra.exchange.futures import _FuturesOrders
from infra.exchange.model import (
    _STOPS,
    Order,
    _touch,
)
from infra.exchange.spot import _SpotOrders


class _Matching(_SpotOrders, _FuturesOrders):
    """The settable clock, and the matching of resting orders against the candles it passes."""

    # ----- clock -------------------------------------------------------------------------------
    @property
    def now_ms(self) -> int | None:
        """The set clock (None: just after the newest candle). Setting it runs the matching."""
        return self._now_ms

    @now_ms.setter
    def now_ms(self, value: int | None) -> None:
        with self._lock:
            self._now_ms = value
            self._match()

    def advance(self, ms: int) -> None:
        """Move the clock forward ``ms`` and match resting orders on the candles passed."""
        self.now_ms = self.clock() + ms

    # ----- matching ----------------------------------------------------------------------------
    def _match(self) -> None:
        """Match resting orders against every candle that closed since the last match."""
        now, start = self.clock(), self._matched_to
        if start is None:
            return
        self._matched_to = now
        resting = {(o.market, o.symbol) for o in self._orders.values() if o.is_open and o.type != "MARKET"}
        if now <= start or not resting:
            return
        bars: list[tuple[int, str, str, list[Any]]] = []
        for (market, symbol), series in self._match_series().items():
            if (market, symbol) in resting:
                lo = int(np.searchsorted(series.close_time, start, side="left"))
                hi = int(np.searchsorted(series.close_time, now, side="left"))  # closed: close_time < now
                bars.extend((int(series.open_time[i]), market, symbol, series.rows[i]) for i in range(lo, hi))
        for open_time, market, symbol, row in sorted(bars, key=lambda bar: bar[0]):
            self._match_bar(market, symbol, open_time, row)

    def _match_bar(self, market: str, symbol: str, open_time: int, row: list[Any]) -> None:
        o, h, low = (Decimal(str(row[i])) for i in (1, 2, 3))
        at = int(row[6])
        eligible = [
            x
            for x in self._orders.values()
            if x.is_open
            and x.market == market
            and x.symbol == symbol
            and x.type != "MARKET"
            and x.time <= open_time
        ]
        eligible.sort(
            key=lambda x: (0 if x.type in _STOPS and not x.triggered else 1, x.order_id)
        )  # stops first
        for order in eligible:
            touched = _touch(order, o, h, low) if order.is_open else None
            if touched is None:
                continue
            price, maker = touched
            if order.algo:
                self._trigger_algo(order, price, at)
            elif market == "spot":
                self._trigger_spot(order, price, maker, at)
            else:
                self._futures_fill(order, order.quantity - order.executed_qty, price, maker, at)

    def _trigger_spot(self, order: Order, price: Decimal, maker: bool, at: int) -> None:
        if order.type.endswith("_LIMIT") and not order.triggered:
            order.triggered, order.update_time = True, at
            if price < order.price if order.side == "SELL" else price > order.price:
                return  # gapped past the limit: it rests as a limit order from the next candle
        self._spot_fill(order, order.quantity - order.executed_qty, price, maker, at)

    def _trigger_algo(self, algo: Order, price: Decimal, at: int) -> None:
        """A triggered conditional order becomes a market order in the matching engine."""
        pos = self.position(algo.symbol)
        reducing = pos.amount != 0 and (pos.amount > 0) != (algo.side == "BUY")
        algo.triggered, algo.update_time = True, at
        if (algo.close_position or algo.reduce_only) and not reducing:
            algo.status = "EXPIRED"  # nothing left to close (e.g. the other leg filled first)
            return
        qty = abs(pos.amount) if algo.close_position else algo.quantity
        if algo.reduce_only:
            qty = min(qty, abs(pos.amount))
        child = Order(
            "futures",
            algo.symbol,
            0,
            algo.client_id,
            algo.side,
            "MARKET",
            qty,
            stop_price=algo.stop_price,
            reduce_only=algo.reduce_only,
            close_position=algo.close_position,
            orig_type=algo.type,
        )
        self._place(child)
        child.time = child.update_time = at
        self._futures_fill(child, qty, price, False, at)
        algo.status, algo.actual_order_id = "FINISHED", child.order_id
        algo.executed_qty, algo.cum_quote = qty, qty * price
