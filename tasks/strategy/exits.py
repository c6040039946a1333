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
        if confidence < self.conservative_below:
            return "conservative"
        return "aggressive" if confidence > self.aggressive_above else "balanced"

    def take_profits(
        self, side: Side, entry: float, distance: float, quantity: float, confidence: float
    ) -> list[tuple[float, float]]:
        """(price, quantity) per take-profit leg, nearest first."""
        sign = 1.0 if side == "long" else -1.0
        return [
            (entry + sign * r * distance, quantity * share) for r, share in PROFILES[self.profile(confidence)]
        ]

    def moved_stop(self, side: Side, entry: float, stop: float, initial_stop: float, best: float) -> float:
        """The stop after the best close so far: break-even, then trailing; never looser."""
        risk = abs(entry - initial_stop)
        if risk <= 0:
            return stop
        sign = 1.0 if side == "long" else -1.0
        gained = sign * (best - entry) / risk
        wanted = stop
        if self.breakeven_r and gained >= self.breakeven_r:
            wanted = entry
        if self.trail_after_r and gained >= self.trail_after_r:
            wanted = best - sign * self.trail_r * risk
        return max(stop, wanted) if side == "long" else min(stop, wanted)
