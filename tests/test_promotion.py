"""The promotion gate on constructed predictions of real candles: who passes, who does not."""

from __future__ import annotations

from typing import Any, cast

import numpy as np
import pandas as pd
import pytest

from model_registry.promotion import (
    Decision,
    GateConfig,
    _row_log_loss,
    clustered_mean_test,
    decide,
    shared_rows,
)
from tasks import metrics
from tasks.backtest import Costs

STEP = pd.Timedelta(hours=1)
CONCLUSIVE_OK = {"rows": 500, "conclusive": True, "significantly_worse": False, "reference": "champion",
                 "log_loss_diff": -0.001, "worse_pvalue": 0.8}  # fmt: skip


def _oof(matrix: pd.DataFrame, noise: float | None, seed: int) -> pd.DataFrame:
    """An OOF table over the last 60 days with calibrated P(up) of a noisy view of the truth.

    The model sees ``s = ±1 + N(0, noise²)`` and reports ``P(up | s)`` (less noise, more
    skill); ``noise=None`` gives P(up) unrelated to the outcome.
    """
    rows = matrix[matrix["open_time"] >= matrix["open_time"].max() - pd.Timedelta(days=60)]
    rng = np.random.default_rng(seed)
    y = rows["target_up"].to_numpy()
    if noise is None:
        p = 0.5 + rng.normal(0, 0.05, len(rows))
    else:
        signal = (2 * y - 1) + rng.normal(0, noise, len(rows))
        p = 1 / (1 + np.exp(-2 * signal / noise**2))
    return rows[["symbol", "open_time", "target_up", "target_log_return"]].assign(
        fold=1, climatology=0.5, p_stacker=np.clip(p, 0.01, 0.99)
    )


def _decide(matrix: pd.DataFrame, mine: float | None, theirs: float | None, **kw: object) -> Decision:
    seeds = kw.pop("seeds", (1, 2))
    challenger = _oof(matrix, mine, seeds[0])  # type: ignore[index]
    if "transform" in kw:
        challenger = challenger.assign(p_stacker=kw["transform"](challenger["p_stacker"]))  # type: ignore[operator]
    champion = _oof(matrix, theirs, seeds[1]) if "no_champion" not in kw else None  # type: ignore[index]
    table = shared_rows(challenger, champion)
    reference = "champion" if champion is not None else "climatology"
    report = cast(dict[str, Any], kw.get("shadow", {**CONCLUSIVE_OK, "reference": reference}))
    version = "1" if champion is not None else None
    return decide(table, report, table.iloc[:0], matrix, STEP, Costs(), GateConfig(), version)


def _failed(decision: Decision) -> set[str]:
    return {c.name for c in decision.checks if not c.passed}


FLOORS = {"log_loss_floor", "auc_floor", "sharpe_floor", "activity", "ece", "calibration_slope"}


def test_a_better_challenger_is_promoted_and_a_worse_or_identical_one_is_not(
    sample_matrix: pd.DataFrame,
) -> None:
    better = _decide(sample_matrix, 4.0, 8.0)
    assert better.promoted, better.reason
    assert better.reason.startswith("promoted over champion v1")
    assert {c.name for c in better.checks} == FLOORS | {
        "log_loss_vs_champion",
        "sharpe_vs_champion",
        "shadow",
    }
    assert better.comparison["backtest"]["trades"] >= GateConfig().min_trades

    worse = _decide(sample_matrix, 8.0, 4.0)
    assert not worse.promoted
    assert "log_loss_vs_champion" in _failed(worse)
    assert "log loss" in worse.reason

    identical = _decide(sample_matrix, 4.0, 4.0, seeds=(3, 3))  # no gain: nothing to test
    assert not identical.promoted
    assert "log_loss_vs_champion" in _failed(identical)


def test_without_a_champion_it_must_clear_the_absolute_floors(sample_matrix: pd.DataFrame) -> None:
    good = _decide(sample_matrix, 4.0, None, no_champion=True)
    assert good.promoted, good.reason
    assert good.reference.startswith("climatology and momentum")
    assert {c.name for c in good.checks} == FLOORS | {"shadow"}

    # flat: P(up) at the base rate never trades, so "Sharpe 0.00 vs 0.00" cannot pass
    flat = _decide(sample_matrix, None, None, no_champion=True, transform=lambda p: p * 0 + 0.5)
    assert not flat.promoted
    assert {"log_loss_floor", "auc_floor", "sharpe_floor", "activity"} <= _failed(flat)
    assert flat.comparison["backtest"]["trades"] == 0

    # losing: confident coin flips trade a lot and pay fees on every round trip
    coin = _decide(sample_matrix, None, None, no_champion=True, transform=lambda p: 0.5 + 3 * (p - 0.5))
    assert not coin.promoted
    assert coin.comparison["backtest"]["trades"] >= GateConfig().min_trades
    assert coin.comparison["backtest"]["sharpe"] < 0
    assert {"log_loss_floor", "sharpe_floor"} <= _failed(coin)


