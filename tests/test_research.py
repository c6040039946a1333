"""Strategy research maths: nested selection reads only earlier folds; universes only earlier candles;
maker entries fill only when the bar they rest in trades through the limit."""

from __future__ import annotations

import numpy as np
import pandas as pd

from tasks.backtest import Costs, backtest
from tasks.strategy.research import (
    FLAT,
    Candidate,
    backtest_entries,
    candidates,
    entry_sizes,
    fold_sharpes,
    maker_figures,
    maker_path,
    nested_choice,
    openings,
    positions,
    resting_bars,
    universe_as_of,
)

FUTURES = Costs(fee_bps=5, slippage_bps=1, maker_fee_bps=2, long_only=False, market="futures")


def _candles(close: list[float], low: list[float], high: list[float]) -> pd.DataFrame:
    index = pd.date_range("2025-01-01", periods=len(close), freq="h", tz="UTC", name="open_time")
    return pd.DataFrame({"open": close, "high": high, "low": low, "close": close, "volume": 1.0}, index=index)


def _rows(candles: pd.DataFrame, symbol: str = "BTCUSDT") -> pd.DataFrame:
    """Feature-like rows of every candle but the last (its target needs the next close)."""
    close = candles["close"].to_numpy()
    rows = pd.DataFrame(
        {
            "symbol": symbol,
            "open_time": candles.index[:-1],
            "close": close[:-1],
            "target_log_return": np.log(close[1:] / close[:-1]),
            "realized_vol_24": 0.01,
        }
    )
    return rows.join(resting_bars(rows, {symbol: candles}, pd.Timedelta(hours=1)))


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
        if c.maker:
            continue  # maker entries read candles: their causality test is below
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


def test_the_grid_pairs_each_taker_policy_with_a_maker_twin() -> None:
    grid = candidates([1, 24])
    assert len(grid) == 24
    for taker, maker in zip(grid[::2], grid[1::2], strict=True):
        assert not taker.maker and maker.maker and maker.key == f"{taker.key} maker"
        assert (maker.enter, maker.exit, maker.smooth, maker.vol_target) == (
            taker.enter, taker.exit, taker.smooth, taker.vol_target,
        )  # fmt: skip


def test_a_maker_entry_fills_only_when_the_next_bar_trades_through_the_limit_by_the_margin() -> None:
    wanted = np.array([1, 1, 1, 1, 0, -1, -1, -1, 1], dtype=float)
    limit = np.full(9, 100.0)
    low = np.array([99.995, 99.99, 90.0, 90.0, 90.0, 90.0, 90.0, 90.0, 100.0])
    high = np.array([110.0, 110.0, 110.0, 110.0, 110.0, 100.0, 100.005, 100.01, 110.0])
    # row 0: 0.5 bp through, not enough; row 1: exactly 1 bp, filled; held while wanted; row 4 closes;
    # the short rests at 100: row 5 only touches, row 6 is 0.5 bp through, row 7 fills; row 8 wants
    # a long and its bar never goes below the limit: the short is closed, the long not filled.
    np.testing.assert_array_equal(maker_path(wanted, limit, low, high), [0, 1, 1, 1, 0, 0, 0, -1, 0])
    np.testing.assert_array_equal(maker_path(wanted, limit, low, high, through_bps=0.4)[:2], [1, 1])
    zero = maker_path(np.ones(2), np.full(2, 100.0), np.array([100.0, 99.999]), np.full(2, 101.0), 0.0)
    np.testing.assert_array_equal(zero, [0, 1])  # at the limit is not through it
    nan = maker_path(np.ones(2), np.full(2, 100.0), np.array([np.nan, 99.0]), np.full(2, np.nan))
    np.testing.assert_array_equal(nan, [0, 1])  # a missing bar does not fill


