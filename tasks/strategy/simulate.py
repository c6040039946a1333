"""The backtest with exits: the strategy bar by bar, filled by :mod:`tasks.fills`, as the paper broker fills.

Per bar t of the timeline, in the order the live flow meets them:

1. what was decided at the previous close fills at t's open: closes and entries at market
   (slippage, taker fee), stop moves take effect;
2. t's high and low trigger stops and take-profits (the stop first when both are touched);
3. futures pay or receive funding at each 8-hour mark in (t, t + step] (positions opened
   before it), at t's close;
4. the book is marked at t's close (equity, peak, the day's start), the best close of each
   position updated;
5. :meth:`Strategy.decide` sees the book and t's signals.

Quantities and prices go through the venue's grids (``rules``) exactly as the broker
rounds them, so replaying the same candles through the live loop with the paper broker
gives the same trades; :func:`summary` turns the result into the evaluation's figures.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal

import numpy as np
import pandas as pd

from tasks.fills import Bar, ExitLeg, closing_side, fee, market_fill_price, triggered_exits
from tasks.strategy.engine import Decisions, Signal, Strategy
from tasks.strategy.risk import Book, Held

_FUNDING_EVERY = pd.Timedelta(hours=8)


@dataclass(frozen=True)
class Venue:
    """What a fill costs: the paper broker's parameters.

    Attributes:
        fee_bps: taker fee per side.
        slippage_bps: slippage per side on market fills and stops.
        funding_bps_8h: futures funding per 8 h (longs pay it when positive); 0 on spot.
        cash: starting equity (quote).
    """

    fee_bps: float = 10.0
    slippage_bps: float = 1.0
    funding_bps_8h: float = 0.0
    cash: float = 10_000.0


@dataclass
class Trade:
    """A closed position."""

    symbol: str
    side: str
    quantity: float
    entry_time: pd.Timestamp
    entry_price: float
    exit_time: pd.Timestamp
    realised: float
    fees: float
    funding: float
    risk: float
    exits: list[str] = field(default_factory=list)

    @property
    def net(self) -> float:
        """Realised P&L plus funding less fees."""
        return self.realised + self.funding - self.fees

    @property
    def r_multiple(self) -> float:
        """Net P&L in units of the entry's risk (stop distance × quantity)."""
        return self.net / self.risk if self.risk > 0 else 0.0


@dataclass
class _Open:
    held: Held
    legs: list[ExitLeg]
    realised: float = 0.0
    fees: float = 0.0
    funding: float = 0.0
    funded_until: pd.Timestamp | None = None
    exits: list[str] = field(default_factory=list)
    opened_quantity: float = 0.0


@dataclass
class Simulation:
    """The backtest's answer: closed trades, the equity at every close, vetoes, what is still open."""

    trades: list[Trade]
    equity: pd.Series
    vetoes: list[tuple[pd.Timestamp, str, str]]
    open_positions: dict[str, Held]
    fees: float
    funding: float


class Rules:
    """The venue's grids as float functions (quantities down to the step, prices to the tick)."""

    def __init__(self, rules: Mapping[str, object] | None) -> None:
        self.rules = dict(rules or {})

    def quantity(self, symbol: str, value: float) -> float:
        """``value`` rounded down to the symbol's step (as the broker does)."""
        rule = self.rules.get(symbol)
        return float(rule.round_quantity(Decimal(str(value)))) if rule is not None else value  # type: ignore[attr-defined]

    def price(self, symbol: str, value: float) -> float:
        """``value`` rounded to the symbol's tick."""
        rule = self.rules.get(symbol)
        return float(rule.round_price(Decimal(str(value)))) if rule is not None else value  # type: ignore[attr-defined]


def signals_at(rows: pd.DataFrame, abs_return: Mapping[str, float], cost: float) -> list[Signal]:
    """The bar's :class:`Signal` per symbol from rows with ``p_up``, ``close``, ``atr_pct``, ``regime``."""
    typical = float(np.mean(list(abs_return.values()))) if abs_return else 0.0
    regime = rows["regime"].to_numpy(dtype=np.float64) if "regime" in rows else np.full(len(rows), np.nan)
    out = []
    numbers = rows[["p_up", "close", "atr_pct"]].to_numpy(dtype=np.float64)
    for symbol, when, (p_up, close, atr), code in zip(
        rows["symbol"].astype(str), rows["open_time"], numbers, regime, strict=True
    ):
        scale = float(abs_return.get(symbol, typical))
        signal = Signal(
            symbol, pd.Timestamp(when), float(p_up), float(close), float(atr), float(code), scale, cost
        )
        out.append(signal)
    return out


