"""A small local Binance REST exchange on 127.0.0.1, serving real candles and taking orders.

Market data: the public endpoints the python-binance ``Client`` uses, with Binance's
pagination semantics, a settable clock (a candle is served once it has opened, so the newest
one may still be forming), request-weight headers, and fault injection: 429/418 with
``Retry-After``, 500, slow responses (timeouts), malformed rows and unreadable bodies.

Trading (spot and USD-M futures, one-way mode, USDT quoted): signed endpoints checked like
Binance (``X-MBX-APIKEY``, HMAC-SHA256 ``signature``, ``timestamp``/``recvWindow``), symbol
filters in ``exchangeInfo``, balances, positions, and a matching engine that walks the
candles as the clock advances. Order faults: rejects, a timeout or 503 after the order was
accepted, an open order that silently vanishes, a clock skew (-1021). Tests point the real
client at it (:meth:`FakeExchange.client`); later, ``qt live --replay`` does.

Matching rules: a MARKET order fills at once at the current price (:meth:`set_price`, else
the open of the candle forming at the clock). Resting orders (stops, take-profits, limits)
meet each candle once it has closed, starting with the candle that opens at or after the
order was placed (no look-ahead into the candle it was placed in). Within one candle, stops
are matched before take-profits and limits (conservative), so when one candle touches both
legs of a position the stop fills and the other leg, having nothing left to reduce, expires.
A trigger fills at its trigger price, or at the open when the candle gapped through it.

Signed-request clock: the market clock is historical in replay, so a ``timestamp`` is valid
when it is within ``recvWindow`` of either the wall clock (plus :attr:`clock_skew_ms`) or
the market clock (``/time``'s ``serverTime``): a client that never syncs and one that synced
its offset from ``/time`` are both accepted.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import math
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote_plus, urlparse

import numpy as np
import pandas as pd

from core.candles import KLINE_COLUMNS, from_store_frame

_PREFIX = {"/api/v3": "spot", "/fapi/v1": "futures", "/fapi/v2": "futures", "/fapi/v3": "futures"}
_MAX_LIMIT = {"spot": 1000, "futures": 1500}
_KLINE_WEIGHT = 2
FAULT_KINDS = (
    "429",
    "418",
    "500",
    "503",
    "timeout",
    "malformed",
    "invalid_json",
    "reject",
    "accept_timeout",
    "vanish",
    "clock_skew",
)
ZERO = Decimal(0)
_SIGNED = {
    "order",
    "openOrders",
    "allOrders",
    "account",
    "myTrades",
    "orderList/oco",
    "leverage",
    "marginType",
    "positionRisk",
    "balance",
    "algoOrder",
    "openAlgoOrders",
    "userTrades",
}
_MAX_RECV_WINDOW = 60_000
#: Binance's messages for the codes a ``reject`` fault (or the engine) answers with.
ERROR_MESSAGES = {
    -1013: "Filter failure: LOT_SIZE",
    -1021: "Timestamp for this request is outside of the recvWindow.",
    -1022: "Signature for this request is not valid.",
    -2010: "Account has insufficient balance for requested action.",
    -2011: "Unknown order sent.",
    -2013: "Order does not exist.",
    -2019: "Margin is insufficient.",
    -2021: "Order would immediately trigger.",
    -2022: "ReduceOnly Order is rejected.",
    -4116: "ClientOrderId is duplicated.",
}
_STOPS = {"STOP_MARKET", "STOP", "STOP_LOSS", "STOP_LOSS_LIMIT"}
_TAKE_PROFITS = {"TAKE_PROFIT_MARKET", "TAKE_PROFIT", "TAKE_PROFIT_LIMIT"}
_LIMITS = {"LIMIT", "LIMIT_MAKER"}
_SPOT_TYPES = {
    "MARKET",
    "LIMIT",
    "LIMIT_MAKER",
    "STOP_LOSS",
    "STOP_LOSS_LIMIT",
    "TAKE_PROFIT",
    "TAKE_PROFIT_LIMIT",
}
_FUTURES_ALGO_TYPES = {"STOP_MARKET", "TAKE_PROFIT_MARKET", "STOP", "TAKE_PROFIT"}


@dataclass
class Fault:
    """A fault served instead of (or on top of) the next matching response.

    Attributes:
        kind: one of :data:`FAULT_KINDS`. Market data: ``429``/``418`` (with
            ``Retry-After``), ``500``, ``timeout`` (stall, then answer), ``malformed``,
            ``invalid_json``. Orders: ``reject`` (Binance error ``code``, order not placed),
            ``accept_timeout`` (the order is placed, then the answer stalls ``delay_s``),
            ``503`` (placed, then "Service Unavailable": execution status unknown),
            ``vanish`` (placed and answered, then silently gone: no longer open, and looking
            it up gives -2013), ``clock_skew`` (the next signed request fails with -1021).
        path: the request path it applies to, e.g. ``/fapi/v1/order``; ``*`` matches any
            (a ``clock_skew`` fault only ever matches signed requests).
        times: how many matching requests it affects.
        retry_after: seconds in the ``Retry-After`` header (429/418).
        delay_s: how long a ``timeout``/``accept_timeout`` fault stalls before answering.
        code: the Binance error code of a ``reject`` fault (-2010, -1013, ...).
        method: the HTTP method it applies to (``POST``, ...); None means any.
    """

    kind: str
    path: str = "/api/v3/klines"
    times: int = 1
    retry_after: int = 1
    delay_s: float = 2.0
    code: int = -2010
    method: str | None = None


@dataclass(frozen=True)
class SymbolFilters:
    """One symbol's trading filters, served in ``exchangeInfo`` and enforced on orders."""

    tick_size: Decimal
    step_size: Decimal
    min_qty: Decimal
    min_notional: Decimal