def test_a_maker_fill_pays_the_maker_fee_at_the_limit_and_its_exit_the_taker_fee() -> None:
    close = [100.0, 100.0, 101.0, 102.0, 101.0, 100.0, 100.0]
    low = [99.0, 99.0, 99.995, 100.9, 101.0, 99.0, 99.0]  # bar 2: 0.5 bp under 100; bar 3: ≈ 10 bp under 101
    high = [101.0, 101.0, 101.5, 103.0, 102.0, 101.0, 101.0]
    rows = _rows(_candles(close, low, high))
    np.testing.assert_allclose(rows["next_low"], low[1:])  # row t reads bar t+1
    p = pd.Series([0.5, 0.9, 0.9, 0.9, 0.5, 0.5])  # wants a long at rows 1-3
    policy = Candidate(1, "cost-aware", enter=1.0, exit=0.25)
    maker = Candidate(1, "cost-aware maker", enter=1.0, exit=0.25, maker=True)
    scale = {"BTCUSDT": 0.01}
    taker_pos = positions(rows, p, policy, FUTURES, scale, {})
    maker_pos = positions(rows, p, maker, FUTURES, scale, {})
    np.testing.assert_array_equal(taker_pos, [0, 1, 1, 1, 0, 0])
    np.testing.assert_array_equal(maker_pos, [0, 0, 1, 1, 0, 0])  # row 1's order missed; row 2's filled
    fills = openings(rows, maker_pos)
    np.testing.assert_array_equal(fills, [False, False, True, False, False, False])

    net = backtest_entries(rows, maker_pos, FUTURES, pd.Timedelta(hours=1), fills).net.to_numpy()
    r = np.expm1(rows["target_log_return"].to_numpy())
    np.testing.assert_allclose(
        net, [0.0, 0.0, r[2] - 2e-4, r[3], -6e-4, 0.0]
    )  # flat while unfilled; filled at 101 → 102 (the limit), 2 bps in; out at market, 5 + 1 bps
    as_taker = backtest(rows, maker_pos, FUTURES, pd.Timedelta(hours=1)).net.to_numpy()
    np.testing.assert_allclose(net - as_taker, [0, 0, 4e-4, 0, 0, 0])
    figures = maker_figures(rows, taker_pos, maker_pos, pd.Timedelta(hours=1))
    assert (figures["orders"], figures["fills"], figures["fill_rate"], figures["entries_filled"]) == (
        2.0, 1.0, 0.5, 1.0,
    )  # fmt: skip
    np.testing.assert_allclose(figures["missed_per_year"], r[1] / 6 * 8766)  # the move row 1 missed


def test_a_fill_at_row_t_reads_no_bar_after_t_plus_one() -> None:
    rng = np.random.default_rng(3)
    n = 240
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.004, n)))
    low, high = close * (1 - rng.uniform(0, 0.004, n)), close * (1 + rng.uniform(0, 0.004, n))
    p = pd.Series(np.clip(0.5 + rng.normal(0, 0.08, n - 1), 0.01, 0.99))
    grid = [c for c in candidates([1, 4]) if c.maker]
    scale, vol = {"BTCUSDT": 0.004}, {"BTCUSDT": 0.01}

    def path(candles: pd.DataFrame, c: Candidate) -> np.ndarray:
        return positions(_rows(candles), p, c, FUTURES, scale, vol).to_numpy()

    base = _candles(list(close), list(low), list(high))
    paths = {c.key: path(base, c) for c in grid}
    assert any((paths[c.key] != 0).any() for c in grid)
    for t in (40, 120, 200):
        later = base.copy()
        later.iloc[t + 2 :, :4] *= 1.05  # every bar after t+1 changes (the closes too)
        later.iloc[t + 2 :, 1] *= 1.02
        for c in grid:
            np.testing.assert_array_equal(path(later, c)[: t + 1], paths[c.key][: t + 1])


def test_backtest_entries_without_maker_fills_is_the_backtest() -> None:
    rng = np.random.default_rng(1)
    times = pd.date_range("2025-01-01", periods=200, freq="h", tz="UTC")
    frame = pd.concat(
        [
            pd.DataFrame({"symbol": s, "open_time": times, "target_log_return": rng.normal(0, 0.01, 200)})
            for s in ("AUSDT", "BUSDT")
        ],
        ignore_index=True,
    ).drop(index=[50, 51, 260])  # gaps
    pos = pd.Series(rng.choice([-1.0, 0.0, 0.5, 1.0], len(frame)), index=frame.index)
    costs = Costs(fee_bps=5, funding_rate=1e-4, maker_fee_bps=2, long_only=False, market="futures")
    step = pd.Timedelta(hours=1)
    ours, theirs = backtest_entries(frame, pos, costs, step), backtest(frame, pos, costs, step)
    pd.testing.assert_series_equal(ours.net, theirs.net)
    assert ours.metrics == theirs.metrics
    maker = backtest_entries(frame, pos, costs, step, openings(frame, pos))
    assert maker.metrics["fees_paid"] < theirs.metrics["fees_paid"]
    assert maker.metrics["trades"] == theirs.metrics["trades"]
    assert maker.metrics["win_rate"] >= theirs.metrics["win_rate"]
