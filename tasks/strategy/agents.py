"""The original's learning agents, rebuilt to be judged: a Q-learning sizer and strategy selectors.

Pure and seeded, so a backtest and a live loop that feed them the same closed trades in the
same order get the same decisions. Each agent learns **online**: at a decision time it may
learn only from trades that closed *before* that time (:meth:`QSizer.learn` holds later
ones back until a later call), so it never sees the outcome of a trade it is sizing.

* :class:`QSizer` — the original's RL position-sizing agent: 300 states (regime 5 ×
  confidence 5 × portfolio load 4 × recent performance 3), 25 actions (size multiplier
  0.3–1.5 × leverage 1–5), reward ``pnl_pct − hours/24·0.01 − 0.5·drawdown + 0.1·win``,
  ε = 0.10, α = 0.15, γ = 0.95; the Q-table is updated when a position closes.
* :class:`QSelector` — the original's meta-strategy controller: Q-learning over regimes
  choosing among strategies (ε = 0.10, α = 0.20).
* :class:`ThompsonSelector` — the stronger alternative: Thompson sampling over the same
  choices per regime (a Gaussian posterior of each choice's mean R multiple).

Whether any of them beats fixed-fraction sizing is for the benchmark to say, not this module.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from tasks.features.regime import Regime

#: The original's state space.
REGIMES = ("low_vol_trending", "high_vol_trending", "low_vol_ranging", "high_vol_ranging", "neutral")
CONFIDENCES = ("very_low", "low", "medium", "high", "very_high")
LOADS = ("light", "moderate", "heavy", "max")
PERFORMANCES = ("bad", "neutral", "good")
N_STATES = len(REGIMES) * len(CONFIDENCES) * len(LOADS) * len(PERFORMANCES)  # 300

#: The original's action space: size multiplier × leverage.
SIZE_MULTIPLIERS = (0.3, 0.5, 0.7, 1.0, 1.5)
LEVERAGES = (1.0, 2.0, 3.0, 4.0, 5.0)
N_ACTIONS = len(SIZE_MULTIPLIERS) * len(LEVERAGES)  # 25

CONFIDENCE_EDGES = (0.1, 0.2, 0.3, 0.4)  # |2p − 1|
LOAD_EDGES = (0.25, 0.5, 0.75)  # gross exposure / its limit
PERFORMANCE_BAND = 0.25  # mean R of the recent trades beyond ±this is good / bad


def regime_index(regime: float, atr_ratio: float) -> int:
    """One of :data:`REGIMES` from the regime code and ATR / its 50-bar mean (high vol above 1)."""
    if not np.isfinite(regime):
        return REGIMES.index("neutral")
    high_vol = bool(np.isfinite(atr_ratio) and atr_ratio > 1.0)
    if int(regime) in (Regime.TRENDING, Regime.BREAKOUT):
        return REGIMES.index("high_vol_trending" if high_vol else "low_vol_trending")
    if int(regime) == Regime.RANGING:
        return REGIMES.index("high_vol_ranging" if high_vol else "low_vol_ranging")
    return REGIMES.index("neutral")


def sizing_state(regime: float, atr_ratio: float, confidence: float, load: float, recent_r: float) -> int:
    """The state index in ``[0, 300)``.

    Args:
        regime: the regime code (NaN unknown).
        atr_ratio: ATR over its 50-bar mean.
        confidence: |2·P(up) − 1|.
        load: gross exposure as a share of its limit (0 empty, 1 full).
        recent_r: mean R multiple of the recent closed trades (NaN: none yet → neutral).
    """
    r = regime_index(regime, atr_ratio)
    c = int(np.searchsorted(CONFIDENCE_EDGES, confidence, side="right"))
    lo = int(np.searchsorted(LOAD_EDGES, load, side="right"))
    p = 1 if not np.isfinite(recent_r) or abs(recent_r) <= PERFORMANCE_BAND else (2 if recent_r > 0 else 0)
    return ((r * len(CONFIDENCES) + c) * len(LOADS) + lo) * len(PERFORMANCES) + p


def reward(pnl_pct: float, hours: float, drawdown_pct: float, win: bool) -> float:
    """The original's reward: ``pnl_pct − hours/24·0.01 − 0.5·drawdown + 0.1·win`` (percent units)."""
    return pnl_pct - hours / 24 * 0.01 - 0.5 * drawdown_pct + (0.1 if win else 0.0)