@dataclass
class Order:
    """An order as the exchange holds it (a futures conditional order has ``algo=True``).

    ``status`` uses Binance's words: NEW, PARTIALLY_FILLED, FILLED, CANCELED, EXPIRED for
    orders; NEW, CANCELED, FINISHED, EXPIRED for algo orders.
    """

    market: str
    symbol: str
    order_id: int
    client_id: str
    side: str
    type: str
    quantity: Decimal
    price: Decimal = ZERO
    stop_price: Decimal = ZERO
    time_in_force: str = "GTC"
    reduce_only: bool = False
    close_position: bool = False
    status: str = "NEW"
    executed_qty: Decimal = ZERO
    cum_quote: Decimal = ZERO
    time: int = 0
    update_time: int = 0
    algo: bool = False
    orig_type: str = ""
    actual_order_id: int | None = None
    order_list_id: int = -1
    triggered: bool = False
    vanished: bool = False

    @property
    def is_open(self) -> bool:
        """Still working on the venue (and not silently vanished)."""
        return self.status in ("NEW", "PARTIALLY_FILLED") and not self.vanished

    @property
    def avg_price(self) -> Decimal:
        """Average fill price (0 before any fill)."""
        return self.cum_quote / self.executed_qty if self.executed_qty else ZERO


@dataclass(frozen=True)
class Fill:
    """One trade: the fee is charged in ``fee_asset`` (spot: what was received; futures: USDT)."""

    trade_id: int
    market: str
    symbol: str
    order_id: int
    client_id: str
    side: str
    price: Decimal
    qty: Decimal
    fee: Decimal
    fee_asset: str
    maker: bool
    realized_pnl: Decimal
    time: int


@dataclass
class Position:
    """A USD-M futures position in one-way mode: ``amount`` > 0 long, < 0 short."""

    symbol: str
    amount: Decimal = ZERO
    entry_price: Decimal = ZERO
    leverage: int = 20
    margin_type: str = "CROSSED"
    update_time: int = 0


@dataclass
class _Series:
    open_time: np.ndarray  # int64 ms, sorted
    rows: list[list[Any]]  # Binance's 12-field kline rows
    close_time: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))


class _ApiError(Exception):
    def __init__(self, code: int, msg: str | None = None, status: int = 400) -> None:
        super().__init__(msg)
        self.code, self.msg, self.status = code, msg or ERROR_MESSAGES.get(code, "error"), status


