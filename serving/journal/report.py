"""What ``qt positions``, ``qt orders`` and ``qt trades`` show: the journal read as a trader reads it.

Positions carry their exits as the venue holds them (the live stop and take-profit legs)
and the unrealised P&L at a given price; a closed trade carries its exit price, fees, R
multiple (P&L over the risk taken at entry: |entry − initial stop| × quantity) and the
model version that opened it. Decimals are rendered as strings so JSON keeps them exact.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from serving.journal import queries
from serving.journal.journal import Journal
from serving.journal.models import OPEN_ORDER_STATUSES, Fill, Order, Position


def _iso(when: datetime | None) -> str | None:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ") if when else None


def _orders_of(position: Position, session: Session) -> list[Order]:
    """The position's entry, then every reduce-only order of its symbol that filled while it was open.

    One position per symbol at a time, so a fill between its opening and its closing is its
    own: exit legs, a market close, a re-placed stop alike.
    """
    orders: list[Order] = []
    if position.entry_order_id is not None:
        entry = session.get(Order, position.entry_order_id)
        if entry is not None:
            orders.append(entry)
    query = (
        select(Order)
        .join(Fill, Fill.order_id == Order.id)
        .where(Order.symbol == position.symbol, Order.reduce_only.is_(True), Fill.time >= position.opened_at)
        .distinct()
        .order_by(Order.id)
    )
    if position.closed_at is not None:
        query = query.where(Fill.time <= position.closed_at)
    return orders + [o for o in session.scalars(query) if o.id != position.entry_order_id]


def _live_legs(position: Position, session: Session) -> list[tuple[str, Decimal, Decimal, str]]:
    """(kind, price, quantity, client order id) of the exits that may still fill.

    The paper broker links its exits to the position; a venue broker journals them as the
    symbol's open reduce-only orders (a stop's trigger, a take-profit's trigger or limit).
    """
    linked = [leg for leg in position.protective_orders if leg.status in OPEN_ORDER_STATUSES]
    if linked:
        return [(leg.kind, leg.price, leg.quantity, leg.order.client_order_id) for leg in linked]
    out = []
    for order in queries.open_orders(session, position.symbol):
        if not order.reduce_only or order.leg in ("entry", "exit", "close"):
            continue
        kind = "take_profit" if order.leg.startswith("tp") else "stop"
        at = (
            order.stop_price
            if order.stop_price is not None and kind == "stop"
            else order.price or order.stop_price
        )
        size = order.quantity or position.quantity  # a closePosition stop closes whatever is open
        if at is not None:
            out.append((kind, at, size, order.client_order_id))
    return out


def positions(journal: Journal, prices: Mapping[str, Decimal]) -> list[dict[str, Any]]:
    """Open positions with their live exits and unrealised P&L at ``prices`` (when known)."""

    def ask(session: Session) -> list[dict[str, Any]]:
        out = []
        for p in queries.open_positions(session):
            legs = _live_legs(p, session)
            stops = [price for kind, price, _, _ in legs if kind == "stop"]
            price = prices.get(p.symbol)
            sign = 1 if p.side == "long" else -1
            unrealised = None if price is None else str(sign * (price - p.entry_price) * p.quantity)
            out.append(
                {
                    "symbol": p.symbol, "side": p.side, "quantity": str(p.quantity),
                    "entry_price": str(p.entry_price), "opened_at": _iso(p.opened_at),
                    "stop": str(stops[0]) if stops else None,
                    "take_profits": [
                        {"price": str(at), "quantity": str(size), "order": cid}
                        for kind, at, size, cid in legs if kind == "take_profit"
                    ],
                    "price": str(price) if price is not None else None,
                    "unrealised_pnl": unrealised,
                    "model_version": p.model_version,
                }
            )  # fmt: skip
        return out

    return journal.read(ask)


def orders(journal: Journal, symbol: str | None = None) -> list[dict[str, Any]]:
    """Open orders as journalled (the venue's view after the last reconcile)."""
    return [
        {
            "client_order_id": o.client_order_id, "symbol": o.symbol, "side": o.side, "type": o.type,
            "leg": o.leg, "quantity": str(o.quantity),
            "stop_price": str(o.stop_price) if o.stop_price is not None else None,
            "reduce_only": o.reduce_only, "status": o.status, "created_at": _iso(o.created_at),
        }
        for o in journal.open_orders(symbol)
    ]  # fmt: skip


def trades(journal: Journal, since: datetime | None = None) -> list[dict[str, Any]]:
    """Closed trades with exit price, fees, R multiple and the model version that opened them."""

    def ask(session: Session) -> list[dict[str, Any]]:
        out = []
        for p in queries.trades_since(session, since):
            orders_ = _orders_of(p, session)
            fees = sum((f.fee for o in orders_ for f in o.fills), Decimal(0))
            entry = orders_[0] if orders_ and orders_[0].leg == "entry" else None
            size = entry.filled_quantity if entry is not None else Decimal(0)
            exits = [f for o in orders_ if o.leg != "entry" for f in o.fills]
            closed = sum((f.quantity for f in exits), Decimal(0))
            exit_price = sum((f.quantity * f.price for f in exits), Decimal(0)) / closed if closed else None
            risk = abs(p.entry_price - p.initial_stop) * size if p.initial_stop is not None else Decimal(0)
            out.append(
                {
                    "symbol": p.symbol, "side": p.side, "quantity": str(size),
                    "entry_price": str(p.entry_price),
                    "exit_price": str(exit_price.quantize(Decimal("0.00000001"))) if exit_price else None,
                    "opened_at": _iso(p.opened_at), "closed_at": _iso(p.closed_at),
                    "realised_pnl": str(p.realised_pnl), "fees": str(fees), "funding": str(p.funding),
                    "net_pnl": str(p.realised_pnl + p.funding - fees),
                    "r_multiple": float((p.realised_pnl + p.funding - fees) / risk) if risk else None,
                    "model_version": p.model_version,
                }
            )  # fmt: skip
        return out

    return journal.read(ask)