@dataclass(frozen=True)
class Outcome:
    """A closed trade as an agent learns from it.

    Attributes:
        key: the decision it closes (the entry's id, as given to ``act``).
        closed_at: when it closed (ns since the epoch, the clock decisions use).
        pnl_pct: its return on the position's notional, in percent.
        hours: how long it was held.
        drawdown_pct: the worst adverse excursion while held, in percent (≥ 0).
        r_multiple: P&L over the risk at the stop.
        next_state: the sizer's state when it closed (the Q-update's next state).
    """

    key: str
    closed_at: int
    pnl_pct: float
    hours: float
    drawdown_pct: float
    r_multiple: float
    next_state: int = 0

    @property
    def reward(self) -> float:
        """The sizer's reward for this trade."""
        return reward(self.pnl_pct, self.hours, self.drawdown_pct, self.pnl_pct > 0)


@dataclass
class _Learner:
    """Pending decisions and the outcomes held back until their close is in the past."""

    pending: dict[str, tuple[int, int, int]] = field(default_factory=dict)  # key → (state, action, at)
    waiting: list[Outcome] = field(default_factory=list)
    updates: int = 0

    def ready(self, outcomes: Iterable[Outcome], now: int) -> list[Outcome]:
        """Outcomes closed strictly before ``now`` whose decision this agent made, in close order.

        Each decision is learned once: an outcome given again (or twice) counts once.
        """
        pool = {o.key: o for o in [*self.waiting, *outcomes] if o.key in self.pending}
        due = sorted((o for o in pool.values() if o.closed_at < now), key=_order)
        self.waiting = [o for o in pool.values() if o.closed_at >= now]
        return due


def _order(o: Outcome) -> tuple[int, str]:
    return o.closed_at, o.key


