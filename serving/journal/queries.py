"""What the brokers and the CLI ask the journal, as functions of a :class:`~sqlalchemy.orm.Session`.

They run inside a caller's transaction (``with journal.transaction() as session``), so a
broker can look an order up and write in the same atomic step; :class:`~serving.journal.Journal`
offers the same questions in a short read of their own.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from serving.journal.models import OPEN_ORDER_STATUSES, Event, Order, Position, ProtectiveOrder


def order_by_client_id(session: Session, client_order_id: str) -> Order | None:
    """The order with this client order id, or None."""
    return session.scalars(select(Order).where(Order.client_order_id == client_order_id)).one_or_none()


def open_orders(session: Session, symbol: str | None = None) -> list[Order]:
    """Orders that may still fill (:data:`~serving.journal.models.OPEN_ORDER_STATUSES`), oldest first."""
    query = select(Order).where(Order.status.in_(OPEN_ORDER_STATUSES))
    if symbol is not None:
        query = query.where(Order.symbol == symbol)
    return list(session.scalars(query.order_by(Order.id)))


def open_positions(session: Session, symbol: str | None = None) -> list[Position]:
    """Positions not closed yet, oldest first."""
    query = select(Position).where(Position.closed_at.is_(None))
    if symbol is not None:
        query = query.where(Position.symbol == symbol)
    return list(session.scalars(query.order_by(Position.id)))


def protective_orders(session: Session, position_id: int) -> list[ProtectiveOrder]:
    """The exits journalled for a position (with their orders), in placement order."""
    query = select(ProtectiveOrder).where(ProtectiveOrder.position_id == position_id)
    return list(session.scalars(query.order_by(ProtectiveOrder.id)))


def recent_events(session: Session, limit: int = 50, kind: str | None = None) -> list[Event]:
    """The newest events first (optionally of one kind)."""
    query = select(Event)
    if kind is not None:
        query = query.where(Event.kind == kind)
    return list(session.scalars(query.order_by(Event.time.desc(), Event.id.desc()).limit(limit)))


def trades_since(session: Session, since: datetime | None = None) -> list[Position]:
    """Closed positions (trades) closed at or after ``since`` (all when None), in closing order."""
    query = select(Position).where(Position.closed_at.is_not(None))
    if since is not None:
        query = query.where(Position.closed_at >= since)
    return list(session.scalars(query.order_by(Position.closed_at, Position.id)))
