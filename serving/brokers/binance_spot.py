"""The Binance spot broker: long only, every unit held under a ``STOP_LOSS_LIMIT``.

Spot has no positions and no reduce-only orders: a sell order locks the base asset it
sells, so a take-profit and a stop cannot both hold the same coins unless they are one
OCO. The exits of an entry are therefore one OCO per take-profit leg (a ``LIMIT_MAKER``
above, a ``STOP_LOSS_LIMIT`` below, on the leg's quantity) and one ``STOP_LOSS_LIMIT`` for
the rest. A position is *protected* when the open stop legs cover what is held (to within
one lot step). A position is what the journal opened, capped by what the account still
holds; the journal learns of fills from the venue's trades, so a buy's fee paid in the
base asset leaves the position smaller than the order (the difference counts as fee).

A stop-loss-limit sells at its limit or better: a candle that gaps below the limit leaves
it resting unfilled (``stop_limit_bps`` below the trigger by default 50 bps); this is the
venue's rule, and the backtest's stop fill is the trigger, so spot gaps are a known gap.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any, ClassVar, Literal

import pandas as pd
from sqlalchemy import func, select

from core.errors import QTError
from serving.brokers.base import (
    Order,
    OrderRefusedError,
    OrderRequest,
    Position,
    SymbolRules,
    client_order_id,
)
from serving.brokers.binance import BinanceBroker
from serving.brokers.binance_api import oco_params, symbol_rules, venue_spot_order
from serving.brokers.binance_venue import FuturesVenue, SpotVenue
from serving.brokers.ledger import order_row
from serving.journal import models as db
from serving.journal import queries as q


class BinanceSpotBroker(BinanceBroker):
    """Binance spot (its testnet with QT_BINANCE_TESTNET=true) through python-binance; the journal's book.

    Args:
        client: a python-binance ``Client``.
        journal: where every order, fill and position is written before and after sending.
        tries: sends per order when the venue is unreachable (looked up between tries).
        stop_limit_bps: how far below its trigger a stop-loss-limit may sell.
    """

    market: ClassVar[Literal["spot", "futures"]] = "spot"

    def __init__(self, client: Any, journal: Any, tries: int = 3, stop_limit_bps: float = 50.0) -> None:
        self.stop_limit_bps = Decimal(str(stop_limit_bps))
        super().__init__(client, journal, tries=tries)

    # -- the protocol -----------------------------------------------------------------------
    def open_orders(self, symbol: str | None = None) -> list[Order]:
        """The venue's open spot orders."""
        return [venue_spot_order(o) for o in self._open_raw(symbol)]

    def positions(self) -> list[Position]:
        """The journal's open positions (fills synced from the venue), capped by what the account holds."""
        self._sync_fills()
        held = self._holdings()
        out = []
        for row in self.journal.open_positions():
            rules = self._rules(row.symbol)
            quantity = min(row.quantity, rules.round_quantity(held.get(self._base(row.symbol), Decimal(0))))
            if quantity > 0:
                out.append(Position(row.symbol, "long", quantity, row.entry_price))
        return out

    def balance(self) -> dict[str, Decimal]:
        """Free plus locked balance per asset held."""
        return {asset: amount for asset, amount in self._holdings().items() if amount}

    # -- protecting -------------------------------------------------------------------------
    def _protect(
        self,
        symbol: str,
        side: Literal["long", "short"],
        bar: pd.Timestamp,
        stop: Decimal,
        targets: list[tuple[Decimal, Decimal]],
    ) -> list[Order]:
        """An OCO per take-profit leg not placed before, then a stop for whatever is left uncovered."""
        rules = self._rules(symbol)
        limit = rules.round_price(stop * (1 - self.stop_limit_bps / 10_000))
        uncovered = self._uncovered(symbol)
        placed: list[Order] = []
        for i, (price, size) in enumerate(targets, 1):
            take_id, stop_id = client_order_id(symbol, bar, f"tp{i}"), client_order_id(symbol, bar, f"sl{i}")
            if size > uncovered or self.journal.order_by_client_id(take_id) is not None:
                continue  # placed (or refused) before: a re-protection covers the rest with one stop
            take = OrderRequest(take_id, symbol, "sell", "limit_maker", size, price=price, reduce_only=True,
                                leg=f"tp{i}")  # fmt: skip
            leg = OrderRequest(stop_id, symbol, "sell", "stop_loss_limit", size, stop_price=stop, price=limit,
                               reduce_only=True, leg="stop")  # fmt: skip
            try:
                placed += self._place_oco(take, leg)
                uncovered -= size
            except OrderRefusedError as err:  # the rest-of-position stop below covers these coins
                self._event("take_profit_refused", symbol=symbol, order=take_id, reason=str(err))
        stops = (
            select(func.count())
            .select_from(db.Order)
            .where(db.Order.symbol == symbol, db.Order.leg == "stop", db.Order.type == "stop_loss_limit")
        )
        tried = int(self.journal.read(lambda session: session.scalar(stops)) or 0)
        for attempt in (tried + 1, tried + 2):
            if self._live_stop(symbol):
                break
            self._free_orphans(symbol)
            name = "stop" if attempt == 1 else f"stop{attempt}"
            request = OrderRequest(
                client_order_id(symbol, bar, name), symbol, "sell", "stop_loss_limit",
                rules.round_quantity(self._uncovered(symbol)), stop_price=stop, price=limit, reduce_only=True,
                leg="stop",
            )  # fmt: skip
            try:
                placed.append(self.place_order(request))
            except OrderRefusedError as err:
                self._event("stop_refused", symbol=symbol, order=request.client_order_id, reason=str(err))
                continue
            if not self._live_stop(symbol):
                self._event("stop_missing", symbol=symbol, order=request.client_order_id)
        if not self._live_stop(symbol):
            for position in self.positions():
                if position.symbol == symbol:
                    self._close_at_market(position, "the stop was refused twice")
        return placed

    def _place_oco(self, take: OrderRequest, stop: OrderRequest) -> list[Order]:
        """Journal both legs, send the OCO once (looked up by its stop leg's id first), record both."""
        self._check(take)
        self._check(stop)
        with self.journal.transaction() as session:
            for leg in (take, stop):
                if q.order_by_client_id(session, leg.client_order_id) is None:
                    session.add(order_row(leg, "pending"))
        try:
            answer = self.venue.send(
                stop, create=lambda: self.venue.call(self.client.create_oco_order, **oco_params(take, stop))
            )
        except OrderRefusedError:
            with self.journal.transaction() as session:
                for leg in (take, stop):
                    row = q.order_by_client_id(session, leg.client_order_id)
                    if row is not None and row.status == "pending":
                        row.status = "rejected"
            raise
        reports = {o["clientOrderId"]: o for o in answer.get("orderReports", [])}
        out = []
        for leg in (take, stop):
            report = reports.get(leg.client_order_id) or self.venue.lookup(leg)
            if report is None:
                raise OrderRefusedError(f"{leg.client_order_id}: the venue lost a leg of its OCO")
            out.append(self._record_answer(leg, report))
        return out

    def _live_stop(self, symbol: str) -> bool:
        return self._uncovered(symbol) < self._rules(symbol).min_qty

    def _uncovered(self, symbol: str) -> Decimal:
        """What the account holds of the symbol's position that no open stop would sell."""
        held = next((p.quantity for p in self._held_positions() if p.symbol == symbol), Decimal(0))
        covered = sum(
            (o.quantity - o.filled_quantity for o in self.open_orders(symbol) if o.type == "stop_loss_limit"),
            Decimal(0),
        )
        return max(Decimal(0), held - covered)

    def _held_positions(self) -> list[Position]:
        """:meth:`positions` without syncing fills first (inside a protection, they are fresh)."""
        held = self._holdings()
        return [
            Position(row.symbol, "long", min(row.quantity, held.get(self._base(row.symbol), Decimal(0))),
                     row.entry_price)
            for row in self.journal.open_positions()
        ]  # fmt: skip

    def _free_orphans(self, symbol: str) -> None:
        """Cancel take-profits whose OCO lost its stop leg: they lock coins a stop needs."""
        raw = self._open_raw(symbol)
        guarded = {o["orderListId"] for o in raw if o["type"] == "STOP_LOSS_LIMIT"}
        for o in raw:
            if o["type"] == "LIMIT_MAKER" and o.get("orderListId", -1) not in guarded:
                self.cancel_order(symbol, o["clientOrderId"])
                self._event("take_profit_orphaned", symbol=symbol, order=o["clientOrderId"])

    def _close_at_market(self, position: Position, why: str, bar_time: pd.Timestamp | None = None) -> Order:
        """Cancel the symbol's open sells (they lock the coins), then sell what is held at market.

        If the sell is refused the position is protected again at once (reconcile re-places
        its stop) before the error goes up.
        """
        self._cancel_sells(position.symbol)
        free = self._holdings().get(self._base(position.symbol), Decimal(0))
        quantity = min(position.quantity, self._rules(position.symbol).round_quantity(free))
        try:
            return super()._close_at_market(
                Position(position.symbol, "long", quantity, position.entry_price), why, bar_time
            )
        except QTError:
            self.reconcile()
            raise

    def _stop_request(self, symbol: str, held: Position, stop: Decimal, cid: str) -> OrderRequest:
        """One stop-loss-limit for the whole position.

        A sell locks the coins it sells, so the old stops and the take-profit OCOs are
        cancelled first: the position is unprotected for the two requests in between (spot
        allows no other way), and if the new stop is refused it is closed at market.
        """
        self._cancel_sells(symbol)
        rules = self._rules(symbol)
        limit = rules.round_price(stop * (1 - self.stop_limit_bps / 10_000))
        free = self._holdings().get(self._base(symbol), Decimal(0))
        quantity = rules.round_quantity(min(held.quantity, free))
        return OrderRequest(cid, symbol, "sell", "stop_loss_limit", quantity, stop_price=stop, price=limit,
                            reduce_only=True, leg="stop")  # fmt: skip

    def _cancel_sells(self, symbol: str) -> None:
        """Cancel the symbol's open sells; an OCO once (cancelling one leg cancels its list)."""
        lists: set[int] = set()
        raw = self._open_raw(symbol)
        for o in raw:
            listed = int(o.get("orderListId", -1))
            if o["side"] != "SELL" or listed in lists:
                continue
            self.cancel_order(symbol, o["clientOrderId"])
            if listed >= 0:
                lists.add(listed)
                self._journal_cancelled([x["clientOrderId"] for x in raw if x.get("orderListId") == listed])

    def _journal_cancelled(self, client_ids: list[str]) -> None:
        with self.journal.transaction() as session:
            for cid in client_ids:
                row = q.order_by_client_id(session, cid)
                if row is not None and row.status in db.OPEN_ORDER_STATUSES:
                    row.status = "canceled"

    def _prepare_symbol(self, symbol: str) -> None:
        """Spot has no leverage or margin type."""

    # -- the venue's dialect ----------------------------------------------------------------
    def _make_venue(self) -> FuturesVenue:
        return SpotVenue(
            self.client, self.tries, lambda offset: self._event("clock_resync", offset_ms=offset)
        )

    def _load_rules(self) -> dict[str, SymbolRules]:
        return symbol_rules(self.venue.call(self.client.get_exchange_info))

    def _cancel_on_venue(self, symbol: str, client_order_id: str, kind: str) -> None:
        self.venue.call(self.client.cancel_order, symbol=symbol, origClientOrderId=client_order_id)

    def _read(self, order: OrderRequest, answer: dict[str, Any]) -> Order:
        return venue_spot_order(answer)

    def _trades(self, symbol: str, answer: dict[str, Any]) -> list[dict[str, Any]]:
        return list(self.venue.call(self.client.get_my_trades, symbol=symbol, orderId=answer["orderId"]))

    def _open_raw(self, symbol: str | None) -> list[dict[str, Any]]:
        params = {"symbol": symbol} if symbol else {}
        return list(self.venue.call(self.client.get_open_orders, **params))

    def _holdings(self) -> dict[str, Decimal]:
        account = self.venue.call(self.client.get_account)
        return {b["asset"]: Decimal(b["free"]) + Decimal(b["locked"]) for b in account["balances"]}

    def _base(self, symbol: str) -> str:
        return symbol.removesuffix(self.quote)
