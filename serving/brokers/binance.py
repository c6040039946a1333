"""The Binance broker: USD-M futures through python-binance, every order journalled first.

Orders go out with a client order id derived from the decision; before any send, and
after any failure whose outcome is unclear (a timeout, a 5xx, "execution status unknown"),
the broker looks the id up on the venue, so a retry or a restart never enters twice.
A ``-1021`` (timestamp outside ``recvWindow``) resyncs the clock from ``/time`` and retries
once. Protective legs are ``STOP_MARKET`` (``closePosition``) and reduce-only
``TAKE_PROFIT_MARKET``; python-binance routes them to ``/fapi/v1/algoOrder`` and drops
``newClientOrderId``, so their ids travel as ``clientAlgoId``.

After placing, and on every :meth:`BinanceBroker.reconcile`, open orders are read back: a
missing stop is re-placed (journalled); a position whose stop is refused twice is closed at
market. Reconcile also journals what filled on the venue meanwhile (stops, take-profits),
from the venue's own trades, fees included, so the journal's trades are the venue's.
Spot is :class:`~serving.brokers.binance_spot.BinanceSpotBroker`, the same broker over the
spot endpoints. Keys come only from the environment (``QT_BINANCE_API_KEY`` / ``_SECRET``),
never logged.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any, ClassVar, Literal

import pandas as pd
from sqlalchemy import func, select

from core.errors import BadConfigError
from core.settings import Settings
from serving.brokers.base import (
    Order,
    OrderRefusedError,
    OrderRequest,
    Position,
    ProtectedEntry,
    ReconcileReport,
    SymbolRules,
    client_order_id,
    exit_request,
)
from serving.brokers.binance_api import (
    CONDITIONAL,
    symbol_rules,
    venue_algo,
    venue_order,
)
from serving.brokers.binance_journal import VenueJournal
from serving.brokers.binance_venue import FuturesVenue
from serving.brokers.ledger import order_from_row, order_row
from serving.journal import Journal
from serving.journal import models as db
from serving.journal import queries as q
from tasks.fills import ExitLeg, closing_side, validate_exits


class BinanceBroker(VenueJournal):
    """USD-M futures on Binance (its testnet with QT_BINANCE_TESTNET=true) or any venue speaking its API.

    Args:
        client: a python-binance ``Client`` (see :meth:`from_settings`).
        journal: where every order, fill and position is written before and after sending.
        leverage: set per symbol before its first entry.
        margin_type: ``ISOLATED`` or ``CROSSED``.
        tries: sends per order when the venue is unreachable (looked up between tries).
    """

    market: ClassVar[Literal["spot", "futures"]] = "futures"

    def __init__(
        self, client: Any, journal: Journal, leverage: int = 1, margin_type: str = "ISOLATED", tries: int = 3
    ) -> None:
        self.client, self.journal = client, journal
        self.leverage, self.margin_type, self.tries = leverage, margin_type, tries
        self.venue = self._make_venue()
        self.rules = self._load_rules()
        self._prepared: set[str] = set()  # symbols whose leverage and margin type are set

    @classmethod
    def from_settings(cls, settings: Settings, journal: Journal, market: str = "futures") -> BinanceBroker:
        """A broker with the configured keys and endpoints.

        Raises:
            BadConfigError: keys missing, or an unknown ``market``.
        """
        if market not in ("spot", "futures"):
            raise BadConfigError(f"unknown market {market!r}; known: spot, futures")
        if settings.binance_api_key is None or settings.binance_api_secret is None:
            raise BadConfigError("--broker binance needs QT_BINANCE_API_KEY and QT_BINANCE_API_SECRET")
        from serving.brokers.binance_spot import BinanceSpotBroker
        from tasks.ingest.binance import make_client

        if market == "spot":
            return BinanceSpotBroker(make_client(settings), journal)
        return cls(make_client(settings), journal, leverage=settings.leverage)

    # -- the protocol -----------------------------------------------------------------------
    def place_order(self, order: OrderRequest) -> Order:
        """Journal the order, then send it once (looked up on the venue first)."""
        self._check(order)
        with self.journal.transaction() as session:
            if q.order_by_client_id(session, order.client_order_id) is None:
                session.add(order_row(order, "pending"))
        try:
            answer = self.venue.send(order)
        except OrderRefusedError:
            with self.journal.transaction() as session:
                row = q.order_by_client_id(session, order.client_order_id)
                if row is not None and row.status == "pending":
                    row.status = "rejected"
            raise
        return self._record_answer(order, answer)

    def cancel_order(self, symbol: str, client_order_id: str) -> Order:
        """Cancel an open order (conditional legs through the algo endpoint)."""
        row = self.journal.order_by_client_id(client_order_id)
        if row is None:
            raise BadConfigError(f"{symbol}: no journalled order {client_order_id!r}")
        self._cancel_on_venue(symbol, client_order_id, row.type)
        with self.journal.transaction() as session:
            stored = q.order_by_client_id(session, client_order_id)
            assert stored is not None
            stored.status = "canceled"
            for leg in session.query(db.ProtectiveOrder).filter(db.ProtectiveOrder.order_id == stored.id):
                leg.status = "canceled"
            return order_from_row(stored)

    def open_orders(self, symbol: str | None = None) -> list[Order]:
        """The venue's open orders, regular and conditional."""
        params = {"symbol": symbol} if symbol else {}
        plain = self.venue.call(self.client.futures_get_open_orders, **params)
        algo = self.venue.call(self.client.futures_get_open_orders, conditional=True, **params)
        return [venue_order(o) for o in plain] + [venue_algo(o) for o in algo]

    def positions(self) -> list[Position]:
        """Open positions on the venue."""
        out = []
        for row in self.venue.call(self.client.futures_position_information):
            amount = Decimal(row["positionAmt"])
            if amount:
                side: Literal["long", "short"] = "long" if amount > 0 else "short"
                out.append(Position(row["symbol"], side, abs(amount), Decimal(row["entryPrice"])))
        return out

    def balance(self) -> dict[str, Decimal]:
        """Wallet balance per asset."""
        return {
            row["asset"]: Decimal(row["balance"])
            for row in self.venue.call(self.client.futures_account_balance)
        }

    def place_protected(self, entry: ProtectedEntry) -> list[Order]:
        """Entry at market, then the stop for the whole position and the take-profit legs, verified."""
        rules = self._rules(entry.symbol)
        if self.market == "spot" and entry.side == "short":
            raise OrderRefusedError(f"{entry.symbol}: spot is long only")
        quantity = rules.round_quantity(entry.quantity)
        rules.check(quantity, rules.round_price(entry.reference_price))
        stop = rules.round_price(entry.stop)
        targets = [(rules.round_price(p), rules.round_quantity(n)) for p, n in entry.take_profits]
        legs = [ExitLeg("stop", float(stop), float(quantity), "stop")]
        legs += [ExitLeg("take_profit", float(p), float(n), f"tp{i}") for i, (p, n) in enumerate(targets, 1)]
        validate_exits(entry.side, float(entry.reference_price), float(quantity), legs)
        for price, size in targets:
            rules.check(size, price)
        side: Literal["buy", "sell"] = "buy" if entry.side == "long" else "sell"
        entry_id = client_order_id(entry.symbol, entry.bar_time, "entry")
        with self.journal.transaction() as session:  # the plan survives a crash before the exits exist
            if q.order_by_client_id(session, entry_id) is None:
                plan = {
                    "entry": entry_id,
                    "symbol": entry.symbol,
                    "side": entry.side,
                    "stop": str(stop),
                    "take_profits": [[str(p), str(n)] for p, n in targets],
                    "bar_time": entry.bar_time.isoformat(),
                }
                session.add(db.Event(kind="protected_entry", detail=plan))
        self._prepare_symbol(entry.symbol)
        placed = [self.place_order(OrderRequest(entry_id, entry.symbol, side, "market", quantity))]
        with self.journal.transaction() as session:  # the position's 1 R, for its trade's R multiple
            for position in q.open_positions(session, entry.symbol):
                if position.initial_stop is None:
                    position.initial_stop = position.stop = stop
        placed += self._protect(entry.symbol, entry.side, entry.bar_time, stop, targets)
        return placed

    def close_position(self, symbol: str, bar_time: pd.Timestamp, reason: str) -> Order | None:
        """Close ``symbol`` at market; reconcile cancels its exits once it is flat."""
        held = next((p for p in self.positions() if p.symbol == symbol), None)
        return None if held is None else self._close_at_market(held, reason, bar_time)

    def replace_stop(self, symbol: str, stop: Decimal, bar_time: pd.Timestamp) -> Order:
        """Place the moved stop, then cancel the old one; a stop the venue refuses closes at market."""
        rules = self._rules(symbol)
        stop = rules.round_price(stop)
        held = next((p for p in self.positions() if p.symbol == symbol), None)
        if held is None:
            raise OrderRefusedError(f"{symbol}: no open position to move the stop of")
        before = [o for o in self.open_orders(symbol) if o.type in ("stop_market", "stop_loss_limit")]
        moves = len(
            [row for row in self.journal.read(lambda s: q.open_orders(s, symbol)) if row.leg == "stop"]
        )
        request = self._stop_request(symbol, held, stop, client_order_id(symbol, bar_time, f"mv{moves}"))
        try:
            placed = self.place_order(request)
        except OrderRefusedError as err:  # e.g. it would trigger at once: the price is already through it
            self._event("stop_move_refused", symbol=symbol, order=request.client_order_id, reason=str(err))
            self._close_at_market(held, f"the moved stop {stop} was refused")
            return self._read(request, {"clientOrderId": request.client_order_id, "symbol": symbol})
        still = {o.client_order_id for o in self.open_orders(symbol)}
        for old in before:
            if old.client_order_id in still and old.client_order_id != request.client_order_id:
                self.cancel_order(symbol, old.client_order_id)
        with self.journal.transaction() as session:
            for position in q.open_positions(session, symbol):
                position.stop = stop
        return placed

    def _stop_request(self, symbol: str, held: Position, stop: Decimal, cid: str) -> OrderRequest:
        """A futures stop closing the whole position (the spot broker sizes and limits its own)."""
        return OrderRequest(cid, symbol, closing_side(held.side), "stop_market", Decimal(0), stop_price=stop,
                            reduce_only=True, leg="stop")  # fmt: skip

    def reconcile(self) -> ReconcileReport:
        """Read back positions and open orders; re-place a missing stop, close what cannot be protected."""
        report = ReconcileReport()
        self._settle_pending()
        self._sync_fills()
        plans = {
            e.detail["symbol"]: e.detail for e in reversed(self.journal.recent_events(500, "protected_entry"))
        }
        for position in self.positions():
            report.positions.append(position)
            if self._live_stop(position.symbol):
                continue
            report.missing_stops.append(position.symbol)
            plan = plans.get(position.symbol)
            if plan is None:  # no plan journalled for it: nobody knows its stop, so do not keep it
                self._close_at_market(position, "no journalled stop")
                report.closed_at_market.append(position.symbol)
                continue
            bar = pd.Timestamp(plan["bar_time"])
            targets = [(Decimal(p), Decimal(n)) for p, n in plan["take_profits"]]
            orders = self._protect(position.symbol, position.side, bar, Decimal(plan["stop"]), targets)
            report.replaced += [o.client_order_id for o in orders]
            if not self._live_stop(position.symbol):
                report.closed_at_market.append(position.symbol)
        self._cancel_leftover_exits()
        report.unprotected_positions = sum(not self._live_stop(p.symbol) for p in self.positions())
        return report

    def _cancel_leftover_exits(self) -> None:
        """Exits still open for a symbol the venue holds no position in (the stop filled first)."""
        held = {p.symbol for p in self.positions()}
        for row in self.journal.open_orders():
            if row.reduce_only and row.status == "new" and row.symbol not in held:
                try:
                    self.cancel_order(row.symbol, row.client_order_id)
                except OrderRefusedError:  # it filled or expired meanwhile: the next sync journals it
                    continue
                self._event("exit_cancelled", symbol=row.symbol, order=row.client_order_id, reason="flat")

    def unprotected_positions(self) -> int:
        """Open positions on the venue without a live stop (the goal is always 0)."""
        return sum(not self._live_stop(p.symbol) for p in self.positions())

    # -- protecting -------------------------------------------------------------------------
    def _protect(
        self,
        symbol: str,
        side: Literal["long", "short"],
        bar: pd.Timestamp,
        stop: Decimal,
        targets: list[tuple[Decimal, Decimal]],
    ) -> list[Order]:
        """Place the stop (re-placed once if refused or missing) and the take-profits."""
        exit_side = closing_side(side)
        placed: list[Order] = []
        stops = (
            select(func.count())
            .select_from(db.Order)
            .where(db.Order.symbol == symbol, db.Order.leg == "stop")
        )
        tried = int(self.journal.read(lambda session: session.scalar(stops)) or 0)
        protected = self._live_stop(symbol)  # placing the same decision again must not add a stop
        for attempt in (
            [] if protected else [tried + 1, tried + 2]
        ):  # a re-placed stop gets a new id: the old one may resurface
            name = "stop" if attempt == 1 else f"stop{attempt}"
            request = OrderRequest(
                client_order_id(symbol, bar, name),
                symbol,
                exit_side,
                "stop_market",
                Decimal(0),
                stop_price=stop,
                reduce_only=True,
                leg="stop",
            )
            try:
                placed.append(self.place_order(request))
            except OrderRefusedError as err:
                self._event("stop_refused", symbol=symbol, order=request.client_order_id, reason=str(err))
            protected = self._live_stop(symbol)
            if protected:
                break
            self._event("stop_missing", symbol=symbol, order=request.client_order_id)
        if not protected:
            for position in self.positions():
                if position.symbol == symbol:
                    self._close_at_market(position, "the stop was refused twice")
            return placed
        for i, (price, size) in enumerate(targets, 1):
            request = OrderRequest(
                client_order_id(symbol, bar, f"tp{i}"),
                symbol,
                exit_side,
                "take_profit_market",
                size,
                stop_price=price,
                reduce_only=True,
                leg=f"tp{i}",
            )
            try:
                placed.append(self.place_order(request))
            except OrderRefusedError as err:  # a missing target costs upside, not protection
                self._event(
                    "take_profit_refused", symbol=symbol, order=request.client_order_id, reason=str(err)
                )
        return placed

    def _live_stop(self, symbol: str) -> bool:
        algo = self.venue.call(self.client.futures_get_open_orders, conditional=True, symbol=symbol)
        return any(o.get("orderType") == "STOP_MARKET" for o in algo)

    def _close_at_market(self, position: Position, why: str, bar_time: pd.Timestamp | None = None) -> Order:
        """A reduce-only market order for the whole position, journalled like any order.

        Without a decision's ``bar_time`` (a protective close) the minute names it, so a
        retry within the minute is looked up, not resent.
        """
        minute = pd.Timestamp.now(tz="UTC").floor("min")
        request = (
            exit_request(position, minute, "close") if bar_time is None else exit_request(position, bar_time)
        )
        order = self.place_order(request)
        self._event("closed_at_market", symbol=position.symbol, reason=why, quantity=str(position.quantity))
        return order

    def _prepare_symbol(self, symbol: str) -> None:
        """Leverage and margin type, once per symbol and broker (not on every entry)."""
        from binance.exceptions import BinanceAPIException

        if symbol in self._prepared:
            return
        self.venue.call(self.client.futures_change_leverage, symbol=symbol, leverage=self.leverage)
        try:
            self.venue.call(
                self.client.futures_change_margin_type, symbol=symbol, marginType=self.margin_type
            )
        except OrderRefusedError as err:
            cause = err.__cause__
            if not (isinstance(cause, BinanceAPIException) and cause.code == -4046):  # already set
                raise
        self._prepared.add(symbol)

    # -- the venue's dialect (the spot broker overrides these) --------------------------------
    def _make_venue(self) -> FuturesVenue:
        return FuturesVenue(
            self.client, self.tries, lambda offset: self._event("clock_resync", offset_ms=offset)
        )

    def _cancel_on_venue(self, symbol: str, client_order_id: str, kind: str) -> None:
        key = "clientAlgoId" if kind in CONDITIONAL else "origClientOrderId"
        self.venue.call(self.client.futures_cancel_order, symbol=symbol, **{key: client_order_id})

    def _read(self, order: OrderRequest, answer: dict[str, Any]) -> Order:
        return venue_algo(answer) if order.type in CONDITIONAL else venue_order(answer)

    def _trades(self, symbol: str, answer: dict[str, Any]) -> list[dict[str, Any]]:
        """The venue's trades of an order (a triggered algo order's trades are its market child's)."""
        order_id = answer.get("actualOrderId") or answer.get("orderId")
        return list(self.venue.call(self.client.futures_account_trades, symbol=symbol, orderId=order_id))

    # -- venue rules ------------------------------------------------------------------------
    def _load_rules(self) -> dict[str, SymbolRules]:
        return symbol_rules(self.venue.call(self.client.futures_exchange_info))

    def _rules(self, symbol: str) -> SymbolRules:
        if symbol not in self.rules:
            raise OrderRefusedError(f"unknown symbol {symbol!r} on the venue")
        return self.rules[symbol]

    def _check(self, order: OrderRequest) -> None:
        rules = self._rules(order.symbol)
        if order.price is not None and (order.price <= 0 or rules.round_price(order.price) != order.price):
            raise OrderRefusedError(f"{order.client_order_id}: limit {order.price} off PRICE_FILTER or ≤ 0")
        if order.type not in ("market", "limit_maker"):
            if (
                order.stop_price is None
                or order.stop_price <= 0
                or rules.round_price(order.stop_price) != order.stop_price
            ):
                raise OrderRefusedError(
                    f"{order.client_order_id}: trigger {order.stop_price} off PRICE_FILTER or ≤ 0"
                )
            if order.type in CONDITIONAL and (order.leg == "stop" or order.quantity == 0):
                return  # closePosition: the venue closes whatever is open
        if rules.round_quantity(order.quantity) != order.quantity or order.quantity < rules.min_qty:
            raise OrderRefusedError(
                f"{order.symbol}: quantity {order.quantity} off LOT_SIZE (step {rules.step_size}, "
                f"min {rules.min_qty})"
            )
