"""What the Binance brokers write to the journal about the venue: answers, fills, orders gone.

:class:`VenueJournal` is the journal side both Binance brokers share: an order's answer
becomes its status and, once filled, one fill from the venue's own trades (fees included);
orders journalled but never confirmed, and open ones the venue filled, cancelled or lost
meanwhile, are settled on reconcile. The venue's dialect (:meth:`_read`, :meth:`_trades`,
:meth:`open_orders`) is the broker's.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any, ClassVar, Literal

from serving.brokers.base import Order, OrderRequest, SymbolRules
from serving.brokers.binance_api import trade_totals
from serving.brokers.binance_venue import FuturesVenue
from serving.brokers.ledger import apply_fill, utc_now
from serving.journal import Journal
from serving.journal import models as db
from serving.journal import queries as q


class VenueJournal:
    """The journal side of a venue broker (a base of :class:`~serving.brokers.binance.BinanceBroker`)."""

    journal: Journal
    venue: FuturesVenue
    quote: ClassVar[str] = "USDT"

    def open_orders(self, symbol: str | None = None) -> list[Order]:
        """The venue's open orders (the broker's)."""
        raise NotImplementedError

    def _read(self, order: OrderRequest, answer: dict[str, Any]) -> Order:
        raise NotImplementedError

    def _trades(self, symbol: str, answer: dict[str, Any]) -> list[dict[str, Any]]:
        raise NotImplementedError

    def _rules(self, symbol: str) -> SymbolRules:
        raise NotImplementedError

    def _settle_pending(self) -> None:
        """Orders journalled but never confirmed (a crash mid-send): take the venue's word for each."""
        self._settle(
            [row for row in self.journal.open_orders() if row.status == "pending"], "never_reached_venue"
        )

    def _sync_fills(self) -> None:
        """Journal what the venue did to our open orders since we last looked (filled, cancelled, gone)."""
        waiting = [row for row in self.journal.open_orders() if row.status == "new"]
        if not waiting:
            return
        live = {o.client_order_id for o in self.open_orders()}
        self._settle([row for row in waiting if row.client_order_id not in live], "order_vanished")

    def _settle(self, rows: list[db.Order], why: str) -> None:
        """Take the venue's word for each order: its answer journalled, or it is gone (``why``)."""
        for row in rows:
            request = _request_of(row)
            answer = self.venue.lookup(request)
            if answer is not None:
                self._record_answer(request, answer)
            else:
                self._gone(row.client_order_id, why)

    def _gone(self, client_order_id: str, why: str) -> None:
        """The venue has no such order: journalled as expired, and why."""
        with self.journal.transaction() as session:
            stored = q.order_by_client_id(session, client_order_id)
            if stored is not None:
                stored.status = "expired"
            session.add(db.Event(kind=why, detail={"order": client_order_id}))

    def _record_answer(self, order: OrderRequest, answer: dict[str, Any]) -> Order:
        """The venue's answer into the journal: status, and a fill (the venue's trades, fees included)."""
        if order.type == "market" and answer.get("status") in ("NEW", None):  # an ACK: ask how it ended
            answer = self.venue.lookup(order) or answer
        venue = self._read(order, answer)
        fill = None
        if venue.status == "filled" and not self.journal.read(
            lambda s: (row := q.order_by_client_id(s, order.client_order_id)) is not None and bool(row.fills)
        ):
            fill = self._fill_of(order, venue, answer)
        with self.journal.transaction() as session:
            row = q.order_by_client_id(session, order.client_order_id)
            assert row is not None, "journalled before sending"
            row.status = venue.status
            row.venue_order_id = venue.venue_order_id
            if fill is not None and not row.fills:
                apply_fill(session, row, *fill, self.quote, utc_now())
        return venue

    def _fill_of(
        self, order: OrderRequest, venue: Order, answer: dict[str, Any]
    ) -> tuple[Decimal, Decimal, Decimal]:
        """(quantity, average price, fee in the quote asset) of a filled order, from its trades.

        A fee paid in the base asset (spot buys) leaves less than was bought: the position is
        what is left on the step grid, and the rest (fee and dust) counts as fee, in quote.
        """
        trades = self._trades(order.symbol, answer)
        if not trades:
            self._event("trades_missing", order=order.client_order_id)
            return venue.filled_quantity, venue.average_price or Decimal(0), Decimal(0)
        quantity, price, quote_fee, base_fee = trade_totals(trades, self.quote)
        kept = self._rules(order.symbol).round_quantity(quantity - base_fee) if base_fee else quantity
        return kept, price, quote_fee + (quantity - kept) * price

    def _event(self, kind: str, **detail: Any) -> None:
        with self.journal.transaction() as session:
            session.add(db.Event(kind=kind, detail=detail))


def _request_of(row: db.Order) -> OrderRequest:
    """The request a journalled order was sent as."""
    side: Literal["buy", "sell"] = "buy" if row.side == "buy" else "sell"
    return OrderRequest(
        row.client_order_id, row.symbol, side, row.type,  # type: ignore[arg-type]
        row.quantity, stop_price=row.stop_price, price=row.price, reduce_only=row.reduce_only, leg=row.leg,
    )  # fmt: skip