def bars_of(rows: pd.DataFrame) -> dict[str, Bar]:
    """Symbol → its :class:`~tasks.fills.Bar` from rows with open, high, low, close."""
    prices = rows[["open", "high", "low", "close"]].to_numpy(dtype=np.float64)
    return {str(s): Bar(*map(float, p)) for s, p in zip(rows["symbol"], prices, strict=True)}


def simulate(
    frame: pd.DataFrame,
    strategy: Strategy,
    step: pd.Timedelta,
    venue: Venue,
    abs_return: Mapping[str, float],
    cost: float,
    rules: Mapping[str, object] | None = None,
    then: pd.DataFrame | None = None,
) -> Simulation:
    """Run ``strategy`` over ``frame`` (one row per symbol and bar: OHLC, ``p_up``, ``atr_pct``, ``regime``).

    ``cost`` is the per-side cost the policy weighs edges against; ``venue`` what fills cost.
    ``then``: the rows of the bar after the last: what the last close decided fills at its
    open (as the live loop fills it), and nothing else of it is simulated.
    """
    grid = Rules(rules)
    book = Book(venue.cash, venue.cash, venue.cash)
    state = _State(book, venue, grid)
    vetoes: list[tuple[pd.Timestamp, str, str]] = []
    pending = Decisions()
    for when, rows in frame.sort_values(["open_time", "symbol"]).groupby("open_time", sort=True):
        bar_time = pd.Timestamp(str(when))
        bars = bars_of(rows)
        state.execute(pending, bars, bar_time)
        state.exits(bars, bar_time)
        state.fund(bars, bar_time, step)
        state.mark(bars, bar_time)
        pending = strategy.decide(book, signals_at(rows, abs_return, cost), step, grid.quantity, grid.price)
        vetoes += [(bar_time, s, reason) for s, reason in pending.vetoes]
    if then is not None and len(then):
        state.execute(pending, bars_of(then), pd.Timestamp(str(then["open_time"].iloc[0])))
    equity = pd.Series(dict(state.equity_at), dtype=np.float64)
    return Simulation(state.trades, equity, vetoes, {s: o.held for s, o in state.open.items()},
                      state.fees_paid, state.funding_paid)  # fmt: skip


