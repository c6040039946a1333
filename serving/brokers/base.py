"""The broker protocol every venue implements, and the venue rules both brokers apply.

A broker places orders, cancels them, and reads back what the venue holds: open orders,
positions, balances. A *protected* entry is an entry plus its exits (one stop for the whole
position, take-profit legs), and :meth:`Broker.reconcile` re-reads the venue and says what
is missing, so that ``unprotected_positions`` is 0 at the end of every call.

Quantities and prices are :class:`~decimal.Decimal` (the journal stores them exactly);
every order carries a client order id derived from the decision (:func:`client_order_id`),
so a retry or a restart never enters twice.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from decimal import ROUND_DOWN, ROUND_HALF_UP, Decimal
from typing import Literal, Protocol

import pandas as pd

from core.errors import BadConfigError

OrderSide = Literal["buy", "sell"]
OrderType = Literal["market", "stop_market", "take_profit_market", "stop_loss_limit", "limit_maker"]
Leg = str  # "entry", "stop", "tp1", "tp2", ...

#: Binance's rule for ``newClientOrderId``.
_CLIENT_ID = re.compile(r"^[.A-Z:/a-z0-9_-]{1,36}$")


class OrderRefusedError(BadConfigError):
    """An order that cannot satisfy the venue's rules; refused before anything is sent."""


