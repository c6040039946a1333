"""Classification metrics: ECE on equal-count bins, climatology beside every figure."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.metrics import classification, ece, probability_bins


def test_bins_hold_equal_counts_even_for_a_narrow_band_of_probabilities() -> None:
    p = np.linspace(0.48, 0.52, 1000)
    counts = np.bincount(probability_bins(p, 10))
    assert list(counts) == [100] * 10


def test_ece_is_zero_when_calibrated_and_the_gap_when_biased() -> None:
    rng = np.random.default_rng(0)
    p = rng.uniform(0.45, 0.55, 200_000)
    y = (rng.uniform(0, 1, p.size) < p).astype(float)
    assert ece(y, p) < 0.005
    assert ece(y, np.clip(p + 0.03, 0, 1)) == pytest.approx(0.03, abs=0.005)


def test_climatology_is_reported_beside_the_model() -> None:
    y = np.array([1, 0, 1, 1, 0, 1, 0, 1.0])
    p = np.array([0.7, 0.3, 0.6, 0.8, 0.4, 0.6, 0.2, 0.9])
    m = classification(y, p, base_rate=0.5)
    assert m["auc"] == 1.0 and m["accuracy"] == 1.0
    assert m["log_loss_climatology"] == pytest.approx(np.log(2))
    assert m["brier_climatology"] == pytest.approx(0.25)
    assert m["log_loss"] < m["log_loss_climatology"]
