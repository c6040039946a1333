"""Sizing: how far the stop sits and how much to buy, from ATR, equity and the track record.

* The stop distance is ATR times a multiple that depends on the regime: wider when the
  market trends or breaks out (noise is larger), tighter when it ranges.
* The risk of a trade (what the stop loses) is ``risk_per_trade`` of equity; after
  ``kelly_after`` closed trades it becomes fractional Kelly from the calibrated P(up) and
  the observed payoff ratio (average win / average loss), capped at ``kelly_cap`` and 0 when
  Kelly says the bet has no edge, as the original's sizing did after 20 trades.
* The position's notional is capped at ``max_position_fraction`` of equity times the leverage.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tasks.features.regime import Regime

#: ATR multiples of the stop distance by regime (unknown regime: the CHOPPY multiple).
DEFAULT_ATR_MULTIPLES = {Regime.TRENDING: 2.5, Regime.RANGING: 1.5, Regime.CHOPPY: 2.0, Regime.BREAKOUT: 2.5}


@dataclass(frozen=True)
class Sizing:
    """Sizing parameters (fractions of equity unless named otherwise).

    Attributes:
        risk_per_trade: equity lost when the stop fills, before Kelly takes over.
        atr_multiples: regime code → stop distance in ATRs.
        kelly_fraction: the share of full Kelly bet once the track record allows it.
        kelly_after: closed trades needed before Kelly sizing.
        kelly_cap: the most equity one trade may risk under Kelly.
        max_position_fraction: notional cap per position, as a fraction of equity × leverage.
        leverage: futures leverage (1 on spot).
    """

    risk_per_trade: float = 0.01
    atr_multiples: tuple[tuple[int, float], ...] = tuple(DEFAULT_ATR_MULTIPLES.items())
    kelly_fraction: float = 0.25
    kelly_after: int = 20
    kelly_cap: float = 0.02
    max_position_fraction: float = 0.25
    leverage: float = 1.0

    def atr_multiple(self, regime: float | None) -> float:
        """The regime's ATR multiple (CHOPPY's when the regime is unknown)."""
        table = dict(self.atr_multiples)
        if regime is None or not np.isfinite(regime):
            return table[Regime.CHOPPY]
        return table.get(int(regime), table[Regime.CHOPPY])

    def stop_distance(self, price: float, atr_pct: float, regime: float | None) -> float:
        """How far below (long) or above (short) the entry the stop sits, in price."""
        return price * max(float(atr_pct), 0.0) * self.atr_multiple(regime)

    def risk_fraction(self, p_win: float, payoff: float | None, closed_trades: int) -> float:
        """The share of equity this trade may lose at its stop."""
        if closed_trades < self.kelly_after or payoff is None or payoff <= 0:
            return self.risk_per_trade
        kelly = p_win - (1.0 - p_win) / payoff
        return float(np.clip(kelly * self.kelly_fraction, 0.0, self.kelly_cap))

    def quantity(self, equity: float, price: float, distance: float, risk: float) -> float:
        """Base quantity that loses ``risk`` of ``equity`` at the stop, within the notional cap."""
        if distance <= 0 or price <= 0 or equity <= 0 or risk <= 0:
            return 0.0
        by_risk = equity * risk / distance
        cap = equity * self.max_position_fraction * self.leverage / price
        return float(min(by_risk, cap))


def payoff_ratio(r_multiples: list[float]) -> float | None:
    """Average win over average loss of closed trades (None until both exist)."""
    wins = [r for r in r_multiples if r > 0]
    losses = [-r for r in r_multiples if r < 0]
    if not wins or not losses:
        return None
    return float(np.mean(wins) / np.mean(losses))