def client_order_id(symbol: str, bar_time: pd.Timestamp, leg: Leg) -> str:
    """A deterministic id for one leg of one decision: ``qt-BTCUSDT-1718000000000-stop``.

    The same decision (symbol, bar, leg) always gives the same id, so the broker can look
    it up on the venue before sending and never double-enter. Ids longer than Binance's
    36 characters become a digest of the same parts.
    """
    if not re.fullmatch(r"[a-z0-9]{1,8}", leg):
        raise ValueError(f"leg {leg!r}: up to 8 lower-case letters or digits (entry, stop, tp1, ...)")
    millis = int(pd.Timestamp(bar_time).value // 1_000_000)
    plain = f"qt-{symbol}-{millis}-{leg}"
    if _CLIENT_ID.match(plain):
        return plain
    digest = hashlib.sha256(f"{symbol}-{millis}".encode()).hexdigest()[: 32 - len(leg)]
    return f"qt-{digest}-{leg}"


@dataclass(frozen=True)
class SymbolRules:
    """A symbol's trading filters (Binance ``exchangeInfo``: PRICE_FILTER, LOT_SIZE, MIN_NOTIONAL).

    Attributes:
        symbol: e.g. ``BTCUSDT``.
        tick_size: prices are multiples of it.
        step_size: quantities are multiples of it.
        min_qty: the smallest quantity.
        min_notional: the smallest price × quantity.
    """

    symbol: str
    tick_size: Decimal
    step_size: Decimal
    min_qty: Decimal
    min_notional: Decimal

    def round_price(self, price: Decimal) -> Decimal:
        """``price`` on the tick grid (nearest tick)."""
        return _on_grid(price, self.tick_size, ROUND_HALF_UP)

    def round_quantity(self, quantity: Decimal) -> Decimal:
        """``quantity`` on the step grid, rounded down (never more than asked)."""
        return _on_grid(quantity, self.step_size, ROUND_DOWN)

    def check(self, quantity: Decimal, price: Decimal) -> None:
        """Refuse an order the venue would reject, naming the filter.

        Raises:
            OrderRefusedError: quantity below LOT_SIZE minQty, off the grids, price ≤ 0, or
                notional below MIN_NOTIONAL.
        """
        name = self.symbol
        if price <= 0:
            raise OrderRefusedError(f"{name}: price {price} must be > 0")
        if quantity < self.min_qty:
            raise OrderRefusedError(f"{name}: quantity {quantity} is below LOT_SIZE minQty {self.min_qty}")
        if self.round_quantity(quantity) != quantity:
            raise OrderRefusedError(f"{name}: quantity {quantity} off LOT_SIZE stepSize {self.step_size}")
        if self.round_price(price) != price:
            raise OrderRefusedError(f"{name}: price {price} off PRICE_FILTER tickSize {self.tick_size}")
        if quantity * price < self.min_notional:
            raise OrderRefusedError(
                f"{name}: notional {quantity * price} is below MIN_NOTIONAL {self.min_notional}"
            )


def _on_grid(value: Decimal, step: Decimal, rounding: str) -> Decimal:
    if step <= 0:
        return value
    return ((value / step).to_integral_value(rounding=rounding) * step).quantize(step)


@dataclass(frozen=True)
class OrderRequest:
    """One order to send.

    Attributes:
        client_order_id: from :func:`client_order_id`.
        symbol: e.g. ``BTCUSDT``.
        side: buy or sell.
        type: market; futures exits stop_market, take_profit_market; spot exits
            stop_loss_limit, limit_maker (the take-profit leg of an OCO).
        quantity: base-asset quantity.
        stop_price: trigger price of stop / take-profit orders.
        price: limit price (stop_loss_limit, limit_maker).
        reduce_only: the order may only reduce a position (futures exits).
        leg: entry, stop, tp1, …
    """

    client_order_id: str
    symbol: str
    side: OrderSide
    type: OrderType
    quantity: Decimal
    stop_price: Decimal | None = None
    price: Decimal | None = None
    reduce_only: bool = False
    leg: Leg = "entry"


@dataclass(frozen=True)
class Order:
    """An order as the venue holds it."""

    client_order_id: str
    symbol: str
    side: OrderSide
    type: OrderType
    quantity: Decimal
    status: Literal["new", "filled", "canceled", "rejected", "expired"]
    filled_quantity: Decimal = Decimal(0)
    average_price: Decimal | None = None
    stop_price: Decimal | None = None
    reduce_only: bool = False
    venue_order_id: str | None = None


@dataclass(frozen=True)
class Position:
    """An open position as the venue holds it (quantity > 0; side says the direction)."""

    symbol: str
    side: Literal["long", "short"]
    quantity: Decimal
    entry_price: Decimal


@dataclass(frozen=True)
class ProtectedEntry:
    """An entry with its exits: one stop for the whole position, take-profit legs.

    Attributes:
        symbol: e.g. ``BTCUSDT``.
        side: long or short (spot: long only).
        quantity: base-asset quantity of the entry.
        stop: the stop-loss trigger price.
        take_profits: ``(price, quantity)`` per leg, nearest first.
        bar_time: the decision's bar, from which every leg's client order id derives.
        reference_price: the price the exits were validated against (the expected entry).
    """

    symbol: str
    side: Literal["long", "short"]
    quantity: Decimal
    stop: Decimal
    take_profits: tuple[tuple[Decimal, Decimal], ...]
    bar_time: pd.Timestamp
    reference_price: Decimal


@dataclass
class ReconcileReport:
    """What :meth:`Broker.reconcile` found on the venue and did about it."""

    positions: list[Position] = field(default_factory=list)
    missing_stops: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    closed_at_market: list[str] = field(default_factory=list)
    unprotected_positions: int = 0


def exit_request(position: Position, bar_time: pd.Timestamp, leg: Leg = "exit") -> OrderRequest:
    """The reduce-only market order that closes ``position`` for the decision of ``bar_time``."""
    side: OrderSide = "sell" if position.side == "long" else "buy"
    return OrderRequest(client_order_id(position.symbol, bar_time, leg), position.symbol, side, "market",
                        position.quantity, reduce_only=True, leg=leg)  # fmt: skip


class Broker(Protocol):
    """What the live flow trades through (paper and Binance pass one contract suite)."""

    def place_order(self, order: OrderRequest) -> Order:
        """Send one order (looked up by its client order id first: never twice)."""
        ...

    def cancel_order(self, symbol: str, client_order_id: str) -> Order:
        """Cancel an open order."""
        ...

    def open_orders(self, symbol: str | None = None) -> list[Order]:
        """The venue's open orders."""
        ...

    def positions(self) -> list[Position]:
        """The venue's open positions."""
        ...

    def balance(self) -> dict[str, Decimal]:
        """Free balance per asset (quote currency included)."""
        ...

    def place_protected(self, entry: ProtectedEntry) -> list[Order]:
        """Enter, then place and verify every exit; close at market if the stop cannot be placed."""
        ...

    def replace_stop(self, symbol: str, stop: Decimal, bar_time: pd.Timestamp) -> Order:
        """Move a position's stop (the new one placed before the old one goes: never unprotected)."""
        ...

    def close_position(self, symbol: str, bar_time: pd.Timestamp, reason: str) -> Order | None:
        """Close what is held of ``symbol`` at market for the decision of ``bar_time`` (None: nothing held).

        Its exits go once it is flat; where the venue locks the coins an exit sells (spot),
        they are cancelled first and re-placed if the close is refused.
        """
        ...

    def reconcile(self) -> ReconcileReport:
        """Read back positions and open orders, re-place missing protective orders."""
        ...

    def unprotected_positions(self) -> int:
        """Open positions without a live stop (the goal is always 0)."""
        ...
