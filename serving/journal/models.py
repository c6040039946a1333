"""The journal's tables: what the live side decided, sent, got filled, holds and saw.

Money and quantities are :class:`~decimal.Decimal` (:class:`~serving.journal.types.ExactDecimal`),
times are timezone-aware UTC. Vocabulary follows :mod:`serving.brokers.base`: sides ``buy`` /
``sell``, position sides ``long`` / ``short``, legs ``entry``, ``stop``, ``tp1`` …
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import JSON, ForeignKey, Index, MetaData, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from serving.journal.types import ExactDecimal, UTCDateTime

#: Order statuses that may still fill (``pending``: journalled, not yet acknowledged by the venue).
OPEN_ORDER_STATUSES = ("pending", "new", "partially_filled")

# Deterministic constraint names: Alembic needs them to alter tables (batch mode on SQLite).
_NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utc_now() -> datetime:
    """Now, timezone-aware UTC (the default of every ``*_at`` / ``time`` column)."""
    return datetime.now(UTC)


class Base(DeclarativeBase):
    """Declarative base; ``Base.metadata`` is what the migrations must produce."""

    metadata = MetaData(naming_convention=_NAMING)
    type_annotation_map = {  # noqa: RUF012 (SQLAlchemy reads it as a class attribute)
        Decimal: ExactDecimal(),
        datetime: UTCDateTime(),
        dict[str, Any]: JSON(),
        dict[str, float]: JSON(),
    }


class Signal(Base):
    """One model prediction for a bar: the ensemble's inputs, for the record."""

    __tablename__ = "signals"
    __table_args__ = (Index(None, "symbol", "time"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    time: Mapped[datetime]
    symbol: Mapped[str] = mapped_column(String(32))
    interval: Mapped[str] = mapped_column(String(8))
    model_version: Mapped[str] = mapped_column(String(64))
    p_up: Mapped[dict[str, float]] = mapped_column(doc="model name → P(up); the ensemble's under its name")
    features_hash: Mapped[str] = mapped_column(String(64))


class Decision(Base):
    """What the strategy chose for a bar (``enter_long``, ``exit``, ``hold`` …) and why."""

    __tablename__ = "decisions"
    __table_args__ = (Index(None, "symbol", "bar_time"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    symbol: Mapped[str] = mapped_column(String(32))
    bar_time: Mapped[datetime]
    action: Mapped[str] = mapped_column(String(32))
    size: Mapped[Decimal]
    reason: Mapped[str] = mapped_column(String(500), default="")
    signal_id: Mapped[int | None] = mapped_column(ForeignKey("signals.id"))
    created_at: Mapped[datetime] = mapped_column(default=utc_now)

    vetoes: Mapped[list[Veto]] = relationship(back_populates="decision", lazy="selectin")


class Veto(Base):
    """A risk rule that blocked (part of) a decision."""

    __tablename__ = "vetoes"

    id: Mapped[int] = mapped_column(primary_key=True)
    decision_id: Mapped[int] = mapped_column(ForeignKey("decisions.id"), index=True)
    rule: Mapped[str] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(String(500))

    decision: Mapped[Decision] = relationship(back_populates="vetoes")


class Order(Base):
    """An order as we sent it and as the venue last reported it."""

    __tablename__ = "orders"
    __table_args__ = (Index(None, "status", "symbol"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    client_order_id: Mapped[str] = mapped_column(String(36), unique=True)
    symbol: Mapped[str] = mapped_column(String(32))
    side: Mapped[str] = mapped_column(String(4))
    type: Mapped[str] = mapped_column(String(32))
    quantity: Mapped[Decimal]
    price: Mapped[Decimal | None]
    stop_price: Mapped[Decimal | None]
    reduce_only: Mapped[bool] = mapped_column(default=False)
    status: Mapped[str] = mapped_column(String(24), default="pending")
    venue_order_id: Mapped[str | None] = mapped_column(String(64))
    leg: Mapped[str] = mapped_column(String(16), doc="entry, stop, tp1, tp2 …")
    decision_id: Mapped[int | None] = mapped_column(ForeignKey("decisions.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utc_now)
    updated_at: Mapped[datetime] = mapped_column(default=utc_now, onupdate=utc_now)

    fills: Mapped[list[Fill]] = relationship(back_populates="order", lazy="selectin", order_by="Fill.id")

    @property
    def filled_quantity(self) -> Decimal:
        """Sum of this order's fills."""
        return sum((fill.quantity for fill in self.fills), Decimal(0))


class Fill(Base):
    """One execution of an order."""

    __tablename__ = "fills"

    id: Mapped[int] = mapped_column(primary_key=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id"), index=True)
    quantity: Mapped[Decimal]
    price: Mapped[Decimal]
    fee: Mapped[Decimal]
    fee_asset: Mapped[str] = mapped_column(String(16))
    time: Mapped[datetime] = mapped_column(index=True)

    order: Mapped[Order] = relationship(back_populates="fills")


class Position(Base):
    """A position from entry to close; a closed one is a trade."""

    __tablename__ = "positions"
    __table_args__ = (Index(None, "closed_at", "symbol"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    symbol: Mapped[str] = mapped_column(String(32))
    side: Mapped[str] = mapped_column(String(5))
    quantity: Mapped[Decimal]
    entry_price: Mapped[Decimal]
    stop: Mapped[Decimal | None] = mapped_column(doc="the current stop-loss trigger")
    initial_stop: Mapped[Decimal | None] = mapped_column(doc="the stop at entry: the trade's 1 R")
    entry_order_id: Mapped[int | None] = mapped_column(ForeignKey("orders.id"))
    opened_at: Mapped[datetime] = mapped_column(default=utc_now)
    closed_at: Mapped[datetime | None]
    realised_pnl: Mapped[Decimal] = mapped_column(default=Decimal(0))
    model_version: Mapped[str | None] = mapped_column(String(64))
    funding: Mapped[Decimal] = mapped_column(
        default=Decimal(0), server_default="0", doc="futures funding received (+) or paid (-), in quote"
    )
    funded_at: Mapped[datetime | None] = mapped_column(doc="the last funding time settled on it")

    protective_orders: Mapped[list[ProtectiveOrder]] = relationship(
        back_populates="position", lazy="selectin", order_by="ProtectiveOrder.id"
    )


class ProtectiveOrder(Base):
    """An exit (stop or take-profit leg) that protects a position, linked to its order."""

    __tablename__ = "protective_orders"

    id: Mapped[int] = mapped_column(primary_key=True)
    position_id: Mapped[int] = mapped_column(ForeignKey("positions.id"), index=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16), doc="stop or take_profit")
    price: Mapped[Decimal]
    quantity: Mapped[Decimal]
    status: Mapped[str] = mapped_column(String(24), default="pending")

    position: Mapped[Position] = relationship(back_populates="protective_orders")
    order: Mapped[Order] = relationship(lazy="joined")


class EquitySnapshot(Base):
    """Account equity and cash at a time."""

    __tablename__ = "equity_snapshots"

    id: Mapped[int] = mapped_column(primary_key=True)
    time: Mapped[datetime] = mapped_column(index=True)
    equity: Mapped[Decimal]
    cash: Mapped[Decimal]


class Event(Base):
    """Something the broker did on its own (reconcile, re-place, close at market) with its detail."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(32), index=True)
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)
    time: Mapped[datetime] = mapped_column(default=utc_now, index=True)