class FakeExchange:
    """Local Binance server. Use as a context manager or ``start()``/``stop()``.

    Args:
        now_ms: the exchange clock; None means just after the newest candle closed. Setting
            :attr:`now_ms` later (or :meth:`advance`) matches resting orders against every
            candle that closed in between.
        host: address to bind (loopback only).
        api_key: the key signed requests must send in ``X-MBX-APIKEY``.
        api_secret: the HMAC-SHA256 secret of ``signature``.
        maker_bps: fee of resting (limit) fills, in basis points of the notional.
        taker_bps: fee of market and triggered fills.
        quote_balance: starting USDT of the spot account and of the futures wallet.
    """

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
    @property
    def now_ms(self) -> int | None:
        """The set clock (None: just after the newest candle). Setting it runs the matching."""
        return self._now_ms

    @now_ms.setter
    def now_ms(self, value: int | None) -> None:
        with self._lock:
            self._now_ms = value
            self._match()

    def clock(self) -> int:
        """The exchange's current time in ms."""
        if self._now_ms is not None:
            return self._now_ms
        newest = [int(s.rows[-1][6]) for s in self._series.values() if s.rows]
        return max(newest) + 1 if newest else int(time.time() * 1000)

    def advance(self, ms: int) -> None:
        """Move the clock forward ``ms`` and match resting orders on the candles passed."""
        self.now_ms = self.clock() + ms

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

    def free(self, asset: str) -> Decimal:
        """A spot asset's balance not locked by open orders."""
        return self.spot_balances.get(asset, ZERO) - self._locked(asset)

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

    # ----- server -----------------------------------------------------------------------
    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        if self._server is None:
            raise RuntimeError("the fake exchange is not started")
        return f"http://{self.host}:{self._server.server_address[1]}"

    @property
    def spot_url(self) -> str:
        """Value for python-binance's ``API_URL`` (``QT_BINANCE_SPOT_URL``)."""
        return f"{self.url}/api"

    @property
    def futures_url(self) -> str:
        """Value for python-binance's ``FUTURES_URL`` (``QT_BINANCE_FUTURES_URL``)."""
        return f"{self.url}/fapi"

    def client(
        self, api_key: str | None = None, api_secret: str | None = None, timeout_s: float = 5.0
    ) -> Any:
        """A real python-binance ``Client`` pointed at this exchange (spot and futures)."""
        from binance.client import Client

        client = Client(api_key or self.api_key, api_secret or self.api_secret, ping=False)
        client.API_URL = client.API_TESTNET_URL = self.spot_url
        client.FUTURES_URL = client.FUTURES_TESTNET_URL = self.futures_url
        client.REQUEST_TIMEOUT = timeout_s
        return client

    def start(self) -> FakeExchange:
        """Listen on a free port in a daemon thread."""
        handler = type("Handler", (_Handler,), {"exchange": self})
        self._server = ThreadingHTTPServer((self.host, 0), handler)
        self._server.daemon_threads = True
        server = self._server
        self._thread = threading.Thread(target=lambda: server.serve_forever(poll_interval=0.05), daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeExchange:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ----- request handling ---------------------------------------------------------------
    def handle(
        self,
        path: str,
        params: dict[str, str],
        method: str = "GET",
        headers: dict[str, str] | None = None,
        payload: str = "",
    ) -> tuple[int, dict[str, str], Any]:
        """Answer one request: ``(status, headers, body)`` — body JSON-able, or str sent raw.

        ``params`` merges the query string and the form body; ``payload`` is both as sent
        (Binance's ``totalParams``, what the signature covers); ``headers`` keys are lower case.
        """
        market, endpoint = _split(path)
        signed = endpoint in _SIGNED
        with self._lock:
            self.requests.append((path, params))
            fault = self._take_fault(path, method, signed)
        out = {"X-MBX-USED-WEIGHT-1M": str(self._add_weight(path))}
        kind = fault.kind if fault is not None else ""
        if fault is not None and kind in ("429", "418"):
            out["Retry-After"] = str(fault.retry_after)
            return int(kind), out, {"code": -1003, "msg": "Too many requests; slow down."}
        if kind == "500":
            return 500, out, "Internal Server Error"
        if fault is not None and kind == "timeout":
            time.sleep(fault.delay_s)
        if kind == "invalid_json":
            return 200, out, "<html>gateway error</html>"
        if kind == "clock_skew":
            return 400, out, {"code": -1021, "msg": ERROR_MESSAGES[-1021]}
        if fault is not None and kind == "reject":
            return 400, out, {"code": fault.code, "msg": ERROR_MESSAGES.get(fault.code, "Order rejected.")}
        if market is None:
            return 404, out, {"code": -1, "msg": f"unknown path {path}"}
        try:
            with self._lock:
                if signed:
                    self._authenticate(params, headers or {}, payload)
                status, body = self._route(market, endpoint, method, path, params)
                if kind == "vanish" and isinstance(body, dict):
                    self._vanish_answered(market, body)
        except _ApiError as err:
            return err.status, out, {"code": err.code, "msg": err.msg}
        if fault is not None and kind == "accept_timeout":
            time.sleep(fault.delay_s)
        if kind == "503":
            msg = "Timeout waiting for response from backend server. "
            msg += "Send status unknown; execution status unknown."
            return 503, out, {"code": -1007, "msg": msg}
        if kind == "malformed" and isinstance(body, list) and len(body) > 1:
            body[1] = [body[1][0], "not-a-number", *body[1][2:6]]  # short row, bad price
        return status, out, body

    def _take_fault(self, path: str, method: str, signed: bool) -> Fault | None:
        for fault in self._faults:
            if fault.path not in (path, "*") or (fault.method or method).upper() != method.upper():
                continue
            if fault.kind == "clock_skew" and not signed:
                continue
            fault.times -= 1
            if fault.times <= 0:
                self._faults.remove(fault)
            return fault
        return None

    def _add_weight(self, path: str) -> int:
        if self.used_weight_override is not None:
            return self.used_weight_override
        minute = int(time.time() // 60)
        with self._lock:
            start, used = self._weight
            used = (used if start == minute else 0) + (_KLINE_WEIGHT if path.endswith("klines") else 1)
            self._weight = (minute, used)
        return used

    def _authenticate(self, params: dict[str, str], headers: dict[str, str], payload: str) -> None:
        """Binance's checks of a signed request, in its order: key, signature, timestamp."""
        key = headers.get("x-mbx-apikey")
        if not key:
            raise _ApiError(-2014, "API-key format invalid.", 401)
        if not hmac.compare_digest(key, self.api_key):
            raise _ApiError(-2015, "Invalid API-key, IP, or permissions for action.", 401)
        signature = params.get("signature", "")
        if not signature:
            raise _ApiError(-1102, _mandatory("signature"))
        signed_part = "&".join(p for p in payload.split("&") if not p.startswith("signature="))
        candidates = {signed_part, unquote_plus(signed_part)}  # values as sent, or as the client signed them
        if not any(hmac.compare_digest(signature, self._sign(c)) for c in candidates):
            raise _ApiError(-1022)
        stamp = _int(params, "timestamp")
        window = _int(params, "recvWindow", 5000)
        if window > _MAX_RECV_WINDOW:
            raise _ApiError(-1131, f"recvWindow must be less than {_MAX_RECV_WINDOW}")
        clocks = (int(time.time() * 1000) + self.clock_skew_ms, self.clock())
        if not any(stamp < now + 1000 and now - stamp <= window for now in clocks):
            ahead = all(stamp >= now + 1000 for now in clocks)
            msg = "Timestamp for this request was 1000ms ahead of the server's time." if ahead else None
            raise _ApiError(-1021, msg)

    def _sign(self, text: str) -> str:
        return hmac.new(self.api_secret.encode(), text.encode(), hashlib.sha256).hexdigest()

    def _vanish_answered(self, market: str, body: dict[str, Any]) -> None:
        key = ("algo", int(body["algoId"])) if "algoId" in body else (market, int(body.get("orderId", -1)))
        if key in self._orders:
            self._orders[key].vanished = True

    def _route(
        self, market: str, endpoint: str, method: str, path: str, params: dict[str, str]
    ) -> tuple[int, Any]:
        self._match()
        now = self.clock()
        if method == "GET" and endpoint in ("ping", "time", "exchangeInfo", "klines", "ticker/24hr"):
            return self._market_data(market, endpoint, params, now)
        handler = self._routes().get((market, method, endpoint))
        if handler is None:
            raise _ApiError(-1, f"unknown endpoint {method} {path}")
        return 200, handler(params, path)

    def _routes(self) -> dict[tuple[str, str, str], Callable[[dict[str, str], str], Any]]:
        return {
            ("spot", "POST", "order"): self._spot_new_order,
            ("spot", "GET", "order"): lambda p, _: self._spot_json(self._find("spot", p)),
            ("spot", "DELETE", "order"): self._spot_cancel,
            ("spot", "GET", "openOrders"): lambda p, _: [self._spot_json(o) for o in self._listed("spot", p)],
            ("spot", "GET", "allOrders"): lambda p, _: [
                self._spot_json(o) for o in self._listed("spot", p, False)
            ],
            ("spot", "GET", "account"): lambda p, _: self._spot_account(),
            ("spot", "GET", "myTrades"): lambda p, _: self._trades("spot", p),
            ("spot", "POST", "orderList/oco"): self._spot_new_oco,
            ("futures", "POST", "order"): self._futures_new_order,
            ("futures", "GET", "order"): lambda p, _: self._futures_json(self._find("futures", p)),
            ("futures", "DELETE", "order"): self._futures_cancel,
            ("futures", "GET", "openOrders"): lambda p, _: [
                self._futures_json(o) for o in self._listed("futures", p)
            ],
            ("futures", "GET", "allOrders"): lambda p, _: [
                self._futures_json(o) for o in self._listed("futures", p, False)
            ],
            ("futures", "POST", "algoOrder"): self._futures_new_algo,
            ("futures", "GET", "algoOrder"): lambda p, _: self._algo_json(self._find("algo", p)),
            ("futures", "DELETE", "algoOrder"): self._futures_cancel_algo,
            ("futures", "GET", "openAlgoOrders"): lambda p, _: [
                self._algo_json(o) for o in self._listed("algo", p)
            ],
            ("futures", "POST", "leverage"): self._futures_leverage,
            ("futures", "POST", "marginType"): self._futures_margin_type,
            ("futures", "GET", "positionRisk"): self._futures_positions,
            ("futures", "GET", "balance"): lambda p, _: self._futures_balance(),
            ("futures", "GET", "userTrades"): lambda p, _: self._trades("futures", p),
        }

    # ----- market data ----------------------------------------------------------------------
    def _market_data(self, market: str, endpoint: str, params: dict[str, str], now: int) -> tuple[int, Any]:
        if endpoint == "ping":
            return 200, {}
        if endpoint == "time":
            return 200, {"serverTime": now}
        if endpoint == "exchangeInfo":
            return 200, self._exchange_info(market, now)
        if endpoint == "klines":
            return 200, self._klines(market, params, now)
        tickers = [
            self._ticker(sym, s, now)
            for (m, sym, ival), s in self._series.items()
            if m == market and ival == "1h"
        ]
        if "symbol" in params:
            match = [t for t in tickers if t["symbol"] == params["symbol"]]
            if not match:
                raise _ApiError(-1121, "Invalid symbol.")
            return 200, match[0]
        return 200, tickers

    def _exchange_info(self, market: str, now: int) -> dict[str, Any]:
        symbols = sorted({sym for (m, sym, _) in self._series if m == market})
        return {
            "timezone": "UTC",
            "serverTime": now,
            "rateLimits": [
                {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": 6000}
            ],
            "symbols": [self._symbol_info(market, s) for s in symbols],
        }

    def _symbol_info(self, market: str, symbol: str) -> dict[str, Any]:
        base, quote = _assets(symbol)
        f = self._filters[(market, symbol)]
        price_filter = {
            "filterType": "PRICE_FILTER",
            "minPrice": _s(f.tick_size),
            "maxPrice": "1000000",
            "tickSize": _s(f.tick_size),
        }
        lot = {"minQty": _s(f.min_qty), "maxQty": "9000", "stepSize": _s(f.step_size)}
        info: dict[str, Any] = {"symbol": symbol, "status": "TRADING", "baseAsset": base, "quoteAsset": quote}
        if market == "spot":
            notional = {"filterType": "NOTIONAL", "minNotional": _s(f.min_notional), "applyMinToMarket": True}
            notional |= {"maxNotional": "9000000", "applyMaxToMarket": False, "avgPriceMins": 5}
            info |= {"baseAssetPrecision": 8, "quotePrecision": 8, "quoteAssetPrecision": 8}
            info |= {"orderTypes": sorted(_SPOT_TYPES), "ocoAllowed": True, "isSpotTradingAllowed": True}
            filters = [price_filter, {"filterType": "LOT_SIZE", **lot}, notional]
        else:
            info |= {"pair": symbol, "contractType": "PERPETUAL", "marginAsset": quote}
            info |= {"pricePrecision": _decimals(f.tick_size), "quantityPrecision": _decimals(f.step_size)}
            info |= {"orderTypes": ["LIMIT", "MARKET", *sorted(_FUTURES_ALGO_TYPES)], "timeInForce": ["GTC"]}
            notional = {"filterType": "MIN_NOTIONAL", "notional": _s(f.min_notional)}
            filters = [
                price_filter,
                {"filterType": "LOT_SIZE", **lot},
                {"filterType": "MARKET_LOT_SIZE", **lot},
            ]
            filters.append(notional)
        return info | {"filters": filters}

    def _klines(self, market: str, params: dict[str, str], now: int) -> list[list[Any]]:
        symbol, interval = params.get("symbol", ""), params.get("interval", "")
        series = self._series.get((market, symbol, interval))
        if series is None:
            if not any(sym == symbol for (_, sym, _) in self._series):
                raise _ApiError(-1121, "Invalid symbol.")
            raise _ApiError(-1120, "Invalid interval.")
        limit = int(params.get("limit", 500))
        if not 1 <= limit <= _MAX_LIMIT[market]:
            raise _ApiError(-1130, f"Invalid limit {limit}; max {_MAX_LIMIT[market]}.")
        visible = int(np.searchsorted(series.open_time, now, side="right"))  # opened by now
        end = visible
        if "endTime" in params:
            end = min(end, int(np.searchsorted(series.open_time, int(params["endTime"]), side="right")))
        if "startTime" in params:
            lo = int(np.searchsorted(series.open_time, int(params["startTime"]), side="left"))
            return [list(r) for r in series.rows[lo : min(end, lo + limit)]]
        return [list(r) for r in series.rows[max(0, end - limit) : end]]

    def _ticker(self, symbol: str, series: _Series, now: int) -> dict[str, Any]:
        visible = int(np.searchsorted(series.open_time, now, side="right"))
        day = series.rows[max(0, visible - 24) : visible]
        quote = sum(float(r[4]) * float(r[5]) for r in day)
        return {
            "symbol": symbol,
            "lastPrice": day[-1][4] if day else "0",
            "volume": str(sum(float(r[5]) for r in day)),
            "quoteVolume": str(quote),
            "openTime": day[0][0] if day else now,
            "closeTime": day[-1][6] if day else now,
        }

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

    # ----- spot ---------------------------------------------------------------------------------
    def _spot_new_order(self, params: dict[str, str], path: str) -> dict[str, Any]:
        symbol, side, kind = self._order_basics("spot", params)
        if kind not in _SPOT_TYPES:
            raise _ApiError(-1116, "Invalid orderType.")
        client_id = self._client_id("spot", params.get("newClientOrderId"), -2010, "Duplicate order sent.")
        now_price, f = self.price(symbol, "spot"), self.filters(symbol, "spot")
        qty, quote_qty = _dec(params, "quantity"), _dec(params, "quoteOrderQty")
        if qty is None and quote_qty is not None and kind == "MARKET":
            qty = (quote_qty / now_price // f.step_size) * f.step_size
        order = Order(
            "spot",
            symbol,
            0,
            client_id,
            side,
            kind,
            _required(qty, "quantity"),
            price=_dec(params, "price") or ZERO,
            stop_price=_dec(params, "stopPrice") or ZERO,
            time_in_force=params.get("timeInForce", "GTC"),
        )
        self._check_spot(order, now_price)
        self._place(order)
        crosses = kind in _LIMITS and (
            order.price >= now_price if side == "BUY" else order.price <= now_price
        )
        if kind == "MARKET" or crosses:
            self._spot_fill(order, order.quantity, now_price, False, order.time)
        default = "FULL" if kind in ("MARKET", "LIMIT") else "ACK"
        return self._spot_answer(order, params.get("newOrderRespType", default))

    def _check_spot(self, order: Order, now_price: Decimal) -> None:
        """Filters, trigger side and funds, with Binance's spot codes."""
        f = self.filters(order.symbol, "spot")
        needs_price = order.type in _LIMITS or order.type.endswith("_LIMIT")
        if needs_price and order.price <= 0:
            raise _ApiError(-1102, _mandatory("price"))
        if order.type not in _LIMITS and order.type != "MARKET" and order.stop_price <= 0:
            raise _ApiError(-1102, _mandatory("stopPrice"))
        for value in (order.price, order.stop_price):
            if value < 0 or (value and value % f.tick_size):
                raise _ApiError(-1013, "Filter failure: PRICE_FILTER")
        if order.quantity < f.min_qty or (order.quantity - f.min_qty) % f.step_size:
            raise _ApiError(-1013, "Filter failure: LOT_SIZE")
        ref = order.price or order.stop_price or now_price
        if order.quantity * ref < f.min_notional:
            raise _ApiError(-1013, "Filter failure: NOTIONAL")
        if order.type == "LIMIT_MAKER" and (
            order.price >= now_price if order.side == "BUY" else order.price <= now_price
        ):
            raise _ApiError(-2010, "Order would immediately match and take.")
        if order.stop_price and _touch_now(order, now_price):
            raise _ApiError(-2010, "Order would trigger immediately.")
        base, quote = _assets(order.symbol)
        if order.side == "SELL" and order.quantity > self.free(base):
            raise _ApiError(-2010)
        if order.side == "BUY" and order.quantity * ref > self.free(quote):
            raise _ApiError(-2010)

    def _locked(self, asset: str) -> Decimal:
        locked, lists = ZERO, set()
        for o in self.open_orders("spot"):
            base, quote = _assets(o.symbol)
            if o.order_list_id >= 0:
                if o.order_list_id in lists:
                    continue
                lists.add(o.order_list_id)
            left = o.quantity - o.executed_qty
            if o.side == "SELL" and asset == base:
                locked += left
            elif o.side == "BUY" and asset == quote:
                locked += left * (o.price or o.stop_price)
        return locked

    def _spot_fill(self, order: Order, qty: Decimal, price: Decimal, maker: bool, at: int) -> None:
        base, quote = _assets(order.symbol)
        notional, rate = self._record(order, qty, price, maker, at)
        bal = self.spot_balances
        if order.side == "BUY":
            fee, fee_asset = qty * rate, base
            bal[quote] = bal.get(quote, ZERO) - notional
            bal[base] = bal.get(base, ZERO) + qty - fee
        else:
            fee, fee_asset = notional * rate, quote
            bal[base] = bal.get(base, ZERO) - qty
            bal[quote] = bal.get(quote, ZERO) + notional - fee
        self.fills.append(
            Fill(
                next(self._ids),
                "spot",
                order.symbol,
                order.order_id,
                order.client_id,
                order.side,
                price,
                qty,
                fee,
                fee_asset,
                maker,
                ZERO,
                at,
            )
        )
        if order.order_list_id >= 0:
            for other in self.open_orders("spot", order.symbol):
                if other.order_list_id == order.order_list_id:
                    other.status, other.update_time = "EXPIRED", at

    def _spot_cancel(self, params: dict[str, str], path: str) -> dict[str, Any]:
        order = self._find("spot", params, unknown=-2011)
        if not order.is_open:
            raise _ApiError(-2011)
        legs = [
            o
            for o in self.open_orders("spot")
            if order.order_list_id >= 0 and o.order_list_id == order.order_list_id
        ]
        for o in legs or [order]:
            o.status, o.update_time = "CANCELED", self.clock()
        return self._spot_json(order) | {"origClientOrderId": order.client_id}

    def _spot_new_oco(self, params: dict[str, str], path: str) -> dict[str, Any]:
        symbol, side = self._symbol("spot", params), _need(params, "side").upper()
        qty, now_price = _required(_dec(params, "quantity"), "quantity"), self.price(symbol, "spot")
        list_id = next(self._ids)
        legs = []
        for leg in ("above", "below"):
            kind = _need(params, f"{leg}Type").upper()
            client_id = self._client_id(
                "spot", params.get(f"{leg}ClientOrderId"), -2010, "Duplicate order sent."
            )
            legs.append(
                Order(
                    "spot",
                    symbol,
                    0,
                    client_id,
                    side,
                    kind,
                    qty,
                    price=_dec(params, f"{leg}Price") or ZERO,
                    stop_price=_dec(params, f"{leg}StopPrice") or ZERO,
                    order_list_id=list_id,
                )
            )
        for order in legs:
            self._check_spot(order, now_price)
        for order in legs:
            self._place(order)
        return {
            "orderListId": list_id,
            "contingencyType": "OCO",
            "listStatusType": "EXEC_STARTED",
            "listOrderStatus": "EXECUTING",
            "listClientOrderId": params.get("listClientOrderId", f"fake-list-{list_id}"),
            "transactionTime": self.clock(),
            "symbol": symbol,
            "orders": [{"symbol": symbol, "orderId": o.order_id, "clientOrderId": o.client_id} for o in legs],
            "orderReports": [self._spot_json(o) for o in legs],
        }

    def _spot_account(self) -> dict[str, Any]:
        rates = {"maker": _s(self.maker_fee), "taker": _s(self.taker_fee), "buyer": "0", "seller": "0"}
        return {
            "makerCommission": int(self.maker_fee * 10_000),
            "takerCommission": int(self.taker_fee * 10_000),
            "commissionRates": rates,
            "canTrade": True,
            "canWithdraw": True,
            "canDeposit": True,
            "updateTime": self.clock(),
            "accountType": "SPOT",
            "balances": [
                {"asset": a, "free": _s(self.free(a)), "locked": _s(self._locked(a))}
                for a in sorted(self.spot_balances)
            ],
            "permissions": ["SPOT"],
        }

    def _spot_json(self, o: Order) -> dict[str, Any]:
        return {
            "symbol": o.symbol,
            "orderId": o.order_id,
            "orderListId": o.order_list_id,
            "clientOrderId": o.client_id,
            "price": _s(o.price),
            "origQty": _s(o.quantity),
            "executedQty": _s(o.executed_qty),
            "cummulativeQuoteQty": _s(o.cum_quote),
            "status": o.status,
            "timeInForce": o.time_in_force,
            "type": o.type,
            "side": o.side,
            "stopPrice": _s(o.stop_price),
            "time": o.time,
            "updateTime": o.update_time,
            "isWorking": o.type in _LIMITS or o.triggered or o.type == "MARKET",
            "workingTime": o.time,
            "origQuoteOrderQty": "0",
            "selfTradePreventionMode": "EXPIRE_MAKER",
        }

    def _spot_answer(self, o: Order, resp_type: str) -> dict[str, Any]:
        if resp_type == "ACK":
            return {
                "symbol": o.symbol,
                "orderId": o.order_id,
                "orderListId": -1,
                "clientOrderId": o.client_id,
                "transactTime": o.time,
            }
        answer = self._spot_json(o) | {"transactTime": o.time}
        if resp_type == "FULL":
            answer["fills"] = [
                {
                    "price": _s(f.price),
                    "qty": _s(f.qty),
                    "commission": _s(f.fee),
                    "commissionAsset": f.fee_asset,
                    "tradeId": f.trade_id,
                }
                for f in self.fills
                if f.market == "spot" and f.order_id == o.order_id
            ]
        return answer

    # ----- USD-M futures ------------------------------------------------------------------------
    def _futures_new_order(self, params: dict[str, str], path: str) -> dict[str, Any]:
        symbol, side, kind = self._order_basics("futures", params)
        if kind in _FUTURES_ALGO_TYPES:
            msg = (
                "Order type not supported for this endpoint. Please use the Algo Order API endpoints instead."
            )
            raise _ApiError(-4120, msg)
        if kind not in ("MARKET", "LIMIT"):
            raise _ApiError(-1116, "Invalid orderType.")
        client_id = self._client_id("futures", params.get("newClientOrderId"), -4116)
        order = Order(
            "futures",
            symbol,
            0,
            client_id,
            side,
            kind,
            _required(_dec(params, "quantity"), "quantity"),
            price=_dec(params, "price") or ZERO,
            reduce_only=_flag(params, "reduceOnly"),
            time_in_force=params.get("timeInForce", "GTC"),
        )
        if kind == "LIMIT" and order.price <= 0:
            raise _ApiError(-1102, _mandatory("price"))
        now_price = self.price(symbol, "futures")
        self._check_futures(order, order.price, now_price)
        crosses = kind == "LIMIT" and (
            order.price >= now_price if side == "BUY" else order.price <= now_price
        )
        qty = self._fillable(order, now_price) if kind == "MARKET" or crosses else order.quantity
        self._place(order)
        if kind == "MARKET" or crosses:
            self._futures_fill(order, qty, now_price, False, order.time)
        return self._futures_json(order, ack=params.get("newOrderRespType", "ACK") == "ACK")

    def _check_futures(self, order: Order, price: Decimal, now_price: Decimal) -> None:
        f = self.filters(order.symbol, "futures")
        if price < 0 or (price and price % f.tick_size):
            raise _ApiError(-4014, "Price not increased by tick size.")
        if order.close_position:
            return
        if order.quantity <= 0:
            raise _ApiError(-4003, "Quantity less than or equal to zero.")
        if order.quantity % f.step_size:
            raise _ApiError(-1111, "Precision is over the maximum defined for this asset.")
        if order.quantity < f.min_qty:
            raise _ApiError(-4005, f"Quantity less than min quantity {_s(f.min_qty)}.")
        if not order.reduce_only and order.quantity * (price or now_price) < f.min_notional:
            least = _s(f.min_notional)
            msg = f"Order's notional must be no smaller than {least} (unless you choose reduce only)."
            raise _ApiError(-4164, msg)

    def _fillable(self, order: Order, price: Decimal) -> Decimal:
        """The quantity a fill now would take: reduce-only capped; margin checked (-2019)."""
        pos = self.position(order.symbol)
        signed = order.quantity if order.side == "BUY" else -order.quantity
        if order.reduce_only:
            if pos.amount == 0 or (pos.amount > 0) == (signed > 0):
                raise _ApiError(-2022)
            return min(order.quantity, abs(pos.amount))
        new_amount = pos.amount + signed
        if abs(new_amount) > abs(pos.amount):
            others = sum(
                (abs(p.amount) * p.entry_price / p.leverage for p in self.positions.values() if p is not pos),
                ZERO,
            )
            need = abs(new_amount) * price / pos.leverage + order.quantity * price * self.taker_fee
            if need > self.futures_wallet + self._unrealized() - others:
                raise _ApiError(-2019)
        return order.quantity

    def _unrealized(self, symbol: str | None = None) -> Decimal:
        total = ZERO
        for p in self.positions.values():
            if p.amount and (symbol is None or p.symbol == symbol):
                total += p.amount * (self.price(p.symbol, "futures") - p.entry_price)
        return total

    def _futures_fill(self, order: Order, qty: Decimal, price: Decimal, maker: bool, at: int) -> None:
        pos = self.position(order.symbol)
        signed = qty if order.side == "BUY" else -qty
        realized, new_amount = ZERO, pos.amount + signed
        if pos.amount and (pos.amount > 0) != (signed > 0):
            closing = min(qty, abs(pos.amount))
            realized = closing * (price - pos.entry_price) * (1 if pos.amount > 0 else -1)
            if new_amount == 0:
                pos.entry_price = ZERO
            elif (new_amount > 0) != (pos.amount > 0):
                pos.entry_price = price
        else:
            pos.entry_price = (abs(pos.amount) * pos.entry_price + qty * price) / abs(new_amount)
        notional, rate = self._record(order, qty, price, maker, at)
        order.status = "FILLED"  # a reduce-only order capped to the position is done
        fee = notional * rate
        pos.amount, pos.update_time = new_amount, at
        self.futures_wallet += realized - fee
        self.fills.append(
            Fill(
                next(self._ids),
                "futures",
                order.symbol,
                order.order_id,
                order.client_id,
                order.side,
                price,
                qty,
                fee,
                "USDT",
                maker,
                realized,
                at,
            )
        )

    def _futures_new_algo(self, params: dict[str, str], path: str) -> dict[str, Any]:
        if _need(params, "algoType").upper() != "CONDITIONAL":
            raise _ApiError(-1116, "Invalid algoType.")
        symbol, side, kind = self._order_basics("futures", params)
        if kind not in _FUTURES_ALGO_TYPES:
            raise _ApiError(-1116, "Invalid orderType.")
        client_id = self._client_id("algo", params.get("clientAlgoId"), -4116)
        close_position, reduce_only = _flag(params, "closePosition"), _flag(params, "reduceOnly")
        qty = _dec(params, "quantity")
        for sent, name in ((qty is not None, "quantity"), (reduce_only, "reduceOnly")):
            if close_position and sent:
                raise _ApiError(-1106, f"Parameter '{name}' sent when not required.")
        order = Order(
            "futures",
            symbol,
            0,
            client_id,
            side,
            kind,
            ZERO if close_position else _required(qty, "quantity"),
            price=_dec(params, "price") or ZERO,
            stop_price=_required(_dec(params, "triggerPrice"), "triggerPrice"),
            reduce_only=reduce_only,
            close_position=close_position,
            algo=True,
            time_in_force=params.get("timeInForce", "GTC"),
        )
        if order.stop_price <= 0:
            raise _ApiError(-4013, "Price less than min price.")
        now_price = self.price(symbol, "futures")
        self._check_futures(order, order.stop_price, now_price)
        if _touch_now(order, now_price):
            raise _ApiError(-2021)
        return self._algo_json(self._place(order))

    def _futures_cancel(self, params: dict[str, str], path: str) -> dict[str, Any]:
        order = self._find("futures", params, unknown=-2011)
        if not order.is_open:
            raise _ApiError(-2011)
        order.status, order.update_time = "CANCELED", self.clock()
        return self._futures_json(order)

    def _futures_cancel_algo(self, params: dict[str, str], path: str) -> dict[str, Any]:
        order = self._find("algo", params, unknown=-2011)
        if not order.is_open:
            raise _ApiError(-2011)
        order.status, order.update_time = "CANCELED", self.clock()
        return {"algoId": order.order_id, "clientAlgoId": order.client_id, "code": "200", "msg": "success"}

    def _futures_leverage(self, params: dict[str, str], path: str) -> dict[str, Any]:
        symbol, leverage = self._symbol("futures", params), _int(params, "leverage")
        if not 1 <= leverage <= 125:
            raise _ApiError(-4028, f"Leverage {leverage} is not valid")
        self.position(symbol).leverage = leverage
        return {"leverage": leverage, "maxNotionalValue": "1000000", "symbol": symbol}

    def _futures_margin_type(self, params: dict[str, str], path: str) -> dict[str, Any]:
        symbol, wanted = self._symbol("futures", params), _need(params, "marginType").upper()
        if wanted not in ("ISOLATED", "CROSSED"):
            raise _ApiError(-1116, "Invalid marginType.")
        pos = self.position(symbol)
        if pos.margin_type == wanted:
            raise _ApiError(-4046, "No need to change margin type.")
        if pos.amount:
            raise _ApiError(-4048, "Margin type cannot be changed if there exists position.")
        if self.open_orders("futures", symbol):
            raise _ApiError(-4047, "Margin type cannot be changed if there exists open orders.")
        pos.margin_type = wanted
        return {"code": 200, "msg": "success"}

    def _futures_positions(self, params: dict[str, str], path: str) -> list[dict[str, Any]]:
        wanted = params.get("symbol")
        symbols = sorted({s for (m, s) in self._filters if m == "futures"})
        if wanted is not None:
            self.filters(wanted, "futures")
            symbols = [wanted]
        answer = []
        for symbol in symbols:
            pos = self.position(symbol)
            if "/v3/" in path and not pos.amount and not self.open_orders("futures", symbol):
                continue  # v3 lists only symbols with a position or open orders
            mark = self.price(symbol, "futures")
            margin = abs(pos.amount) * mark / pos.leverage
            row = {
                "symbol": symbol,
                "positionSide": "BOTH",
                "positionAmt": _s(pos.amount),
                "entryPrice": _s(pos.entry_price),
                "breakEvenPrice": _s(pos.entry_price),
                "markPrice": _s(mark),
                "unRealizedProfit": _s(pos.amount * (mark - pos.entry_price)),
                "liquidationPrice": "0",
                "notional": _s(pos.amount * mark),
                "marginAsset": "USDT",
                "initialMargin": _s(margin),
                "positionInitialMargin": _s(margin),
                "isolatedMargin": "0",
                "updateTime": pos.update_time,
            }
            if "/v2/" in path:
                row |= {"leverage": str(pos.leverage), "marginType": pos.margin_type.lower()}
            answer.append(row)
        return answer

    def _futures_balance(self) -> list[dict[str, Any]]:
        margin = sum((abs(p.amount) * p.entry_price / p.leverage for p in self.positions.values()), ZERO)
        upnl = self._unrealized()
        available = self.futures_wallet + upnl - margin
        return [
            {
                "accountAlias": "fake",
                "asset": "USDT",
                "balance": _s(self.futures_wallet),
                "crossWalletBalance": _s(self.futures_wallet),
                "crossUnPnl": _s(upnl),
                "availableBalance": _s(available),
                "maxWithdrawAmount": _s(available),
                "marginAvailable": True,
                "updateTime": self.clock(),
            }
        ]

    def _futures_json(self, o: Order, ack: bool = False) -> dict[str, Any]:
        done = not ack  # an ACK answer shows the order as accepted, before its fill
        return {
            "orderId": o.order_id,
            "symbol": o.symbol,
            "status": o.status if done else "NEW",
            "clientOrderId": o.client_id,
            "price": _s(o.price),
            "avgPrice": _s(o.avg_price) if done else "0.00",
            "origQty": _s(o.quantity),
            "executedQty": _s(o.executed_qty) if done else "0",
            "cumQty": _s(o.executed_qty) if done else "0",
            "cumQuote": _s(o.cum_quote) if done else "0",
            "timeInForce": o.time_in_force,
            "type": o.type,
            "reduceOnly": o.reduce_only,
            "closePosition": o.close_position,
            "side": o.side,
            "positionSide": "BOTH",
            "stopPrice": _s(o.stop_price),
            "workingType": "CONTRACT_PRICE",
            "priceProtect": False,
            "origType": o.orig_type,
            "time": o.time,
            "updateTime": o.update_time,
        }

    def _algo_json(self, o: Order) -> dict[str, Any]:
        return {
            "algoId": o.order_id,
            "clientAlgoId": o.client_id,
            "algoType": "CONDITIONAL",
            "orderType": o.type,
            "symbol": o.symbol,
            "side": o.side,
            "positionSide": "BOTH",
            "timeInForce": o.time_in_force,
            "quantity": _s(o.quantity),
            "algoStatus": o.status,
            "triggerPrice": _s(o.stop_price),
            "price": _s(o.price),
            "workingType": "CONTRACT_PRICE",
            "closePosition": o.close_position,
            "priceProtect": False,
            "reduceOnly": o.reduce_only,
            "createTime": o.time,
            "updateTime": o.update_time,
            "triggerTime": o.update_time if o.triggered else 0,
            "actualOrderId": "" if o.actual_order_id is None else str(o.actual_order_id),
            "actualPrice": _s(o.avg_price),
            "executedQty": _s(o.executed_qty),
        }

    # ----- matching -----------------------------------------------------------------------------
    def _match_series(self) -> dict[tuple[str, str], _Series]:
        """Per (market, symbol), the series with the shortest candles (the finest path)."""
        best: dict[tuple[str, str], tuple[float, _Series]] = {}
        for (market, symbol, _), series in self._series.items():
            bar = float(series.open_time[1] - series.open_time[0]) if len(series.rows) > 1 else math.inf
            if (market, symbol) not in best or bar < best[(market, symbol)][0]:
                best[(market, symbol)] = (bar, series)
        return {key: series for key, (_, series) in best.items()}

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


def _touch(order: Order, o: Decimal, h: Decimal, low: Decimal) -> tuple[Decimal, bool] | None:
    """Where a candle (open, high, low) fills a resting order, and whether as maker; None: untouched."""
    buy = order.side == "BUY"
    if order.type in _LIMITS or order.triggered:
        if buy and low <= order.price:
            return min(o, order.price), o >= order.price
        if not buy and h >= order.price:
            return max(o, order.price), o <= order.price
        return None
    rising = (order.type in _STOPS) == buy  # a buy stop or a sell take-profit triggers on the way up
    if rising and h >= order.stop_price:
        return max(o, order.stop_price), False
    if not rising and low <= order.stop_price:
        return min(o, order.stop_price), False
    return None


def _touch_now(order: Order, price: Decimal) -> bool:
    """Whether a stop / take-profit would trigger at once at ``price`` (Binance rejects those)."""
    if order.type in _LIMITS or order.type == "MARKET":
        return False
    rising = (order.type in _STOPS) == (order.side == "BUY")
    return price >= order.stop_price if rising else price <= order.stop_price


def _split(path: str) -> tuple[str | None, str]:
    for prefix, market in _PREFIX.items():
        if path.startswith(prefix + "/"):
            return market, path[len(prefix) + 1 :]
    return None, path


def _assets(symbol: str) -> tuple[str, str]:
    for quote in ("USDT", "USDC", "FDUSD", "BTC"):
        if symbol.endswith(quote) and len(symbol) > len(quote):
            return symbol[: -len(quote)], quote
    return symbol, "USDT"


def _default_filters(market: str, symbol: str, price: float) -> SymbolFilters:
    """Filters like Binance's for a symbol at this price level (BTCUSDT: tick 0.01 / step 0.00001 spot)."""
    exp = math.floor(math.log10(price)) if price > 0 else 0
    if market == "spot":
        tick, step, notional = Decimal(10) ** (exp - 6), Decimal(10) ** (-exp - 1), Decimal(5)
    else:
        tick, step = Decimal(10) ** (exp - 5), Decimal(10) ** min(0, 1 - exp)
        notional = Decimal({"BTCUSDT": 100, "ETHUSDT": 20}.get(symbol, 5))
    return SymbolFilters(tick, step, step, notional)


def _s(value: Decimal) -> str:
    """A decimal as Binance writes it: plain digits, no exponent."""
    text = format(value.normalize(), "f")
    return text if text != "-0" else "0"


def _decimals(step: Decimal) -> int:
    return max(0, -int(step.normalize().as_tuple().exponent))


def _mandatory(name: str) -> str:
    return f"Mandatory parameter '{name}' was not sent, was empty/null, or malformed."


def _need(params: dict[str, str], name: str) -> str:
    if not params.get(name):
        raise _ApiError(-1102, _mandatory(name))
    return params[name]


def _required(value: Decimal | None, name: str) -> Decimal:
    if value is None:
        raise _ApiError(-1102, _mandatory(name))
    return value


def _dec(params: dict[str, str], name: str) -> Decimal | None:
    if name not in params:
        return None
    try:
        value = Decimal(params[name])
    except InvalidOperation as err:
        raise _ApiError(-1100, f"Illegal characters found in parameter '{name}'.") from err
    if not value.is_finite():
        raise _ApiError(-1100, f"Illegal characters found in parameter '{name}'.")
    return value


def _int(params: dict[str, str], name: str, default: int | None = None) -> int:
    if name not in params and default is not None:
        return default
    try:
        return int(_need(params, name))
    except ValueError as err:
        raise _ApiError(-1100, f"Illegal characters found in parameter '{name}'.") from err


def _flag(params: dict[str, str], name: str) -> bool:
    return params.get(name, "false").lower() == "true"


def _field(column: str, value: Any) -> Any:
    """A kline field as Binance sends it: integers for times/trades, strings for decimals."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    if column in ("open_time", "close_time", "trades"):
        return int(value)
    return repr(float(value)) if not isinstance(value, str) else value


class _Handler(BaseHTTPRequestHandler):
    exchange: FakeExchange

    def do_GET(self) -> None:
        self._answer("GET")

    def do_POST(self) -> None:
        self._answer("POST")

    def do_DELETE(self) -> None:
        self._answer("DELETE")

    def do_PUT(self) -> None:
        self._answer("PUT")

    def _answer(self, method: str) -> None:
        parsed = urlparse(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode() if length else ""
        params = {k: v[-1] for k, v in parse_qs(parsed.query, keep_blank_values=True).items()}
        params |= {k: v[-1] for k, v in parse_qs(body, keep_blank_values=True).items()}
        headers = {k.lower(): v for k, v in self.headers.items()}
        status, out, answer = self.exchange.handle(parsed.path, params, method, headers, parsed.query + body)
        payload = answer.encode() if isinstance(answer, str) else json.dumps(answer).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            for key, value in out.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (a timeout test); nothing to answer

    def log_message(self, format: str, *args: Any) -> None:
        """Silence per-request logging."""
