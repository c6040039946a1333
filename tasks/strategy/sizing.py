"""Sizing: how far the stop sits and how much to buy, from ATR, equity and the track record.

* The stop distance is ATR times a multiple that depends on the regime: wider when the
  market trends or breaks out (noise is larger), tighter when it ranges.
* How much, by the sizing ``rule`` (interchangeable; the backtest and the live flow share it):

  - ``fixed`` (the default): the stop loses ``risk_per_trade`` of equity (fixed fractional);
  - ``kelly``: the same until ``kelly_after`` trades have closed, then fractional Kelly from
    the calibrated P(up) and the observed payoff ratio (average win / average loss), capped at
    ``kelly_cap`` and 0 when Kelly says the bet has no edge, as the original sized after 20;
  - ``vol-target``: the position's one-bar volatility (the window's return deviation) is
    ``vol_target`` of equity, whatever the stop distance.

  The default is ``fixed`` because nothing else beat it beyond its bootstrap interval in
  ``bench/sizing.py`` (README, "Sizing"); the original's Q-learning sizer is judged there too
  (:mod:`tasks.strategy.agents`) and is not a rule of the shared strategy.
* The position's notional is capped at ``max_position_fraction`` of equity times the leverage.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core.errors import BadConfigError
from tasks.features.regime import Regime

#: ATR multiples of the stop distance by regime (unknown regime: the CHOPPY multiple).
DEFAULT_ATR_MULTIPLES = {Regime.TRENDING: 2.5, Regime.RANGING: 1.5, Regime.CHOPPY: 2.0, Regime.BREAKOUT: 2.5}

#: The sizing rules, in the kernel's code order (:data:`tasks.strategy.kernel.RULE_FIXED` …).
SIZING_RULES = ("fixed", "kelly", "vol-target")


@dataclass(frozen=True)
class Sizing:
    """Sizing parameters (fractions of equity unless named otherwise).

    Attributes:
        rule: how much to buy: ``fixed``, ``kelly`` or ``vol-target`` (module docstring).
        risk_per_trade: equity lost when the stop fills (``fixed``; ``kelly`` before it takes over).
        atr_multiples: regime code → stop distance in ATRs.
        kelly_fraction: the share of full Kelly bet once the track record allows it.
        kelly_after: closed trades needed before Kelly sizing.
        kelly_cap: the most equity one trade may risk under Kelly.
        max_position_fraction: notional cap per position, as a fraction of equity × leverage.
        leverage: futures leverage (1 on spot).
        vol_target: ``vol-target``'s one-bar volatility of a position, as a share of equity.
    """

    rule: str = "fixed"
    risk_per_trade: float = 0.01
    atr_multiples: tuple[tuple[int, float], ...] = tuple(DEFAULT_ATR_MULTIPLES.items())
    kelly_fraction: float = 0.25
    kelly_after: int = 20
    kelly_cap: float = 0.02
    max_position_fraction: float = 0.25
    leverage: float = 1.0
    vol_target: float = 0.0015

    def __post_init__(self) -> None:
        if self.rule not in SIZING_RULES:
            raise BadConfigError(f"sizing rule {self.rule!r}: one of {', '.join(SIZING_RULES)}")

    def stop_distance(self, price: float, atr_pct: float, regime: float | None) -> float:
        """How far below (long) or above (short) the entry the stop sits, in price."""
        from tasks.strategy.kernel import stop_distance

        params, atr_table, _ = _parameters(self)
        return float(
            stop_distance(params, atr_table, price, atr_pct, np.nan if regime is None else float(regime))
        )

    def risk_fraction(self, p_win: float, payoff: float | None, closed_trades: int) -> float:
        """The share of equity this trade may lose at its stop."""
        from tasks.strategy.kernel import risk_fraction

        return float(
            risk_fraction(_parameters(self)[0], p_win, np.nan if payoff is None else payoff, closed_trades)
        )

    def quantity(self, equity: float, price: float, distance: float, risk: float) -> float:
        """Base quantity that loses ``risk`` of ``equity`` at the stop, within the notional cap."""
        from tasks.strategy.kernel import quantity_for

        return float(quantity_for(_parameters(self)[0], equity, price, distance, risk))


#: The sizing the backtest and the live flow use unless told otherwise (one object, both callers).
DEFAULT_SIZING = Sizing()


def _parameters(sizing: Sizing) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from tasks.strategy.engine import Strategy

    return Strategy(sizing=sizing).parameters


def payoff_ratio(r_multiples: list[float]) -> float | None:
    """Average win over average loss of closed trades (None until both exist)."""
    wins = [r for r in r_multiples if r > 0]
    losses = [-r for r in r_multiples if r < 0]
    if not wins or not losses:
        return None
    return (sum(wins) / len(wins)) / (sum(losses) / len(losses))  # summed in order, as the backtest does
