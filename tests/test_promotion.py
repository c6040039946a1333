"""The promotion gate on constructed predictions of real candles: who passes, who does not."""

from __future__ import annotations

from typing import Any, cast

import numpy as np
import pandas as pd
import pytest

from model_registry.promotion import Decision, GateConfig, decide, shared_rows
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
    champion = _oof(matrix, theirs, seeds[1]) if "no_champion" not in kw else None  # type: ignore[index]
    table = shared_rows(challenger, champion)
    reference = "champion" if champion is not None else "climatology"
    report = cast(dict[str, Any], kw.get("shadow", {**CONCLUSIVE_OK, "reference": reference}))
    version = "1" if champion is not None else None
    return decide(table, report, table.iloc[:0], matrix, STEP, Costs(), GateConfig(), version)


def test_a_better_challenger_is_promoted_and_a_worse_or_identical_one_is_not(
    sample_matrix: pd.DataFrame,
) -> None:
    better = _decide(sample_matrix, 4.0, 8.0)
    assert better.promoted, better.reason
    assert better.reason.startswith("promoted over champion v1")
    assert {c.name for c in better.checks} == {"log_loss", "sharpe", "ece", "shadow"}

    worse = _decide(sample_matrix, 8.0, 4.0)
    assert not worse.promoted
    assert not next(c for c in worse.checks if c.name == "log_loss").passed
    assert "log loss" in worse.reason

    identical = _decide(sample_matrix, 6.0, 6.0, seeds=(3, 3))  # no gain: inside the margin
    assert not identical.promoted
    assert [c.name for c in identical.checks if not c.passed] == ["log_loss"]


def test_without_a_champion_it_must_beat_climatology_and_momentum(sample_matrix: pd.DataFrame) -> None:
    good = _decide(sample_matrix, 4.0, None, no_champion=True)
    assert good.promoted, good.reason
    assert good.reference.startswith("climatology and momentum")
    coin = _decide(sample_matrix, None, None, no_champion=True)  # no skill: log loss above climatology's
    assert not coin.promoted
    assert not next(c for c in coin.checks if c.name == "log_loss_vs_climatology").passed


def test_a_significantly_worse_shadow_blocks_promotion(sample_matrix: pd.DataFrame) -> None:
    bad_shadow = {**CONCLUSIVE_OK, "significantly_worse": True, "worse_pvalue": 0.001, "log_loss_diff": 0.01}
    decision = _decide(sample_matrix, 4.0, 8.0, shadow=bad_shadow)
    assert not decision.promoted
    assert [c.name for c in decision.checks if not c.passed] == ["shadow"]


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
