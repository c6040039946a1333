"""The paper broker: the venue is the journal, fills follow :mod:`tasks.fills`.

State lives in the journal (orders, fills, positions, protective orders), so a restart
reads back exactly what was open. A market order fills at the symbol's current price (in
a replay, the next candle's open, set with :meth:`PaperBroker.set_price`) moved by the
slippage, with the taker fee; :meth:`PaperBroker.on_bar` lets a closed candle trigger the
stops and take-profits with the backtest's rule (a candle touching both fills the stop).
Spot is long only and a buy needs the cash. Futures trade both sides: an entry needs its
initial margin (notional / leverage) free beside the margin of the positions already open,
and every 8 hours (00:00, 08:00, 16:00 UTC, as Binance) an open position pays (long) or
receives (short) funding of ``funding_bps_8h`` of its notional at the candle's close
(Binance's baseline rate is 1 bp per 8 h; there is no funding history in the data, so it is
a constant). Liquidation is not simulated: every position carries a stop well inside it.
Fills are stamped with the simulated time (the candle's), so a replay journals its own
times. Every state change is one journal transaction.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Literal

import pandas as pd
from sqlalchemy import select
from sqlalchemy.orm import Session

from core.errors import BadConfigError
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
from serving.brokers.ledger import apply_fill, live_stop, order_from_row, order_row, position_side, utc_now
from serving.journal import Journal
from serving.journal import models as db
from serving.journal import queries as q
from tasks.fills import Bar, ExitLeg, closing_side, market_fill_price, triggered_exits, validate_exits

_ACCOUNT = "paper_account"
_FEE_QUANTUM = Decimal("0.00000001")
_FUNDING_EVERY = pd.Timedelta(hours=8)
_HOUR = pd.Timedelta(hours=1)


class PaperBroker:
    """A simulated venue whose book is the journal.

    Args:
        journal: where orders, fills and positions live.
        market: ``spot`` (long only) or ``futures``.
        rules: the tradable symbols and their filters.
        cash: starting quote balance, recorded on first use (later opens keep the first).
        quote: the quote asset, e.g. ``USDT``.
        fee_bps: taker fee per side.
        slippage_bps: slippage per side on market fills and triggered stops.
        leverage: futures initial margin is notional / leverage.
        funding_bps_8h: futures funding rate per 8 h (longs pay it when positive, shorts receive).
    """

    def __init__(
        self,
        journal: Journal,
        market: Literal["spot", "futures"],
        rules: Mapping[str, SymbolRules],
        cash: Decimal,
        quote: str = "USDT",
        fee_bps: float = 10.0,
        slippage_bps: float = 1.0,
        leverage: int = 1,
        funding_bps_8h: float = 1.0,
    ) -> None:
        if market not in ("spot", "futures"):
            raise BadConfigError(f"unknown market {market!r}; known: spot, futures")
        if leverage < 1 or (market == "spot" and leverage != 1):
            raise BadConfigError(f"leverage {leverage}: at least 1, and 1 on spot")
        self.journal, self.market, self.rules = journal, market, dict(rules)
        self.quote, self.fee_bps, self.slippage_bps = quote, fee_bps, slippage_bps
        self.leverage, self.funding_rate = leverage, Decimal(str(funding_bps_8h)) / 10_000
        self.prices: dict[str, Decimal] = {}
        self.time: datetime | None = None  # the simulated clock (a replay's); wall-clock when None
        with journal.transaction() as session:
            if not q.recent_events(session, limit=1, kind=_ACCOUNT):
                session.add(
                    db.Event(kind=_ACCOUNT, detail={"cash": str(cash), "market": market, "quote": quote})
                )

    # -- prices ---------------------------------------------------------------------------
    def set_price(self, symbol: str, price: Decimal, at: pd.Timestamp | None = None) -> None:
        """The price the next market order of ``symbol`` fills at (and the simulated time, if given)."""
        self.prices[self._rules(symbol).symbol] = price
        if at is not None:
            self.time = pd.Timestamp(at).to_pydatetime()

    def on_bar(
        self, symbol: str, bar_time: pd.Timestamp, bar: Bar, interval: pd.Timedelta = _HOUR
    ) -> list[Order]:
        """A closed candle: trigger the open positions' exits, settle funding, then price at its close.

        Returns the exit orders it filled.
        """
        filled: list[Order] = []
        close_time = pd.Timestamp(bar_time) + interval
        with self.journal.transaction() as session:
            for position in q.open_positions(session, symbol):
                filled += self._trigger_exits(session, position, bar_time, bar)
            if self.market == "futures":
                mark = Decimal(str(bar.close))
                for position in q.open_positions(session, symbol):
                    self._settle_funding(position, pd.Timestamp(bar_time), close_time, mark)
        self.prices[symbol] = Decimal(str(bar.close))
        self.time = close_time.to_pydatetime()
        return filled

    # -- the protocol ---------------------------------------------------------------------
    def place_order(self, order: OrderRequest) -> Order:
        """Fill a market order now; keep a stop / take-profit open until a candle triggers it."""
        with self.journal.transaction() as session:
            known = q.order_by_client_id(session, order.client_order_id)
            if known is not None:  # a retry or a restart: never twice
                return order_from_row(known)
            row = self._check_and_record(session, order)
            if order.type == "market":
                self._fill_market(session, row, self._now())
            return order_from_row(row)

    def close_position(self, symbol: str, bar_time: pd.Timestamp, reason: str) -> Order | None:
        """Close ``symbol`` at market now; its exits are cancelled as the position goes flat."""
        held = next((p for p in self.positions() if p.symbol == symbol), None)
        return None if held is None else self.place_order(exit_request(held, bar_time))

    def cancel_order(self, symbol: str, client_order_id: str) -> Order:
        """Cancel an open order (naming it when it is unknown or no longer open)."""
        with self.journal.transaction() as session:
            row = q.order_by_client_id(session, client_order_id)
            if row is None or row.symbol != symbol:
                raise BadConfigError(f"{symbol}: no order {client_order_id!r}")
            if row.status not in db.OPEN_ORDER_STATUSES:
                raise BadConfigError(f"{symbol} {client_order_id}: already {row.status}")
            row.status = "canceled"
            for leg in session.scalars(
                select(db.ProtectiveOrder).where(db.ProtectiveOrder.order_id == row.id)
            ):
                leg.status = "canceled"
            return order_from_row(row)

    def open_orders(self, symbol: str | None = None) -> list[Order]:
        """Orders that may still fill."""
        return [order_from_row(row) for row in self.journal.open_orders(symbol)]

    def positions(self) -> list[Position]:
        """Open positions."""
        return [
            Position(p.symbol, position_side(p.side), p.quantity, p.entry_price)
            for p in self.journal.open_positions()
        ]

    def balance(self) -> dict[str, Decimal]:
        """Quote cash (and, on spot, the base assets held), computed from the journal's fills."""
        return self.journal.read(self._balance)

    def _balance(self, session: Session) -> dict[str, Decimal]:
        start = Decimal(q.recent_events(session, limit=1, kind=_ACCOUNT)[0].detail["cash"])
        fills = session.scalars(select(db.Fill)).all()
        fees = sum((f.fee for f in fills), Decimal(0))
        if self.market == "futures":
            positions = session.scalars(select(db.Position)).all()
            realised = sum((p.realised_pnl + p.funding for p in positions), Decimal(0))
            return {self.quote: start + realised - fees}
        flows = sum((f.quantity * f.price * (-1 if f.order.side == "buy" else 1) for f in fills), Decimal(0))
        held: dict[str, Decimal] = {}
        for p in q.open_positions(session):
            base = p.symbol.removesuffix(self.quote)
            held[base] = held.get(base, Decimal(0)) + p.quantity
        return {self.quote: start + flows - fees, **held}

    def place_protected(self, entry: ProtectedEntry) -> list[Order]:
        """Entry, stop and take-profit legs in one transaction, every exit validated first.

        Idempotent: the legs' client order ids derive from the decision, so placing the
        same entry again returns the orders already placed.
        """
        rules = self._rules(entry.symbol)
        if self.market == "spot" and entry.side == "short":
            raise OrderRefusedError(f"{entry.symbol}: spot is long only")
        quantity = rules.round_quantity(entry.quantity)
        rules.check(quantity, rules.round_price(entry.reference_price))  # LOT_SIZE, MIN_NOTIONAL first
        stop = rules.round_price(entry.stop)
        targets = [(rules.round_price(p), rules.round_quantity(n)) for p, n in entry.take_profits]
        legs = [ExitLeg("stop", float(stop), float(quantity), "stop")]
        legs += [ExitLeg("take_profit", float(p), float(n), f"tp{i}") for i, (p, n) in enumerate(targets, 1)]
        validate_exits(entry.side, float(entry.reference_price), float(quantity), legs)
        side: Literal["buy", "sell"] = "buy" if entry.side == "long" else "sell"
        exit_side = closing_side(entry.side)
        names = ["entry", *(leg.name for leg in legs)]
        ids = {name: client_order_id(entry.symbol, entry.bar_time, name) for name in names}
        with self.journal.transaction() as session:
            known = q.order_by_client_id(session, ids["entry"])
            if known is not None:
                placed = [q.order_by_client_id(session, cid) for cid in ids.values()]
                return [order_from_row(row) for row in placed if row is not None]
            order = OrderRequest(ids["entry"], entry.symbol, side, "market", quantity)
            entry_row = self._check_and_record(session, order)
            position = self._fill_market(session, entry_row, self._now())
            assert position is not None, "an entry that is not reduce-only always opens a position"
            position.initial_stop = position.stop = stop
            rows = [entry_row]
            for leg in legs:
                kind: Literal["stop_market", "take_profit_market"] = (
                    "stop_market" if leg.kind == "stop" else "take_profit_market"
                )
                price = stop if leg.kind == "stop" else targets[int(leg.name[2:]) - 1][0]
                leg_qty = quantity if leg.kind == "stop" else targets[int(leg.name[2:]) - 1][1]
                request = OrderRequest(
                    ids[leg.name], entry.symbol, exit_side, kind, leg_qty, stop_price=price,
                    reduce_only=True, leg=leg.name,
                )  # fmt: skip
                row = self._check_and_record(session, request)
                session.add(
                    db.ProtectiveOrder(
                        position=position,
                        order=row,
                        kind=leg.kind,
                        price=price,
                        quantity=leg_qty,
                        status="new",
                    )
                )
                rows.append(row)
            session.flush()
            return [order_from_row(row) for row in rows]

    def replace_stop(self, symbol: str, stop: Decimal, bar_time: pd.Timestamp) -> Order:
        """Move the position's stop (break-even, trailing): the new stop and the old one's cancel, at once."""
        rules = self._rules(symbol)
        stop = rules.round_price(stop)
        with self.journal.transaction() as session:
            position = next(iter(q.open_positions(session, symbol)), None)
            if position is None:
                raise OrderRefusedError(f"{symbol}: no open position to move the stop of")
            side = position_side(position.side)
            moves = sum(1 for leg in position.protective_orders if leg.kind == "stop")
            request = OrderRequest(
                client_order_id(symbol, bar_time, f"mv{moves}"), symbol, closing_side(side), "stop_market",
                position.quantity, stop_price=stop, reduce_only=True, leg="stop",
            )  # fmt: skip
            row = self._check_and_record(session, request)
            old = live_stop(position)
            if old is not None:
                old.status = old.order.status = "canceled"
            session.add(
                db.ProtectiveOrder(position=position, order=row, kind="stop", price=stop,
                                   quantity=position.quantity, status="new")
            )  # fmt: skip
            position.stop = stop
            session.flush()
            return order_from_row(row)

    def reconcile(self) -> ReconcileReport:
        """Every open position must hold a live stop; re-place a missing one (journalled)."""
        report = ReconcileReport()
        with self.journal.transaction() as session:
            for position in q.open_positions(session):
                side = position_side(position.side)
                held = Position(position.symbol, side, position.quantity, position.entry_price)
                report.positions.append(held)
                if live_stop(position) is not None:
                    continue
                report.missing_stops.append(position.symbol)
                if position.stop is None:
                    session.add(db.Event(kind="unprotected", detail={"symbol": position.symbol}))
                    continue
                attempt = 1 + sum(1 for leg in position.protective_orders if leg.kind == "stop")
                request = OrderRequest(
                    client_order_id(position.symbol, pd.Timestamp(position.opened_at), f"stop{attempt}"),
                    position.symbol, closing_side(side), "stop_market", position.quantity,
                    stop_price=position.stop, reduce_only=True, leg="stop",
                )  # fmt: skip
                row = self._check_and_record(session, request)
                session.add(
                    db.ProtectiveOrder(
                        position=position, order=row, kind="stop", price=position.stop,
                        quantity=position.quantity, status="new",
                    )
                )  # fmt: skip
                session.add(
                    db.Event(
                        kind="stop_replaced", detail={"symbol": position.symbol, "order": row.client_order_id}
                    )
                )
                report.replaced.append(row.client_order_id)
            session.flush()
            report.unprotected_positions = sum(live_stop(p) is None for p in q.open_positions(session))
        return report

    def unprotected_positions(self) -> int:
        """Open positions without a live stop (the goal is always 0)."""
        return sum(live_stop(p) is None for p in self.journal.open_positions())

    # -- inside a transaction ---------------------------------------------------------------
    def _rules(self, symbol: str) -> SymbolRules:
        if symbol not in self.rules:
            raise OrderRefusedError(f"unknown symbol {symbol!r}; tradable: {', '.join(sorted(self.rules))}")
        return self.rules[symbol]

    def _check_and_record(self, session: Session, order: OrderRequest) -> db.Order:
        rules = self._rules(order.symbol)
        price = order.stop_price if order.type != "market" else self.prices.get(order.symbol)
        if price is None:
            raise OrderRefusedError(f"{order.symbol}: no price yet for a market order (set_price / on_bar)")
        rules.check(order.quantity, rules.round_price(price) if order.type == "market" else price)
        if order.type != "market" and not order.reduce_only:
            raise OrderRefusedError(
                f"{order.client_order_id}: stop and take-profit orders must be reduce-only"
            )
        if self.market == "spot" and order.side == "sell" and not order.reduce_only:
            raise OrderRefusedError(f"{order.symbol}: spot is long only (a sell must close a position)")
        if order.type == "market" and not order.reduce_only:
            self._check_funds(session, order, price)
        row = order_row(order, "new")
        session.add(row)
        session.flush()
        return row

    def _check_funds(self, session: Session, order: OrderRequest, price: Decimal) -> None:
        """Spot: the cash for the buy and its fee; futures: the initial margin beside what is in use."""
        cash = self._balance(session)[self.quote]
        notional = order.quantity * price
        fee = notional * Decimal(str(self.fee_bps)) / 10_000
        if self.market == "spot":
            if notional + fee > cash:
                raise OrderRefusedError(
                    f"{order.symbol}: buying {order.quantity} needs {notional + fee:.2f} {self.quote}, "
                    f"{cash:.2f} free"
                )
            return
        used = (
            sum((p.quantity * p.entry_price for p in q.open_positions(session)), Decimal(0)) / self.leverage
        )
        margin = notional / self.leverage
        if margin + fee > cash - used:
            raise OrderRefusedError(
                f"{order.symbol}: margin {margin:.2f} {self.quote} needed at {self.leverage}x leverage, "
                f"{cash - used:.2f} free ({used:.2f} in use)"
            )

    def _settle_funding(
        self, position: db.Position, bar_time: pd.Timestamp, close_time: pd.Timestamp, mark: Decimal
    ) -> None:
        """Funding at every 8-hour mark in (bar_time, close_time] the position was open for, once each."""
        since = pd.Timestamp(position.funded_at or position.opened_at)
        instant = close_time.floor(_FUNDING_EVERY)
        due = []
        while instant > max(bar_time, since):
            due.append(instant)
            instant -= _FUNDING_EVERY
        if not due:
            return
        sign = -1 if position.side == "long" else 1  # a positive rate: longs pay shorts
        payment = sign * position.quantity * mark * self.funding_rate * len(due)
        position.funding += payment.quantize(_FEE_QUANTUM, rounding=ROUND_HALF_EVEN)
        position.funded_at = max(due).to_pydatetime()

    def _now(self) -> datetime:
        return self.time if self.time is not None else utc_now()

    def _fill_market(self, session: Session, row: db.Order, when: datetime) -> db.Position | None:
        """Fill a market order at the current price; open, grow or reduce the position."""
        reference = float(self.prices[row.symbol])
        side: Literal["buy", "sell"] = "buy" if row.side == "buy" else "sell"
        price = Decimal(str(market_fill_price(reference, side, self.slippage_bps)))
        return self._record_fill(session, row, row.quantity, price, when)

    def _record_fill(
        self, session: Session, row: db.Order, quantity: Decimal, price: Decimal, when: datetime
    ) -> db.Position | None:
        fee = (quantity * price * Decimal(str(self.fee_bps)) / Decimal(10_000)).quantize(_FEE_QUANTUM)
        return apply_fill(session, row, quantity, price, fee, self.quote, when)

    def _trigger_exits(
        self, session: Session, position: db.Position, bar_time: pd.Timestamp, bar: Bar
    ) -> list[Order]:
        live = [leg for leg in position.protective_orders if leg.status in db.OPEN_ORDER_STATUSES]
        legs = [ExitLeg(leg.kind, float(leg.price), float(leg.quantity), str(leg.id)) for leg in live]  # type: ignore[arg-type]
        fills = triggered_exits(
            position_side(position.side), float(position.quantity), legs, bar, self.slippage_bps
        )
        by_id = {str(leg.id): leg for leg in live}
        done = []
        for fill in fills:
            leg = by_id[fill.leg.name]
            quantity = min(position.quantity, leg.quantity if leg.kind != "stop" else position.quantity)
            price = Decimal(str(fill.price)) if leg.kind == "stop" else leg.price
            leg.status = "filled"
            self._record_fill(session, leg.order, quantity, price, bar_time.to_pydatetime())
            done.append(order_from_row(leg.order))
            if position.quantity == 0:
                break
        return done