class _State:
    """The simulated account: open positions with their legs, cash flows, the book."""

    def __init__(self, book: Book, venue: Venue, grid: Rules) -> None:
        self.book, self.venue, self.grid = book, venue, grid
        self.open: dict[str, _Open] = {}
        self.trades: list[Trade] = []
        self.cash = venue.cash  # start + realised + funding - fees
        self.equity_at: list[tuple[pd.Timestamp, float]] = []
        self.fees_paid = self.funding_paid = 0.0

    def execute(self, decisions: Decisions, bars: Mapping[str, Bar], at: pd.Timestamp) -> None:
        """Closes, stop moves and entries decided at the last close, at this bar's open."""
        for symbol in decisions.closes:
            if symbol in self.open and symbol in bars:
                held = self.open[symbol].held
                price = market_fill_price(bars[symbol].open, closing_side(held.side), self.venue.slippage_bps)
                self._fill(symbol, held.quantity, price, at, "close")
        for symbol, stop in decisions.stop_moves.items():
            if symbol in self.open:
                position = self.open[symbol]
                position.held.stop = stop
                position.legs = [ExitLeg("stop", stop, leg.quantity, leg.name) if leg.kind == "stop" else leg
                                 for leg in position.legs]  # fmt: skip
        for entry in decisions.entries:
            if entry.symbol not in bars or entry.symbol in self.open:
                continue
            price = market_fill_price(
                bars[entry.symbol].open, "buy" if entry.side == "long" else "sell", self.venue.slippage_bps
            )
            paid = fee(entry.quantity * price, self.venue.fee_bps)
            held = Held(entry.symbol, entry.side, entry.quantity, price, entry.stop, entry.stop, price, at,
                        list(entry.take_profits))  # fmt: skip
            legs = [ExitLeg("stop", entry.stop, entry.quantity, "stop")]
            legs += [ExitLeg("take_profit", p, q, f"tp{i}") for i, (p, q) in enumerate(entry.take_profits, 1)]
            self.open[entry.symbol] = _Open(held, legs, fees=paid, opened_quantity=entry.quantity)
            self.cash -= paid
            self.fees_paid += paid
            self.book.positions[entry.symbol] = held

    def exits(self, bars: Mapping[str, Bar], at: pd.Timestamp) -> None:
        """Stops and take-profits the bar triggers."""
        for symbol in list(self.open):
            if symbol not in bars:
                continue
            position = self.open[symbol]
            held = position.held
            for done in triggered_exits(
                held.side, held.quantity, position.legs, bars[symbol], self.venue.slippage_bps
            ):
                self._fill(symbol, min(done.quantity, held.quantity), done.price, at, done.leg.name)
                if symbol not in self.open:
                    break
                position.legs = [leg for leg in position.legs if leg is not done.leg]

    def fund(self, bars: Mapping[str, Bar], at: pd.Timestamp, step: pd.Timedelta) -> None:
        """Funding at each 8-hour mark in (at, at + step] for positions opened before it."""
        if not self.venue.funding_bps_8h:
            return
        rate = self.venue.funding_bps_8h / 1e4
        for symbol, position in self.open.items():
            if symbol not in bars:
                continue
            since = position.funded_until or position.held.opened
            instant, due = (at + step).floor(_FUNDING_EVERY), 0
            while instant > max(at, since):
                due += 1
                instant -= _FUNDING_EVERY
            if due:
                sign = -1.0 if position.held.side == "long" else 1.0
                paid = sign * position.held.quantity * bars[symbol].close * rate * due
                position.funding += paid
                self.cash += paid
                self.funding_paid -= paid
                position.funded_until = (at + step).floor(_FUNDING_EVERY)

    def mark(self, bars: Mapping[str, Bar], at: pd.Timestamp) -> None:
        """The book at this bar's close: prices, best closes, equity, peak, the day's start."""
        book = self.book
        for symbol, bar in bars.items():
            book.prices[symbol] = bar.close
            held = book.positions.get(symbol)
            if held is not None:
                held.best = max(held.best, bar.close) if held.side == "long" else min(held.best, bar.close)
        unrealised = sum(h.unrealised(book.prices.get(s, h.entry)) for s, h in book.positions.items())
        book.equity = self.cash + unrealised
        earlier = [e for t, e in self.equity_at if t < at.normalize()]
        book.day_start_equity = earlier[-1] if earlier else self.venue.cash
        self.equity_at.append((at, book.equity))
        book.peak_equity = max(book.peak_equity, book.equity)

    def _fill(self, symbol: str, quantity: float, price: float, at: pd.Timestamp, leg: str) -> None:
        position = self.open[symbol]
        held = position.held
        sign = 1.0 if held.side == "long" else -1.0
        paid = fee(quantity * price, self.venue.fee_bps)
        pnl = sign * (price - held.entry) * quantity
        position.realised += pnl
        position.fees += paid
        position.exits.append(leg)
        self.cash += pnl - paid
        self.fees_paid += paid
        held.quantity -= quantity
        if held.quantity > 1e-12:
            return
        risk = abs(held.entry - held.initial_stop) * position.opened_quantity
        trade = Trade(symbol, held.side, position.opened_quantity, held.opened, held.entry, at,
                      position.realised, position.fees, position.funding, risk, position.exits)  # fmt: skip
        self.trades.append(trade)
        self.book.r_multiples.append(trade.r_multiple)
        self.book.last_exit[symbol] = at
        del self.open[symbol]
        del self.book.positions[symbol]


def summary(simulation: Simulation, step: pd.Timedelta) -> dict[str, float]:
    """Net Sharpe (per bar, annualised), total return, max drawdown, trades, win rate, fees, funding."""
    equity = simulation.equity
    if equity.empty:
        return {"sharpe": 0.0, "total_return": 0.0, "max_drawdown": 0.0, "trades": 0.0}
    start = equity.iloc[0] if len(equity) else 1.0
    returns = equity.pct_change().fillna(equity.iloc[0] / start - 1)
    sd = returns.std(ddof=1)
    bars_per_year = pd.Timedelta(days=365.25) / step
    r = np.array([t.r_multiple for t in simulation.trades])
    return {
        "sharpe": float(returns.mean() / sd * np.sqrt(bars_per_year)) if sd > 0 else 0.0,
        "total_return": float(equity.iloc[-1] / start - 1),
        "max_drawdown": float((equity / equity.cummax() - 1).min()),
        "trades": float(len(simulation.trades)),
        "win_rate": float((r > 0).mean()) if len(r) else 0.0,
        "mean_r": float(r.mean()) if len(r) else 0.0,
        "fees_paid": float(simulation.fees),
        "funding_paid": float(simulation.funding),
    }