class QSizer:
    """The Q-learning position-sizing agent (see the module docstring for its spaces and reward).

    ``max_leverage`` bounds the actions it may take (1 on spot: only the five multipliers).
    """

    def __init__(
        self,
        epsilon: float = 0.10,
        alpha: float = 0.15,
        gamma: float = 0.95,
        seed: int = 0,
        max_leverage: float = 1.0,
        table: np.ndarray | None = None,
    ) -> None:
        self.epsilon, self.alpha, self.gamma, self.seed = epsilon, alpha, gamma, seed
        self.allowed = np.array(
            [a for a in range(N_ACTIONS) if LEVERAGES[a % len(LEVERAGES)] <= max_leverage]
        )
        self.max_leverage = max_leverage
        self.table = np.zeros((N_STATES, N_ACTIONS)) if table is None else np.array(table, dtype=float)
        self._rng = np.random.default_rng(seed)
        self._learner = _Learner()

    @staticmethod
    def action(index: int) -> tuple[float, float]:
        """(size multiplier, leverage) of an action index."""
        return SIZE_MULTIPLIERS[index // len(LEVERAGES)], LEVERAGES[index % len(LEVERAGES)]

    def act(self, key: str, state: int, now: int) -> tuple[float, float]:
        """ε-greedy (multiplier, leverage) for the entry ``key`` in ``state``, remembered until it closes."""
        if self._rng.random() < self.epsilon:
            a = int(self._rng.choice(self.allowed))
        else:
            values = self.table[state, self.allowed]
            a = int(self.allowed[int(np.flatnonzero(values == values.max())[0])])  # ties: the first
        self._learner.pending[key] = (state, a, now)
        return self.action(a)

    def learn(self, outcomes: Iterable[Outcome], now: int) -> int:
        """Q-updates from the outcomes that closed before ``now``; later ones wait. Returns the count."""
        done = 0
        for o in self._learner.ready(outcomes, now):
            state, a, _ = self._learner.pending.pop(o.key)
            target = o.reward + self.gamma * float(self.table[o.next_state, self.allowed].max())
            self.table[state, a] += self.alpha * (target - self.table[state, a])
            done += 1
        self._learner.updates += done
        return done

    @property
    def updates(self) -> int:
        """Q-updates made so far."""
        return self._learner.updates

    def to_json(self) -> str:
        """The table and settings (the pending decisions travel with their open positions)."""
        return json.dumps(
            {
                "kind": "q-sizer", "epsilon": self.epsilon, "alpha": self.alpha, "gamma": self.gamma,
                "seed": self.seed, "max_leverage": self.max_leverage, "updates": self.updates,
                "table": self.table.tolist(),
            }
        )  # fmt: skip

    @classmethod
    def from_json(cls, text: str) -> QSizer:
        """The agent :meth:`to_json` stored (its random stream restarts from the seed)."""
        doc = json.loads(text)
        agent = cls(
            doc["epsilon"], doc["alpha"], doc["gamma"], doc["seed"], doc["max_leverage"], doc["table"]
        )
        agent._learner.updates = int(doc["updates"])
        return agent


class _Selector:
    """What both selectors share: a choice that opened no trade is dropped."""

    _learner: _Learner

    def discard(self, key: str) -> None:
        """Forget the choice ``key`` (its strategy did not want a position: no trade, no outcome)."""
        self._learner.pending.pop(key, None)


class QSelector(_Selector):
    """Q-learning over regimes choosing one of ``arms`` (the original's meta-strategy controller)."""

    def __init__(
        self, arms: Sequence[str], epsilon: float = 0.10, alpha: float = 0.20, seed: int = 0
    ) -> None:
        self.arms, self.epsilon, self.alpha = tuple(arms), epsilon, alpha
        self.table = np.zeros((len(REGIMES), len(self.arms)))
        self._rng = np.random.default_rng(seed)
        self._learner = _Learner()

    def choose(self, key: str, regime: int, now: int, among: Sequence[str] | None = None) -> str:
        """ε-greedy arm (of ``among``, default all) for the regime index ``regime``.

        ``key`` names the trade the choice opens; its outcome is learned when it closes.
        """
        allowed = _allowed(self.arms, among)
        if self._rng.random() < self.epsilon:
            a = int(allowed[int(self._rng.integers(len(allowed)))])
        else:
            row = self.table[regime, allowed]
            a = int(allowed[int(np.flatnonzero(row == row.max())[0])])
        self._learner.pending[key] = (regime, a, now)
        return self.arms[a]

    def learn(self, outcomes: Iterable[Outcome], now: int) -> int:
        """Move each chosen arm's value toward the trade's R multiple (closed before ``now``)."""
        done = 0
        for o in self._learner.ready(outcomes, now):
            regime, a, _ = self._learner.pending.pop(o.key)
            self.table[regime, a] += self.alpha * (o.r_multiple - self.table[regime, a])
            done += 1
        return done


class ThompsonSelector(_Selector):
    """Thompson sampling per regime over ``arms``: a Gaussian posterior of each arm's mean R.

    Prior N(0, ``prior_sd``²) per (regime, arm), unit-variance R observations; each choice
    draws one sample per arm and takes the largest, so an arm with few trades is still tried.
    """

    def __init__(self, arms: Sequence[str], prior_sd: float = 1.0, seed: int = 0) -> None:
        self.arms, self.prior_sd = tuple(arms), prior_sd
        self.count = np.zeros((len(REGIMES), len(self.arms)))
        self.total = np.zeros((len(REGIMES), len(self.arms)))
        self._rng = np.random.default_rng(seed)
        self._learner = _Learner()

    def posterior(self, regime: int) -> tuple[np.ndarray, np.ndarray]:
        """(mean, sd) of each arm's mean R in ``regime``."""
        precision = 1 / self.prior_sd**2 + self.count[regime]
        return self.total[regime] / precision, 1 / np.sqrt(precision)

    def choose(self, key: str, regime: int, now: int, among: Sequence[str] | None = None) -> str:
        """The arm (of ``among``, default all) whose posterior sample is largest."""
        allowed = _allowed(self.arms, among)
        mean, sd = self.posterior(regime)
        draws = self._rng.normal(mean, sd)  # one draw per arm, whatever ``among`` is: reproducible
        a = int(allowed[int(np.argmax(draws[allowed]))])
        self._learner.pending[key] = (regime, a, now)
        return self.arms[a]

    def learn(self, outcomes: Iterable[Outcome], now: int) -> int:
        """Add each closed trade's R multiple to its arm's posterior (closed before ``now``)."""
        done = 0
        for o in self._learner.ready(outcomes, now):
            regime, a, _ = self._learner.pending.pop(o.key)
            self.count[regime, a] += 1
            self.total[regime, a] += o.r_multiple
            done += 1
        return done


def _allowed(arms: tuple[str, ...], among: Sequence[str] | None) -> np.ndarray:
    """Indices of ``among`` in ``arms`` (all of them when None)."""
    if among is None:
        return np.arange(len(arms))
    return np.array([arms.index(a) for a in among])
