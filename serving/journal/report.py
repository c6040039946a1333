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

from sqlalchemy.orm import Session

from serving.journal import queries
from serving.journal.journal import Journal
from serving.journal.models import OPEN_ORDER_STATUSES, Order, Position


def _iso(when: datetime | None) -> str | None:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ") if when else None


def _orders_of(position: Position, session: Session) -> list[Order]:
    orders = [leg.order for leg in position.protective_orders]
    if position.entry_order_id is not None:
        entry = session.get(Order, position.entry_order_id)
        if entry is not None:
            orders.insert(0, entry)
    return orders


def positions(journal: Journal, prices: Mapping[str, Decimal]) -> list[dict[str, Any]]:
    """Open positions with their live exits and unrealised P&L at ``prices`` (when known)."""

    def ask(session: Session) -> list[dict[str, Any]]:
        out = []
        for p in queries.open_positions(session):
            live = [leg for leg in p.protective_orders if leg.status in OPEN_ORDER_STATUSES]
            stop = next((leg for leg in live if leg.kind == "stop"), None)
            price = prices.get(p.symbol)
            sign = 1 if p.side == "long" else -1
            unrealised = None if price is None else str(sign * (price - p.entry_price) * p.quantity)
            out.append(
                {
                    "symbol": p.symbol, "side": p.side, "quantity": str(p.quantity),
                    "entry_price": str(p.entry_price), "opened_at": _iso(p.opened_at),
                    "stop": str(stop.price) if stop else None,
                    "take_profits": [
                        {"price": str(t.price), "quantity": str(t.quantity), "order": t.order.client_order_id}
                        for t in live if t.kind == "take_profit"
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
