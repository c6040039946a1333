"""The learning agents learn online: only from trades closed before the decision time."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.features.regime import Regime
from tasks.strategy.agents import (
    LEVERAGES,
    N_ACTIONS,
    N_STATES,
    Outcome,
    QSelector,
    QSizer,
    ThompsonSelector,
    regime_index,
    reward,
    sizing_state,
)

HOUR = 3_600_000_000_000  # ns


def test_the_spaces_and_the_reward_are_the_originals() -> None:
    """300 states, 25 actions; the seeds' worked example: 2.37 − 0.002 − 0.4 + 0.1 ≈ 2.068."""
    assert (N_STATES, N_ACTIONS) == (300, 25)
    assert reward(2.37, 4.5, 0.8, True) == pytest.approx(2.37 - 4.5 / 24 * 0.01 - 0.4 + 0.1)
    states = {
        sizing_state(code, ratio, conf, load, perf)
        for code in (*map(float, Regime), np.nan)
        for ratio in (0.8, 1.3)
        for conf in (0.05, 0.15, 0.25, 0.35, 0.6)
        for load in (0.1, 0.3, 0.6, 0.9)
        for perf in (-1.0, 0.0, np.nan, 1.0)
    }
    assert min(states) == 0 and max(states) == N_STATES - 1 and len(states) == N_STATES
    assert regime_index(float(Regime.BREAKOUT), 1.5) == regime_index(float(Regime.TRENDING), 1.2)


def test_the_q_table_changes_only_from_trades_closed_before_the_decision_time() -> None:
    """A trade that closes after ``now`` is held back; it updates the table at a later call."""
    agent = QSizer(epsilon=0.0, seed=1, max_leverage=5)
    state = sizing_state(float(Regime.TRENDING), 0.8, 0.3, 0.1, np.nan)
    agent.act("t1", state, now=0)
    closes = Outcome("t1", closed_at=10 * HOUR, pnl_pct=2.0, hours=10, drawdown_pct=0.5, r_multiple=1.2)
    before = agent.table.copy()
    assert agent.learn([closes], now=10 * HOUR) == 0  # closes at the decision time: not yet known
    np.testing.assert_array_equal(agent.table, before)
    assert agent.learn([], now=5 * HOUR) == 0  # still waiting
    np.testing.assert_array_equal(agent.table, before)
    assert agent.learn([], now=10 * HOUR + 1) == 1  # now in the past
    changed = np.argwhere(agent.table != before)
    assert changed.tolist() == [[state, 0]]  # the greedy first action (×0.3, 1x) of that state alone
    assert agent.table[state, 0] == pytest.approx(0.15 * closes.reward)
    assert agent.learn([], now=20 * HOUR) == 0  # learned once
    assert agent.learn([closes, closes], now=30 * HOUR) == 0  # given again: still once


def test_outcomes_of_decisions_it_did_not_make_are_ignored_and_order_is_by_close() -> None:
    agent = QSizer(epsilon=0.0, seed=1)
    agent.act("a", 3, now=0)
    agent.act("b", 3, now=0)
    late = Outcome("a", 5 * HOUR, -1.0, 5, 1.0, -1.0)
    early = Outcome("b", 2 * HOUR, 1.0, 2, 0.1, 0.8)
    stranger = Outcome("z", 1 * HOUR, 9.0, 1, 0.0, 5.0)
    assert agent.learn([late, stranger, early], now=6 * HOUR) == 2
    replay = QSizer(epsilon=0.0, seed=1)
    replay.act("a", 3, now=0)
    replay.act("b", 3, now=0)
    replay.learn([early], now=3 * HOUR)
    replay.learn([late], now=6 * HOUR)
    np.testing.assert_array_equal(agent.table, replay.table)  # same updates, in close order


def test_spot_takes_no_leverage_and_the_agent_is_reproducible() -> None:
    """On spot (max leverage 1) only the five multipliers; the same seed, the same choices."""
    a, b = QSizer(seed=7), QSizer(seed=7)
    picks = [a.act(f"k{i}", i % N_STATES, 0) for i in range(200)]
    assert {lev for _, lev in picks} == {1.0}
    assert picks == [b.act(f"k{i}", i % N_STATES, 0) for i in range(200)]
    futures = QSizer(epsilon=1.0, seed=7, max_leverage=5)
    assert {lev for _, lev in (futures.act(f"k{i}", 0, 0) for i in range(300))} == set(LEVERAGES)


def test_the_q_table_round_trips_through_json() -> None:
    agent = QSizer(epsilon=0.0, seed=3)
    agent.act("t", 42, 0)
    agent.learn([Outcome("t", HOUR, 1.5, 1, 0.2, 1.0)], now=2 * HOUR)
    again = QSizer.from_json(agent.to_json())
    np.testing.assert_array_equal(again.table, agent.table)
    assert again.updates == 1 and again.max_leverage == agent.max_leverage


@pytest.mark.parametrize("kind", [QSelector, ThompsonSelector])
def test_selectors_learn_the_better_arm_online(kind: type) -> None:
    """With arm "b" earning +1 R and "a" −1 R in a regime, both selectors end up choosing "b"."""
    agent = kind(["a", "b"], seed=5)
    rng = np.random.default_rng(0)
    for t in range(300):
        now = t * HOUR
        arm = agent.choose(f"t{t}", 0, now)
        r = (1.0 if arm == "b" else -1.0) + rng.normal(0, 0.5)
        agent.learn([Outcome(f"t{t}", now + HOUR // 2, r, 0.5, 0.0, r)], now=now + HOUR)
    late = [agent.choose(f"x{i}", 0, 400 * HOUR) for i in range(100)]
    assert late.count("b") >= 85
