"""Exits: the stop always, take-profit legs at R multiples, break-even and a trailing stop.

R is the entry's stop distance. The default take-profit plan closes 30 % / 30 % / 40 % of
the position at 1R / 2R / 3R ("balanced"); the profile follows the confidence of the call:
a weak call takes profit sooner (conservative), a strong one lets it run (aggressive).
Once the price has gone ``breakeven_r`` in our favour the stop moves to the entry; once it
has gone ``trail_after_r`` the stop trails ``trail_r`` behind the best close. A stop only
ever moves in our favour.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tasks.fills import Side

#: name → ((R multiple, fraction of the position), ...), nearest first.
PROFILES: dict[str, tuple[tuple[float, float], ...]] = {
    "conservative": ((0.75, 0.4), (1.5, 0.3), (2.0, 0.3)),
    "balanced": ((1.0, 0.3), (2.0, 0.3), (3.0, 0.4)),
    "aggressive": ((1.5, 0.3), (3.0, 0.3), (5.0, 0.4)),
}


@dataclass(frozen=True)
class Exits:
    """Exit parameters.

    Attributes:
        conservative_below: confidence |2p-1| under which the conservative profile applies.
        aggressive_above: confidence over which the aggressive profile applies.
        breakeven_r: favourable move (in R) after which the stop goes to the entry (0: off).
        trail_after_r: favourable move (in R) after which the stop trails (0: off).
        trail_r: the trailing distance in R behind the best close.
    """

    conservative_below: float = 0.1
    aggressive_above: float = 0.3
    breakeven_r: float = 1.0
    trail_after_r: float = 2.0
    trail_r: float = 1.0

    def profile(self, confidence: float) -> str:
        """The take-profit profile of a call this confident."""
        from tasks.strategy.kernel import profile_of

        return ("conservative", "balanced", "aggressive")[profile_of(_parameters(self)[0], confidence)]

    def take_profits(
        self, side: Side, entry: float, distance: float, quantity: float, confidence: float
    ) -> list[tuple[float, float]]:
        """(price, quantity) per take-profit leg, nearest first (no venue grid)."""
        from tasks.strategy.kernel import MAX_LEGS, take_profit_legs

        params, _, profiles = _parameters(self)
        prices, quantities = np.zeros(MAX_LEGS), np.zeros(MAX_LEGS)
        sign = 1.0 if side == "long" else -1.0
        legs = take_profit_legs(
            params, profiles, sign, entry, distance, quantity, confidence, 0.0, 0.0, 0, 0, prices, quantities
        )
        return [(float(prices[j]), float(quantities[j])) for j in range(legs)]

    def moved_stop(self, side: Side, entry: float, stop: float, initial_stop: float, best: float) -> float:
        """The stop after the best close so far: break-even, then trailing; never looser."""
        from tasks.strategy.kernel import moved_stop

        sign = 1.0 if side == "long" else -1.0
        return float(moved_stop(_parameters(self)[0], sign, entry, stop, initial_stop, best))


def _parameters(exits: Exits) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from tasks.strategy.engine import Strategy

    return Strategy(exits=exits).parameters
