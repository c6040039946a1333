"""The strategy the backtest and the live flow both call: policy → ranking → risk → sizing → exits.

:meth:`Strategy.decide` sees the :class:`~tasks.strategy.risk.Book` at a bar's close and
that bar's :class:`Signal` per symbol, and returns what to do at the next price: positions
to close (the policy went flat or turned), stops to move (break-even, trailing), entries
(with their stop and take-profit legs), and vetoes with their reasons. It is pure: the
backtest applies its answer with :mod:`tasks.fills`, the live flow through a broker.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from tasks.fills import Side
from tasks.strategy.exits import Exits
from tasks.strategy.policy import Policy
from tasks.strategy.risk import Book, RiskLimits
from tasks.strategy.sizing import Sizing, payoff_ratio


@dataclass(frozen=True)
class Signal:
    """A symbol at a bar's close: the calibrated P(up) and what sizing and costs need.

    Attributes:
        symbol: e.g. ``BTCUSDT``.
        bar_time: the bar's open time (its P(up) is known at its close).
        p_up: calibrated P(next close > this close).
        price: the bar's close (the expected entry).
        atr_pct: ATR / close.
        regime: the regime code (NaN when unknown).
        edge_scale: the symbol's mean absolute bar return (the edge a right call earns).
        cost: cost per side (fee + slippage) as a fraction of notional.
    """

    symbol: str
    bar_time: pd.Timestamp
    p_up: float
    price: float
    atr_pct: float
    regime: float
    edge_scale: float
    cost: float

    @property
    def confidence(self) -> float:
        """|2p − 1|."""
        return abs(2 * self.p_up - 1)

    @property
    def net_edge(self) -> float:
        """The expected edge of the call net of a round trip."""
        return self.confidence * self.edge_scale - 2 * self.cost


@dataclass(frozen=True)
class Entry:
    """Open a position at the next price, with its exits."""

    symbol: str
    side: Side
    quantity: float
    stop: float
    take_profits: tuple[tuple[float, float], ...]
    bar_time: pd.Timestamp
    reference_price: float
    p_up: float


@dataclass
class Decisions:
    """What :meth:`Strategy.decide` asks for at one bar's close."""

    closes: dict[str, str] = field(default_factory=dict)  # symbol → reason
    stop_moves: dict[str, float] = field(default_factory=dict)  # symbol → new stop
    entries: list[Entry] = field(default_factory=list)
    vetoes: list[tuple[str, str]] = field(default_factory=list)  # (symbol, reason)


Rounder = Callable[[str, float], float]


def _same(_: str, value: float) -> float:
    return value


@dataclass(frozen=True)
class Strategy:
    """Policy, sizing, risk and exits: one object, two callers.

    Attributes:
        policy: P(up) → the side to hold.
        sizing: stop distance and quantity.
        risk: modes and vetoes.
        exits: take-profit legs, break-even, trailing.
        top_k: at most this many new entries per bar, best net edge first.
        close_on_flat: close a position when the policy goes flat (not only when it turns).
    """

    policy: Policy = field(default_factory=Policy)
    sizing: Sizing = field(default_factory=Sizing)
    risk: RiskLimits = field(default_factory=RiskLimits)
    exits: Exits = field(default_factory=Exits)
    top_k: int = 2
    close_on_flat: bool = False

    def want(self, signal: Signal) -> float:
        """The policy's event: 1 long, -1 short, 0 flat, NaN keep what is held."""
        event = self.policy.events(np.array([signal.p_up]), signal.edge_scale, signal.cost)
        return float(event[0])

    def decide(
        self,
        book: Book,
        signals: list[Signal],
        step: pd.Timedelta,
        round_quantity: Rounder = _same,
        round_price: Rounder = _same,
    ) -> Decisions:
        """What to do at the next price, from the book at this bar's close and its signals.

        ``round_quantity`` / ``round_price`` put sizes and prices on the venue's grids
        (the broker would round them the same way).
        """
        out = Decisions()
        by_symbol = {s.symbol: s for s in signals}
        for symbol, held in book.positions.items():
            signal = by_symbol.get(symbol)
            if signal is None:
                continue
            event = self.want(signal)
            turned = (event == 1.0 and held.side == "short") or (event == -1.0 and held.side == "long")
            if turned or (self.close_on_flat and event == 0.0):
                out.closes[symbol] = "signal turned" if turned else "signal flat"
                continue
            wanted = self.exits.moved_stop(held.side, held.entry, held.stop, held.initial_stop, held.best)
            moved = round_price(symbol, wanted)
            if moved != held.stop and (moved > held.stop if held.side == "long" else moved < held.stop):
                out.stop_moves[symbol] = moved
        candidates = [s for s in signals if s.symbol not in book.positions and self.want(s) in (1.0, -1.0)]
        candidates.sort(key=lambda s: (-s.net_edge, s.symbol))
        mode = self.risk.mode(book)
        scale = self.risk.risk_scale(mode)
        payoff = payoff_ratio(book.r_multiples)
        taken: list[Entry] = []
        for signal in candidates[: self.top_k]:
            side: Side = "long" if self.want(signal) == 1.0 else "short"
            if side == "short" and not self.policy.allow_short:
                continue
            distance = self.sizing.stop_distance(signal.price, signal.atr_pct, signal.regime)
            p_win = signal.p_up if side == "long" else 1 - signal.p_up
            risk = self.sizing.risk_fraction(p_win, payoff, len(book.r_multiples)) * scale
            quantity = round_quantity(
                signal.symbol, self.sizing.quantity(book.equity, signal.price, distance, risk)
            )
            notional = quantity * signal.price + sum(e.quantity * e.reference_price for e in taken)
            reason = self.risk.veto(book, signal.symbol, signal.confidence, notional, signal.bar_time, step)
            if reason is None and quantity <= 0:
                reason = "size 0 (Kelly sees no edge, or the stop distance is 0)"
            if reason is not None:
                out.vetoes.append((signal.symbol, reason))
                continue
            sign = 1.0 if side == "long" else -1.0
            stop = round_price(signal.symbol, signal.price - sign * distance)
            legs = self.exits.take_profits(side, signal.price, distance, quantity, signal.confidence)
            targets = tuple(
                (round_price(signal.symbol, p), round_quantity(signal.symbol, q)) for p, q in legs
            )
            taken.append(
                Entry(signal.symbol, side, quantity, stop, tuple(t for t in targets if t[1] > 0),
                      signal.bar_time, signal.price, signal.p_up)
            )  # fmt: skip
        out.entries = taken
        return out
