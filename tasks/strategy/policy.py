"""The policy: from a calibrated P(up) to the side a symbol should hold, net of costs.

The expected edge of a long is ``(2p - 1) * E|r|`` (E|r| the mean absolute bar return of the
training window); the policy goes long when the edge beats the round-trip cost times
``enter``, short when it is below minus that, and back to flat only when the edge falls
inside ``± exit`` times the cost; in between it keeps what it holds (hysteresis), so it does
not flip every bar. With costs far above any edge it stays flat. The original system's
momentum fallback (:func:`momentum_positions`) is here as a baseline, never as a fallback.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class Policy:
    """From P(up) to a position in {-1, 0, +1} (scaled by ``size``).

    Attributes:
        enter: open when |edge| > enter × round-trip cost.
        exit: close when |edge| < exit × round-trip cost (exit < enter: hysteresis).
        allow_short: short when the edge is negative enough (else flat).
        size: fraction of the symbol's capital per position.
    """

    enter: float = 1.0
    exit: float = 0.25
    allow_short: bool = True
    size: float = 1.0

    def events(
        self, p_up: np.ndarray, abs_return: np.ndarray | float, cost: np.ndarray | float
    ) -> np.ndarray:
        """Per row: 1 open long, -1 open short, 0 go flat, NaN keep what is held."""
        from tasks.strategy.engine import Strategy
        from tasks.strategy.kernel import policy_events

        p, scale, per_side = np.broadcast_arrays(
            np.asarray(p_up, dtype=np.float64), np.asarray(abs_return, dtype=np.float64),
            np.asarray(cost, dtype=np.float64),
        )  # fmt: skip
        params = Strategy(policy=self).parameters[0]
        flat = policy_events(params, p.ravel().copy(), scale.ravel().copy(), per_side.ravel().copy())
        return flat.reshape(p.shape)

    def positions(
        self, p_up: np.ndarray, abs_return: np.ndarray | float, cost: np.ndarray | float
    ) -> np.ndarray:
        """Positions of one symbol's consecutive rows (starting flat)."""
        return hold(self.events(p_up, abs_return, cost)) * self.size


def hold(event: np.ndarray) -> np.ndarray:
    """Forward-fill position events (NaN: keep the previous position; start flat)."""
    filled = pd.Series(event).ffill().fillna(0.0)
    return filled.to_numpy(dtype=np.float64)


def momentum_positions(log_ret_24: np.ndarray, threshold: float = 0.01) -> np.ndarray:
    """The original system's fallback: BUY if the 24 h change > +1 %, SELL if < -1 %, else HOLD."""
    change = np.expm1(np.asarray(log_ret_24, dtype=np.float64))
    event = np.where(change > threshold, 1.0, np.where(change < -threshold, -1.0, np.nan))
    return hold(event)


def edge_scales(abs_return: dict[str, float], symbols: list[str]) -> np.ndarray:
    """Each symbol's edge scale E|r|; a symbol the training data lacked gets the mean of the others."""
    typical = float(np.mean(list(abs_return.values()))) if abs_return else 0.0
    return np.array([abs_return.get(s, typical) for s in symbols], dtype=np.float64)
