"""The fake exchange's state: candles, filters, clock, prices, accounts and order books."""

from __future__ import annotations

import itertools
import math
import re
import threading
import time
from collections import deque
from decimal import Decimal
from http.server import ThreadingHTTPServer
from typing import Any

import numpy as np
import pandas as pd

from core.candles import KLINE_COLUMNS, from_store_frame
from infra.exchange.model import (
    FAULT_KINDS,
    Fault,
    Fill,
    Order,
    Position,
    SymbolFilters,
    _ApiError,
    _default_filters,
    _field,
    _int,
    _need,
    _s,
    _Series,
)


class _ExchangeBase:
    """The state every part of :class:`~infra.exchange.FakeExchange` works on, and its look-ups."""

    def __init__(
        self,
        now_ms: int | None = None,
        host: str = "127.0.0.1",
        api_key: str = "test-key",
        api_secret: str = "test-secret",
        maker_bps: float = 2.0,
        taker_bps: float = 4.0,
        quote_balance: float = 10_000.0,
    ) -> None:
        if not host.startswith("127.") and host != "localhost":
            raise ValueError("the fake exchange binds to loopback addresses only")
        self.host = host
        self.api_key, self.api_secret = api_key, api_secret
        self.maker_fee = Decimal(str(maker_bps)) / 10_000
        self.taker_fee = Decimal(str(taker_bps)) / 10_000
        self.clock_skew_ms = 0
        #: reject a ``newClientOrderId`` of any order ever placed, not only of open ones
        #: (Binance documents "unique among open orders").
        self.reject_known_client_ids = False
        self.used_weight_override: int | None = None
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.fills: list[Fill] = []
        self.spot_balances: dict[str, Decimal] = {"USDT": Decimal(str(quote_balance))}
        self.futures_wallet = Decimal(str(quote_balance))
        self.positions: dict[str, Position] = {}
        self._orders: dict[tuple[str, int], Order] = {}  # (market or "algo", id)
        self._ids = itertools.count(1)
        self._series: dict[tuple[str, str, str], _Series] = {}
        self._filters: dict[tuple[str, str], SymbolFilters] = {}
        self._prices: dict[tuple[str, str], Decimal] = {}
        self._faults: deque[Fault] = deque()
        self._lock = threading.RLock()
        self._weight: tuple[int, int] = (0, 0)  # (minute, used)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._now_ms = now_ms
        self._matched_to: int | None = None

    # ----- data -------------------------------------------------------------------------
    def add_candles(self, symbol: str, interval: str, candles: pd.DataFrame, market: str = "spot") -> None:
        """Serve candles: a store frame (``open_time`` index) or kline columns in int ms."""
        raw = from_store_frame(candles) if isinstance(candles.index, pd.DatetimeIndex) else candles
        raw = raw.sort_values("open_time")
        rows = [
            [_field(col, v) for col, v in zip(KLINE_COLUMNS, rec, strict=True)] + ["0"]
            for rec in raw[list(KLINE_COLUMNS)].itertuples(index=False, name=None)
        ]
        times = raw["open_time"].to_numpy(dtype=np.int64)
        closes = raw["close_time"].to_numpy(dtype=np.int64)
        with self._lock:
            self._series[(market, symbol, interval)] = _Series(times, rows, closes)
            if (market, symbol) not in self._filters and len(raw):
                self._filters[(market, symbol)] = _default_filters(
                    market, symbol, float(raw["close"].iloc[-1])
                )

    def set_filters(self, symbol: str, filters: SymbolFilters, market: str = "spot") -> None:
        """Replace a symbol's PRICE_FILTER / LOT_SIZE / notional filters."""
        with self._lock:
            self._filters[(market, symbol)] = filters

    def filters(self, symbol: str, market: str = "spot") -> SymbolFilters:
        """A symbol's filters (defaults look like Binance's for its price level)."""
        found = self._filters.get((market, symbol))
        if found is None:
            raise _ApiError(-1121, "Invalid symbol.")
        return found

    # ----- clock and prices ---------------------------------------------------------------
    def clock(self) -> int:
        """The exchange's current time in ms."""
        if self._now_ms is not None:
            return self._now_ms
        newest = [int(s.rows[-1][6]) for s in self._series.values() if s.rows]
        return max(newest) + 1 if newest else int(time.time() * 1000)

    def set_price(self, symbol: str, price: float | Decimal | None, market: str = "spot") -> None:
        """Fix the last price market orders fill at (None: back to the forming candle's open)."""
        with self._lock:
            if price is None:
                self._prices.pop((market, symbol), None)
            else:
                self._prices[(market, symbol)] = Decimal(str(price))

    def price(self, symbol: str, market: str = "spot") -> Decimal:
        """The current price: the set last price, else the open of the candle forming now."""
        if (market, symbol) in self._prices:
            return self._prices[(market, symbol)]
        series = self._match_series().get((market, symbol))
        if series is None:
            raise _ApiError(-1121, "Invalid symbol.")
        i = int(np.searchsorted(series.open_time, self.clock(), side="right")) - 1
        if i < 0:
            raise _ApiError(-1121, f"No price for {symbol} before its first candle.")
        return Decimal(str(series.rows[i][1]))

    # ----- account state for tests ----------------------------------------------------------
    def set_balance(self, asset: str, amount: float | Decimal, market: str = "spot") -> None:
        """Set a spot asset's total, or (``market="futures"``, asset USDT) the futures wallet."""
        with self._lock:
            if market == "futures":
                self.futures_wallet = Decimal(str(amount))
            else:
                self.spot_balances[asset] = Decimal(str(amount))

    def position(self, symbol: str) -> Position:
        """The futures position of ``symbol`` (an empty one if never traded)."""
        with self._lock:
            return self.positions.setdefault(symbol, Position(symbol))

    def orders(self, market: str | None = None, symbol: str | None = None) -> list[Order]:
        """Every order placed, in order (futures conditional orders have ``market="futures"``)."""
        with self._lock:
            return [
                o
                for o in sorted(self._orders.values(), key=lambda o: (o.time, o.order_id))
                if (market is None or o.market == market) and (symbol is None or o.symbol == symbol)
            ]

    def open_orders(self, market: str | None = None, symbol: str | None = None) -> list[Order]:
        """Orders still working on the venue."""
        return [o for o in self.orders(market, symbol) if o.is_open]

    def order(self, client_id: str) -> Order:
        """The newest order (or algo order) with this client id."""
        found = [o for o in self.orders() if o.client_id == client_id]
        if not found:
            raise KeyError(f"no order with client id {client_id!r}")
        return found[-1]

    def vanish(self, client_id: str) -> Order:
        """Make an open order silently disappear (no cancel, no fill, unknown to look-ups)."""
        with self._lock:
            found = self.order(client_id)
            found.vanished = True
            return found

    def inject(self, fault: Fault) -> None:
        """Queue a fault for the next matching request(s)."""
        if fault.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault {fault.kind!r}; known: {FAULT_KINDS}")
        with self._lock:
            self._faults.append(fault)

    def clear_faults(self) -> None:
        """Drop every queued fault (the venue is back)."""
        with self._lock:
            self._faults.clear()

    # ----- orders: common ---------------------------------------------------------------------
    def _symbol(self, market: str, params: dict[str, str]) -> str:
        symbol = _need(params, "symbol").upper()
        self.filters(symbol, market)
        return symbol

    def _order_basics(self, market: str, params: dict[str, str]) -> tuple[str, str, str]:
        symbol = self._symbol(market, params)
        side, kind = _need(params, "side").upper(), _need(params, "type").upper()
        if side not in ("BUY", "SELL"):
            raise _ApiError(-1117, "Invalid side.")
        return symbol, side, kind

    def _client_id(self, space: str, wanted: str | None, code: int, msg: str | None = None) -> str:
        if not wanted:
            return f"fake-{space}-{next(self._ids)}"
        if len(wanted) > 36 or not re.fullmatch(r"[.A-Z:/a-z0-9_-]+", wanted):
            raise _ApiError(-1100, "Illegal characters found in parameter 'newClientOrderId'.")
        known = [o for (s, _), o in self._orders.items() if s == space and o.client_id == wanted]
        if any(o.is_open or self.reject_known_client_ids for o in known):
            raise _ApiError(code, msg)
        return wanted

    def _place(self, order: Order) -> Order:
        order.order_id = next(self._ids)
        order.time = order.update_time = self.clock()
        order.orig_type = order.orig_type or order.type
        self._orders[("algo" if order.algo else order.market, order.order_id)] = order
        if self._matched_to is None:
            self._matched_to = order.time
        return order

    def _find(self, space: str, params: dict[str, str], unknown: int = -2013) -> Order:
        id_key, client_key = (
            ("algoId", "clientAlgoId") if space == "algo" else ("orderId", "origClientOrderId")
        )
        if id_key in params:
            found = self._orders.get((space, _int(params, id_key)))
        elif client_key in params:
            found = next(
                (
                    o
                    for (s, _), o in reversed(self._orders.items())
                    if s == space and o.client_id == params[client_key]
                ),
                None,
            )
        else:
            raise _ApiError(
                -1102, f"Param '{id_key}' or '{client_key}' must be sent, but both were empty/null!"
            )
        if found is None or found.vanished or found.symbol != params.get("symbol", found.symbol):
            raise _ApiError(unknown)
        return found

    def _listed(self, space: str, params: dict[str, str], open_only: bool = True) -> list[Order]:
        symbol = params.get("symbol")
        if symbol is not None:
            self.filters(symbol, "futures" if space == "algo" else space)
        found = [
            o
            for (s, _), o in self._orders.items()
            if s == space and not o.vanished and (symbol is None or o.symbol == symbol)
        ]
        return [o for o in found if o.is_open or not open_only]

    def _record(
        self, order: Order, qty: Decimal, price: Decimal, maker: bool, at: int
    ) -> tuple[Decimal, Decimal]:
        """Book a fill on the order; returns (notional, fee rate)."""
        order.executed_qty += qty
        order.cum_quote += qty * price
        order.status = "FILLED" if order.executed_qty >= order.quantity else "PARTIALLY_FILLED"
        order.update_time = at
        return qty * price, self.maker_fee if maker else self.taker_fee

    def _trades(self, market: str, params: dict[str, str]) -> list[dict[str, Any]]:
        symbol = self._symbol(market, params)
        order_id = _int(params, "orderId", -1)
        return [
            {
                "symbol": f.symbol,
                "id": f.trade_id,
                "orderId": f.order_id,
                "side": f.side,
                "price": _s(f.price),
                "qty": _s(f.qty),
                "quoteQty": _s(f.price * f.qty),
                "commission": _s(f.fee),
                "commissionAsset": f.fee_asset,
                "realizedPnl": _s(f.realized_pnl),
                "time": f.time,
                "isBuyer": f.side == "BUY",
                "isMaker": f.maker,
                "buyer": f.side == "BUY",
                "maker": f.maker,
            }
            for f in self.fills
            if f.market == market and f.symbol == symbol and order_id in (-1, f.order_id)
        ]

    # ----- matching -----------------------------------------------------------------------------
    def _match_series(self) -> dict[tuple[str, str], _Series]:
        """Per (market, symbol), the series with the shortest candles (the finest path)."""
        best: dict[tuple[str, str], tuple[float, _Series]] = {}
        for (market, symbol, _), series in self._series.items():
            bar = float(series.open_time[1] - series.open_time[0]) if len(series.rows) > 1 else math.inf
            if (market, symbol) not in best or bar < best[(market, symbol)][0]:
                best[(market, symbol)] = (bar, series)
        return {key: series for key, (_, series) in best.items()}
