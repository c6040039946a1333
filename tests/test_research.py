"""Strategy research maths: nested selection reads only earlier folds; universes only earlier candles."""

from __future__ import annotations

import numpy as np
import pandas as pd

from tasks.backtest import Costs
from tasks.strategy.research import (
    FLAT,
    Candidate,
    candidates,
    entry_sizes,
    fold_sharpes,
    nested_choice,
    positions,
    universe_as_of,
)


def test_nested_choice_reads_only_the_folds_before_each_decision() -> None:
    per_fold = {"a": [1.0, 0.2, 5.0, -3.0], "b": [0.5, 0.9, -1.0, 4.0]}
    chosen = nested_choice(per_fold, first=1)
    assert chosen == ["a", "b", "a"]  # means over folds < k: a 1.0 / 0.6 / 2.07; b 0.5 / 0.7 / 0.13
    changed = {"a": [1.0, 0.2, 5.0, 99.0], "b": [0.5, 0.9, -1.0, -99.0]}  # only the last fold differs
    assert nested_choice(changed, first=1) == chosen
    assert nested_choice({"a": [-1.0, -2.0], "b": [-0.5, 0.1]}, first=1) == [FLAT]  # nothing beat 0


def test_entry_sizes_hold_the_size_chosen_at_entry_until_the_position_closes() -> None:
    side = np.array([0, 1, 1, 1, 0, -1, -1, 1, 0], dtype=float)
    size = np.array([0.9, 0.5, 0.1, 0.2, 0.3, 0.8, 0.4, np.nan, 0.7])
    np.testing.assert_allclose(entry_sizes(side, size), [0, 0.5, 0.5, 0.5, 0, 0.8, 0.8, 0, 0])


def test_fold_sharpes_split_the_net_series_at_the_fold_edges() -> None:
    index = pd.date_range("2025-01-01", periods=6, freq="h", tz="UTC")
    net = pd.Series([0.01, 0.02, 0.01, -0.01, -0.02, -0.01], index=index)
    first, second = fold_sharpes(net, [index[0], index[3], index[-1] + pd.Timedelta(hours=1)], 8766.0)
    assert first > 0 > second


def test_a_smoothed_policy_only_uses_past_probabilities() -> None:
    rng = np.random.default_rng(0)
    n = 300
    rows = pd.DataFrame(
        {
            "symbol": "BTCUSDT",
            "open_time": pd.date_range("2025-01-01", periods=n, freq="h", tz="UTC"),
            "realized_vol_24": rng.uniform(0.005, 0.02, n),
        }
    )
    p = pd.Series(np.clip(0.5 + rng.normal(0, 0.05, n), 0.01, 0.99))
    costs = Costs(fee_bps=5, long_only=False, market="futures")
    for c in candidates([4]):
        before = positions(rows, p, c, costs, {"BTCUSDT": 0.01}, {"BTCUSDT": 0.01})
        later = p.copy()
        later.iloc[200:] = 1 - later.iloc[200:]  # the future changes
        after = positions(rows, later, c, costs, {"BTCUSDT": 0.01}, {"BTCUSDT": 0.01})
        np.testing.assert_array_equal(before.iloc[:200].to_numpy(), after.iloc[:200].to_numpy())
    spot = positions(rows, p, Candidate(4, "eager", enter=0.5, exit=0.1), Costs(), {"BTCUSDT": 0.01}, {})
    assert (spot >= 0).all()  # spot is long only


def test_the_universe_of_a_period_comes_from_candles_before_it() -> None:
    def frame(start: str, periods: int, volume: float) -> pd.DataFrame:
        index = pd.date_range(start, periods=periods, freq="h", tz="UTC", name="open_time")
        return pd.DataFrame({"close": 1.0, "volume": volume}, index=index)

    at = pd.Timestamp("2025-03-01", tz="UTC")
    candles = {
        "OLDUSDT": frame("2024-10-01", 24 * 200, 10.0),  # liquid before `at`, delisted in 2025-03
        "BIGUSDT": frame("2024-10-01", 24 * 140, 5.0),
        "NEWUSDT": frame("2025-03-01", 24 * 30, 1e9),  # listed at `at`: huge later volume
    }
    candles["OLDUSDT"] = candles["OLDUSDT"][candles["OLDUSDT"].index < pd.Timestamp("2025-03-05", tz="UTC")]
    assert universe_as_of(candles, at, top=2) == ["BIGUSDT", "OLDUSDT"]
    assert universe_as_of(candles, pd.Timestamp("2025-03-20", tz="UTC"), top=1) == ["NEWUSDT"]
