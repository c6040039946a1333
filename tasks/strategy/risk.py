"""One risk engine: modes from the book's health, and a veto (with its reason) per entry.

It replaces the original's orchestrator policy, risk guard, safety governor and emergency
stop with one set of rules, applied in this order to every candidate entry:

* the **mode**: HALT when the day's drawdown reaches ``daily_drawdown`` or the drawdown from
  the equity peak reaches ``halt_drawdown`` (no new entries; exits keep working); CRITICAL
  after ``critical_after_losses`` losing trades in a row; DEFENSIVE after
  ``defensive_after_losses``; NORMAL otherwise. DEFENSIVE and CRITICAL scale the risk per
  trade down and cap the open positions lower;
  The model supervisor (:mod:`serving.supervisor`) can hold the mode at DEFENSIVE or above
  (``Book.floor_mode``) while the live model is off its training behaviour;
* min confidence, no second position in a symbol, a cooldown after a symbol's exit, a
  symbol's cool-off after ``symbol_disable_after`` losing trades in it in a row, max open
  positions, max gross exposure (sum of notional over equity);
* the symbol performance manager's sizing: a symbol whose track record (average R over its
  trades, after ``Strategy.track_after`` of them) is negative takes ``poor_symbol_scale`` of
  the risk per trade.

* max correlation-weighted exposure: sqrt(vᵀ C v) / equity of the book with the entry (v
  the signed notionals, C the correlations of the last ``Strategy.window`` bars' returns,
  unknown ones taken as 1), so three longs in coins that move together count nearly as
  three, a long and a short in them nearly as none.

The checks themselves are :func:`tasks.strategy.kernel.decide_bar`'s; this module holds the
thresholds and the book.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np
import pandas as pd

from tasks.fills import Side


class Mode(StrEnum):
    """How much risk the book may take now."""

    NORMAL = "NORMAL"
    DEFENSIVE = "DEFENSIVE"
    CRITICAL = "CRITICAL"
    HALT = "HALT"


@dataclass
class Held:
    """A position the book holds, with what its exits need."""

    symbol: str
    side: Side
    quantity: float
    entry: float
    stop: float
    initial_stop: float
    best: float
    opened: pd.Timestamp
    take_profits: list[tuple[float, float]] = field(default_factory=list)

    def notional(self, price: float) -> float:
        """The position's value at ``price``."""
        return self.quantity * price

    def unrealised(self, price: float) -> float:
        """Profit if closed at ``price`` (before fees)."""
        sign = 1.0 if self.side == "long" else -1.0
        return sign * (price - self.entry) * self.quantity


@dataclass
class Book:
    """What the strategy knows of the account at a bar's close (rebuilt from the journal live).

    Attributes:
        equity: cash plus unrealised P&L at the bar's close.
        peak_equity: the highest equity so far.
        day_start_equity: equity at the close of the previous UTC day's last bar.
        positions: symbol → held position.
        last_exit: symbol → the bar a position in it was closed on.
        r_multiples: closed trades' net results in R, oldest first.
        symbol_r: the same per symbol (its track record), oldest first.
        prices: symbol → the bar's close.
        floor_mode: the least cautious mode allowed now (the supervisor's verdict).
    """

    equity: float
    peak_equity: float
    day_start_equity: float
    positions: dict[str, Held] = field(default_factory=dict)
    last_exit: dict[str, pd.Timestamp] = field(default_factory=dict)
    r_multiples: list[float] = field(default_factory=list)
    symbol_r: dict[str, list[float]] = field(default_factory=dict)
    prices: dict[str, float] = field(default_factory=dict)
    floor_mode: Mode = Mode.NORMAL

    @property
    def losing_streak(self) -> int:
        """Losing trades in a row, newest back."""
        streak = 0
        for r in reversed(self.r_multiples):
            if r >= 0:
                break
            streak += 1
        return streak


@dataclass(frozen=True)
class RiskLimits:
    """The risk engine's thresholds (fractions of equity unless named otherwise)."""

    min_confidence: float = 0.02
    max_open_positions: int = 4
    max_gross_exposure: float = 1.0
    max_correlated_exposure: float = 0.75
    cooldown_bars: int = 2
    daily_drawdown: float = 0.05
    halt_drawdown: float = 0.25
    defensive_after_losses: int = 3
    critical_after_losses: int = 6
    defensive_risk_scale: float = 0.5
    critical_risk_scale: float = 0.25
    defensive_max_positions: int = 2
    critical_max_positions: int = 1
    symbol_disable_after: int = 4
    symbol_cooloff_bars: int = 48
    poor_symbol_scale: float = 0.5

    def mode(self, book: Book) -> Mode:
        """The book's mode now."""
        from tasks.strategy.kernel import mode_of

        params = _parameters(self)
        return list(Mode)[
            mode_of(
                params,
                book.equity,
                book.peak_equity,
                book.day_start_equity,
                book.losing_streak,
                list(Mode).index(book.floor_mode),
            )
        ]

    def risk_scale(self, mode: Mode) -> float:
        """How much of the normal risk per trade the mode allows."""
        from tasks.strategy.kernel import risk_scale

        return float(risk_scale(_parameters(self), list(Mode).index(mode)))

    def max_positions(self, mode: Mode) -> int:
        """Open positions the mode allows."""
        from tasks.strategy.kernel import max_positions

        return int(max_positions(_parameters(self), list(Mode).index(mode)))


def _parameters(risk: RiskLimits) -> np.ndarray:
    from tasks.strategy.engine import Strategy

    return Strategy(risk=risk).parameters[0]