def test_an_inverted_over_confident_challenger_fails_the_calibration_check(
    sample_matrix: pd.DataFrame,
) -> None:
    def inverted(p: pd.Series) -> pd.Series:
        return 1 / (1 + np.exp(3 * np.log(p / (1 - p))))  # logit × -3

    weak = 24.0  # little skill: P(up) in a narrow band, where ECE alone cannot tell
    decision = _decide(sample_matrix, weak, None, no_champion=True, transform=inverted)
    assert not decision.promoted
    assert {"calibration_slope", "auc_floor"} <= _failed(decision)
    slope = next(c for c in decision.checks if c.name == "calibration_slope")
    assert slope.value is not None and slope.value < 0 and "calibration slope" in slope.detail
    honest = _decide(sample_matrix, weak, None, no_champion=True)
    assert "calibration_slope" not in _failed(honest)


def test_a_challenger_of_equal_skill_is_promoted_in_at_most_five_percent_of_simulations(
    sample_matrix: pd.DataFrame,
) -> None:
    """200 pairs of equal-skill models on real outcomes: the paired clustered test's false-promotion rate."""
    rows = sample_matrix[
        sample_matrix["open_time"] >= sample_matrix["open_time"].max() - pd.Timedelta(days=60)
    ]
    rows = rows.dropna(subset=["target_up"])
    y, bars = rows["target_up"].to_numpy(dtype=np.float64), rows["open_time"].to_numpy()
    rng = np.random.default_rng(7)
    gate = GateConfig()

    def model(noise: float) -> np.ndarray:
        signal = (2 * y - 1) + rng.normal(0, noise, len(y))
        return np.clip(1 / (1 + np.exp(-2 * signal / noise**2)), 0.01, 0.99)

    def passes(mine: float, theirs: float) -> bool:
        diff = _row_log_loss(y, model(mine)) - _row_log_loss(y, model(theirs))
        return clustered_mean_test(diff, bars, "less", -gate.margin)[1] < gate.alpha

    equal = np.mean([passes(12.0, 12.0) for _ in range(200)])
    assert equal <= 0.05, equal
    print(f"equal skill promoted in {equal:.1%} of 200 simulations")
    better = np.mean([passes(6.0, 12.0) for _ in range(50)])  # the test still sees a real gain
    assert better >= 0.8, better


def test_the_calibration_line_reads_slope_and_intercept() -> None:
    rng = np.random.default_rng(0)
    logit = rng.normal(0, 0.3, 20_000)
    y = (rng.random(20_000) < 1 / (1 + np.exp(-logit))).astype(float)
    calibrated = metrics.calibration_line(y, 1 / (1 + np.exp(-logit)))
    assert calibrated["slope"] == pytest.approx(1.0, abs=3 * calibrated["slope_se"])
    assert calibrated["intercept"] == pytest.approx(0.0, abs=3 * calibrated["intercept_se"])
    over = metrics.calibration_line(y, 1 / (1 + np.exp(-3 * logit)), clusters=np.arange(20_000) // 5)
    assert over["slope"] == pytest.approx(1 / 3, abs=3 * over["slope_se"])
    assert np.isnan(metrics.calibration_line(y, np.full(20_000, 0.5))["slope"])
    # a handful of rows the logit separates has no fit: NaN, not an exception
    separated = metrics.calibration_line(np.array([0.0, 0.0, 1.0, 1.0]), np.array([0.4, 0.45, 0.55, 0.6]))
    assert all(np.isnan(v) for v in separated.values())


def test_a_significantly_worse_shadow_blocks_promotion(sample_matrix: pd.DataFrame) -> None:
    bad_shadow = {**CONCLUSIVE_OK, "significantly_worse": True, "worse_pvalue": 0.001, "log_loss_diff": 0.01}
    decision = _decide(sample_matrix, 4.0, 8.0, shadow=bad_shadow)
    assert not decision.promoted
    assert _failed(decision) == {"shadow"}


def test_the_ece_bound_widens_with_sampling_noise_only() -> None:
    gate = GateConfig(max_ece=0.02)
    assert gate.ece_bound(1_000_000) == 0.02
    assert gate.ece_bound(7200) == pytest.approx(2 * np.sqrt(2 / np.pi) * np.sqrt(0.25 / 720))
    assert gate.ece_bound(100) > gate.ece_bound(7200) > gate.ece_bound(65700)


def test_a_champion_without_an_oof_table_is_compared_on_the_shadow_rows(sample_matrix: pd.DataFrame) -> None:
    challenger, champion = _oof(sample_matrix, 4.0, 1), _oof(sample_matrix, 8.0, 2)
    no_champion_table = shared_rows(challenger, None)  # e.g. a champion registered outside the flow
    shadow_rows = shared_rows(challenger, champion)
    decision = decide(
        no_champion_table, CONCLUSIVE_OK, shadow_rows, sample_matrix, STEP, Costs(), GateConfig(), "1"
    )
    assert decision.promoted, decision.reason
    assert "shadow rows" in decision.reason and decision.rows == len(shadow_rows)
    nothing = shadow_rows.iloc[:0]
    empty = decide(no_champion_table, CONCLUSIVE_OK, nothing, sample_matrix, STEP, Costs(), GateConfig(), "1")
    assert not empty.promoted and "no rows" in empty.reason
