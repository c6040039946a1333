"""Fill rules: what a candle does to orders — pure maths shared by the backtest and the paper broker.

The paper broker (``serving/brokers/paper.py``) and the backtest must fill the same order at
the same price, or the backtest measures a strategy nobody trades. So the rules live here,
below both, with no I/O:

* a **market** order fills at the reference price (the next candle's open in replay) moved
  against us by the slippage; the fee is a fraction of the filled notional;
* a **stop** triggers when the candle trades through it (low ≤ stop for a long's stop,
  high ≥ stop for a short's) and fills at the stop, or at the open when the candle opened
  beyond it (a gap), minus slippage;
* a **take-profit** triggers when the candle reaches it and fills at its price (never
  better: conservative);
* when one candle touches both a stop and a take-profit, the **stop fills first**: a
  candle's path inside the bar is unknown, so the loss is assumed.

Prices are floats here (the backtest's arrays); the journal and the brokers hold exact
decimals and convert at their boundary.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from core.errors import BadConfigError

Side = Literal["long", "short"]
OrderSide = Literal["buy", "sell"]
ExitKind = Literal["stop", "take_profit"]


class InvalidExitError(BadConfigError):
    """An exit that would not protect the position (wrong side, non-positive, too large)."""


@dataclass(frozen=True)
class Bar:
    """One candle's prices."""

    open: float
    high: float
    low: float
    close: float


@dataclass(frozen=True)
class ExitLeg:
    """A protective order of a position: a stop-loss or one take-profit leg.

    Attributes:
        kind: ``stop`` or ``take_profit``.
        price: the trigger price.
        quantity: base-asset quantity it closes.
        name: the leg's name (``stop``, ``tp1`` …), carried into the fill.
    """

    kind: ExitKind
    price: float
    quantity: float
    name: str = ""


@dataclass(frozen=True)
class ExitFill:
    """An exit leg a candle triggered, and how it filled."""

    leg: ExitLeg
    price: float
    quantity: float


def closing_side(side: Side) -> OrderSide:
    """The order side that reduces a position."""
    return "sell" if side == "long" else "buy"


def market_fill_price(reference: float, order_side: OrderSide, slippage_bps: float) -> float:
    """The price a market order gets: the reference moved against the order by the slippage."""
    from tasks.fill_kernel import market_price

    return float(market_price(reference, 1.0 if order_side == "buy" else -1.0, slippage_bps))


def fee(notional: float, fee_bps: float) -> float:
    """The fee of a fill: a fraction of its notional (quote currency)."""
    from tasks.fill_kernel import fee as kernel_fee

    return float(kernel_fee(notional, fee_bps))


def validate_exits(side: Side, entry: float, quantity: float, legs: Sequence[ExitLeg]) -> None:
    """Refuse exits that would not protect the position, before anything is sent.

    Every price must be > 0; a stop must lie on the losing side of the entry and a
    take-profit on the winning side; there must be exactly one stop, covering the whole
    position; the take-profits together may not close more than the position.

    Raises:
        InvalidExitError: naming the leg and the rule it breaks.
    """
    if entry <= 0 or quantity <= 0:
        raise InvalidExitError(f"entry {entry} and quantity {quantity} must be > 0")
    stops = [leg for leg in legs if leg.kind == "stop"]
    if len(stops) != 1:
        raise InvalidExitError(f"a protected position needs exactly one stop, got {len(stops)}")
    for leg in legs:
        label = leg.name or leg.kind
        if leg.price <= 0 or leg.quantity <= 0:
            raise InvalidExitError(f"{label}: price {leg.price} and quantity {leg.quantity} must be > 0")
        losing = leg.price < entry if side == "long" else leg.price > entry
        if leg.kind == "stop" and not losing:
            where = "below" if side == "long" else "above"
            raise InvalidExitError(f"{label}: a {side}'s stop {leg.price} must lie {where} the entry {entry}")
        if leg.kind == "take_profit" and losing:
            where = "above" if side == "long" else "below"
            raise InvalidExitError(
                f"{label}: a {side}'s take-profit {leg.price} must lie {where} the entry {entry}"
            )
    if stops[0].quantity < quantity:
        raise InvalidExitError(f"stop covers {stops[0].quantity} of a {quantity} position: all of it must be")
    if stops[0].quantity > quantity:
        raise InvalidExitError(f"stop quantity {stops[0].quantity} exceeds the position {quantity}")
    taken = sum(leg.quantity for leg in legs if leg.kind == "take_profit")
    if taken > quantity * (1 + 1e-12):
        raise InvalidExitError(f"take-profits close {taken}, more than the position {quantity}")


def triggered_exits(
    side: Side, quantity: float, legs: Sequence[ExitLeg], bar: Bar, slippage_bps: float = 0.0
) -> list[ExitFill]:
    """The exit legs ``bar`` triggers, in fill order, never closing more than ``quantity``.

    A stop touched in the bar fills first and closes what is left, so take-profits of the
    same bar do not fill (the conservative rule). Otherwise take-profits fill nearest
    first, each at its own price. The rule itself is :func:`tasks.fill_kernel.exit_fills`,
    the backtest's too.
    """
    from tasks.fill_kernel import exit_fills

    stop = next((leg for leg in legs if leg.kind == "stop"), None)
    targets = [leg for leg in legs if leg.kind == "take_profit"]
    prices = np.array([leg.price for leg in targets], dtype=np.float64)
    quantities = np.array([leg.quantity for leg in targets], dtype=np.float64)
    which = np.zeros(len(targets) + 1, dtype=np.int64)
    price, filled = np.zeros(len(targets) + 1), np.zeros(len(targets) + 1)
    count = exit_fills(
        1.0 if side == "long" else -1.0, quantity, stop.price if stop is not None else np.nan,
        prices, quantities, bar.open, bar.high, bar.low, slippage_bps, which, price, filled,
    )  # fmt: skip
    return [
        ExitFill(stop if which[i] < 0 else targets[which[i]], float(price[i]), float(filled[i]))  # type: ignore[arg-type]
        for i in range(count)
    ]
