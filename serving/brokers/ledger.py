"""The journal book-keeping every broker does the same way: a fill moves a position, a row is an order.

Inside a journal transaction: :func:`order_row` is an order's row; :func:`apply_fill`
records a fill and opens, grows, reduces or closes the symbol's position (realised P&L on
the part closed, the remaining exit legs cancelled when it is flat); :func:`order_from_row`
gives the protocol's view of a journalled order; :func:`live_stop` finds a position's stop
that may still fill.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Literal

import pandas as pd
from sqlalchemy.orm import Session

from serving.brokers.base import Order, OrderRequest
from serving.journal import models as db
from serving.journal import queries as q

_OPEN_AS_NEW = {"pending": "new", "new": "new", "partially_filled": "new"}


def position_side(side: str) -> Literal["long", "short"]:
    """A journalled side as the protocol's literal."""
    return "long" if side == "long" else "short"


def utc_now() -> datetime:
    """Now, timezone-aware UTC."""
    return pd.Timestamp.now(tz="UTC").to_pydatetime()


def live_stop(position: db.Position) -> db.ProtectiveOrder | None:
    """The position's stop leg that may still fill, if any."""
    live = (leg for leg in position.protective_orders if leg.status in db.OPEN_ORDER_STATUSES)
    return next((leg for leg in live if leg.kind == "stop"), None)


def order_row(order: OrderRequest, status: str) -> db.Order:
    """The journal row of an order about to be sent (``pending``) or accepted (``new``)."""
    return db.Order(
        client_order_id=order.client_order_id, symbol=order.symbol, side=order.side, type=order.type,
        quantity=order.quantity, price=order.price, stop_price=order.stop_price,
        reduce_only=order.reduce_only, status=status, leg=order.leg,
    )  # fmt: skip


def apply_fill(
    session: Session,
    row: db.Order,
    quantity: Decimal,
    price: Decimal,
    fee: Decimal,
    fee_asset: str,
    when: datetime,
) -> db.Position | None:
    """Record a fill of ``row`` and move the symbol's position by it.

    Returns the position it opened, grew or reduced; None for a reduce-only fill with no
    journalled position to reduce.
    """
    session.add(db.Fill(order=row, quantity=quantity, price=price, fee=fee, fee_asset=fee_asset, time=when))
    row.status = "filled"
    position = next(iter(q.open_positions(session, row.symbol)), None)
    direction = "long" if row.side == "buy" else "short"
    if position is None:
        if row.reduce_only:
            session.flush()
            return None
        position = db.Position(
            symbol=row.symbol, side=direction, quantity=quantity, entry_price=price, entry_order_id=row.id,
            opened_at=when,
        )  # fmt: skip
        session.add(position)
    elif position.side == direction and not row.reduce_only:
        total = position.quantity + quantity
        position.entry_price = (position.entry_price * position.quantity + price * quantity) / total
        position.quantity = total
    else:
        closed = min(quantity, position.quantity)
        sign = 1 if position.side == "long" else -1
        position.realised_pnl += sign * (price - position.entry_price) * closed
        position.quantity -= closed
        if position.quantity == 0:
            position.closed_at = when
            for leg in position.protective_orders:
                if leg.status in db.OPEN_ORDER_STATUSES:
                    leg.status = leg.order.status = "canceled"
    session.flush()
    return position


def order_from_row(row: db.Order) -> Order:
    """A journalled order as the protocol's :class:`~serving.brokers.base.Order`."""
    filled = sum((f.quantity for f in row.fills), Decimal(0))
    average = sum((f.quantity * f.price for f in row.fills), Decimal(0)) / filled if filled else None
    return Order(
        client_order_id=row.client_order_id, symbol=row.symbol, side="buy" if row.side == "buy" else "sell",
        type=row.type, quantity=row.quantity,  # type: ignore[arg-type]
        status=_OPEN_AS_NEW.get(row.status, row.status),  # type: ignore[arg-type]
        filled_quantity=filled, average_price=average, stop_price=row.stop_price,
        reduce_only=row.reduce_only, venue_order_id=row.venue_order_id or str(row.id),
    )  # fmt: skip
