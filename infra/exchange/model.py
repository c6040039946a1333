"""Data types, constants and request-parsing helpers of the fake exchange."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

import numpy as np
import pandas as pd

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
    if value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value)):
        return None
    if column in ("open_time", "close_time", "trades"):
        return int(value)
    return repr(float(value)) if not isinstance(value, str) else value
