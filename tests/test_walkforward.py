"""Purged, embargoed walk-forward, the out-of-fold stacker, the permuted-label canary, the CLI."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core.settings import load_settings
from tasks.ingest import ingest_files
from tasks.ingest.sample import sample_paths
from tasks.models import REGISTRY, ModelConfig
from tasks.models.base import binary_log_loss
from tasks.models.stacker import StackerModel
from tasks.walkforward import WalkForward, stack_out_of_fold, walk_forward
from tests.test_cli import qt
from tests.test_models import TINY

H = pd.Timedelta(hours=1)


def test_folds_purge_the_label_horizon_and_embargo_before_each_test_window() -> None:
    plan = WalkForward(
        pd.Timestamp("2025-01-01", tz="UTC"),
        pd.Timestamp("2025-04-01", tz="UTC"),
        folds=3,
        valid_bars=240,
        horizon=2,
        embargo=12,
    )
    folds = plan.splits()
    assert len(folds) == 3
    assert folds[0].test_start == pd.Timestamp("2025-01-01", tz="UTC")
    assert folds[-1].test_end == pd.Timestamp("2025-04-01", tz="UTC")
    for before, after in itertools.pairwise(folds):
        assert before.test_end == after.test_start  # contiguous, non-overlapping test windows
    for f in folds:
        # The last training row's label (2 bars ahead) ends before validation starts.
        assert (f.train_end - H) + 2 * H <= f.valid_start
        # The last validation row's label ends `embargo` bars before the test window.
        assert (f.valid_end - H) + 2 * H + 12 * H <= f.test_start
        assert f.valid_end - f.valid_start == 240 * H
        assert f.train_start is None  # expanding
    rolling = WalkForward(
        pd.Timestamp("2025-01-01", tz="UTC"),
        pd.Timestamp("2025-04-01", tz="UTC"),
        folds=3,
        window="rolling",
        train_bars=1000,
    ).splits()
    assert all(f.train_end - f.train_start == 1000 * H for f in rolling if f.train_start is not None)


def test_split_rows_never_cross_windows(sample_matrix: pd.DataFrame) -> None:
    plan = WalkForward(pd.Timestamp("2025-03-01", tz="UTC"), pd.Timestamp("2025-05-01", tz="UTC"), folds=2)
    for fold in plan.splits():
        train, valid, test = plan.split(sample_matrix, fold)
        assert train["open_time"].max() < valid["open_time"].min()
        assert valid["open_time"].max() + 24 * H < test["open_time"].min()
        assert test["open_time"].min() >= fold.test_start and test["open_time"].max() < fold.test_end


def synthetic_oof(seed: int = 0, folds: int = 4, rows: int = 600) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    n = folds * rows
    y = rng.integers(0, 2, n)
    return pd.DataFrame(
        {
            "open_time": pd.date_range("2025-01-01", periods=n, freq="h", tz="UTC"),
            "fold": np.repeat(np.arange(folds), rows),
            "target_up": y,
            "p_good": np.clip(0.5 + 0.15 * (2 * y - 1) + rng.normal(0, 0.2, n), 0.01, 0.99),
            "p_noise": rng.uniform(0.2, 0.8, n),
        }
    )


def test_the_stacker_of_fold_k_learns_only_from_earlier_folds() -> None:
    oof = synthetic_oof()
    stacked, by_fold, final = stack_out_of_fold(oof, ModelConfig())
    assert stacked[oof["fold"] == 0].isna().all()  # nothing earlier to learn from
    assert stacked[oof["fold"] > 0].notna().all()
    changed = oof.copy()
    later = changed["fold"] >= 2
    changed.loc[later, "p_good"] = 1 - changed.loc[later, "p_good"]  # sabotage folds 2 and 3
    again, _, _ = stack_out_of_fold(changed, ModelConfig())
    fold1 = oof["fold"] == 1
    np.testing.assert_array_equal(stacked[fold1].to_numpy(), again[fold1].to_numpy())
    assert not np.allclose(stacked[oof["fold"] == 3].to_numpy(), again[oof["fold"] == 3].to_numpy())
    # The informative model gets the weight; the noise gets (almost) none.
    assert final is not None
    assert final.weights["good"] > 0.5 > abs(final.weights["noise"])
    assert set(by_fold) == {1, 2, 3}


def test_permuted_labels_give_auc_one_half_for_every_model_and_the_stacker(
    sample_matrix: pd.DataFrame,
) -> None:
    """The leakage canary: with labels shuffled, no model can beat a coin out of fold."""
    rng = np.random.default_rng(11)
    matrix = sample_matrix.copy()
    order = rng.permutation(len(matrix))
    for col in ("target_up", "target_log_return"):
        matrix[col] = matrix[col].to_numpy()[order]
    plan = WalkForward(
        pd.Timestamp("2025-03-15", tz="UTC"),
        pd.Timestamp("2025-05-15", tz="UTC"),
        folds=3,
        valid_bars=24 * 20,
    )
    names = [n for n in REGISTRY if n != "stacker"]
    result = walk_forward(matrix, names, ModelConfig(seed=5, device="cpu", params=TINY), plan)
    summary = result.summary()
    assert set(summary["models"]) == {*names, "stacker"}
    assert summary["rows"] > 4000
    for name, m in summary["models"].items():
        assert abs(m["auc"] - 0.5) < 0.02, f"{name}: OOF AUC {m['auc']:.4f} on permuted labels"


def test_qt_walkforward_prints_oof_metrics_per_model_and_the_stacker(tmp_path: Path) -> None:
    settings = load_settings(tmp_path / "home")
    for path in sample_paths(None, "1h"):
        ingest_files(path.name.split("-")[0], "1h", "spot", [path], "sample", settings)
    out = tmp_path / "oof.parquet"
    result = qt(
        "walkforward", "--models", "xgb,lgbm", "--folds", "3", "--test-days", "90",
        "--out", str(out), "--json", home=settings.home,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert set(doc["models"]) == {"xgb", "lgbm", "stacker"}
    for m in doc["models"].values():
        for key in ("auc", "log_loss", "log_loss_climatology", "brier", "ece", "per_fold"):
            assert key in m
        assert 0.4 < m["auc"] < 0.7 and np.isfinite(m["log_loss"])
    assert set(doc["stacker_weights"]) == {"xgb", "lgbm", "intercept"}
    assert len(doc["folds"]) == 3
    oof = pd.read_parquet(out)
    assert {"p_xgb", "p_lgbm", "p_stacker", "fold", "climatology"} <= set(oof.columns)
    assert oof["open_time"].min() >= pd.Timestamp("2025-03-16 23:00", tz="UTC")

    # The evaluation of the same rows: classification, backtest, baselines.
    ev = doc["evaluation"]
    assert ev["rows"] == len(oof[oof["p_stacker"].notna()])
    for key in ("sharpe", "sortino", "max_drawdown", "total_return", "win_rate", "turnover", "fees_paid"):
        assert np.isfinite(ev["backtest"][key])
    assert set(ev["baselines"]) == {"buy_and_hold", "momentum_fallback", "always_flat", "climatology"}
    assert set(ev["per_symbol"]) == {"BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT", "XRPUSDT"}
    assert set(ev["single_models"]) == {"xgb", "lgbm"}
    # One MLflow parent run with the plots, a child run per family, all in one experiment.
    from mlflow import MlflowClient

    client = MlflowClient(settings.tracking_uri)
    parent = client.get_run(doc["mlflow_run_id"])
    assert parent.data.metrics["oof_auc"] == pytest.approx(ev["classification"]["auc"])
    assert "backtest_sharpe" in parent.data.metrics and "buy_and_hold_sharpe" in parent.data.metrics
    assert len(parent.data.tags["data_hash"]) == 64 and parent.data.tags["git_commit"]
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {
        "reliability.png",
        "equity_vs_baselines.png",
        "stacker_weights.png",
        "oof_predictions.parquet",
    } <= artifacts
    children = client.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    assert {r.info.run_name for r in children} == {"xgb", "lgbm", "stacker"}
    for child in children:
        wanted = "stacker_weights.json" if child.info.run_name == "stacker" else "feature_importance.png"
        assert wanted in {a.path for a in client.list_artifacts(child.info.run_id)}
    stacker = next(r for r in children if r.info.run_name == "stacker")
    assert {"weight_xgb", "weight_lgbm", "oof_auc"} <= set(stacker.data.metrics)
    assert not (Path.cwd() / "mlruns").exists()  # nothing written outside the home

    bad = qt("walkforward", "--models", "xgb,prophet", "--json", home=settings.home)
    assert bad.returncode == 2
    assert "known models: xgb, lgbm, tft, nhits, patchtst, stacker" in bad.stdout


def test_the_stacker_purges_rows_whose_labels_reach_into_the_next_fold() -> None:
    oof = synthetic_oof()
    purge = 3 * H  # a 4-bar label horizon
    stacked, _, _ = stack_out_of_fold(oof, ModelConfig(), purge=purge)
    first_of_fold1 = oof.loc[oof["fold"] == 1, "open_time"].min()
    overlapping = (oof["fold"] == 0) & (oof["open_time"] >= first_of_fold1 - purge)
    assert overlapping.sum() == 3
    changed = oof.copy()
    changed.loc[overlapping, "target_up"] = 1 - changed.loc[overlapping, "target_up"]
    again, _, _ = stack_out_of_fold(changed, ModelConfig(), purge=purge)
    fold1 = oof["fold"] == 1
    np.testing.assert_array_equal(stacked[fold1].to_numpy(), again[fold1].to_numpy())


def test_the_stacker_never_bets_against_a_model_and_reports_the_ones_it_drops() -> None:
    """Non-negative weights: an anti-informative model gets 0 (not a negative weight), reported."""
    oof = synthetic_oof(seed=3)
    rng = np.random.default_rng(4)
    y = oof["target_up"].to_numpy()
    oof["p_inverted"] = np.clip(0.5 - 0.05 * (2 * y - 1) + rng.normal(0, 0.2, len(oof)), 0.01, 0.99)
    stacker = StackerModel(ModelConfig()).fit(oof[oof["fold"] < 3], oof[oof["fold"] == 3])
    weights = stacker.weights
    assert weights["inverted"] == 0.0 and weights["good"] > 0.5
    assert "inverted" in stacker.zero_weight and "good" not in stacker.zero_weight
    assert stacker.report["anchor"] == "good"


def test_with_no_gain_from_combining_the_stacker_is_the_best_single_model() -> None:
    """Shrinkage λ = ∞ (the best model as it is) wins when the others add nothing."""
    rng = np.random.default_rng(5)
    n = 4000
    y = rng.integers(0, 2, n)
    p = np.clip(0.5 + 0.1 * (2 * y - 1) + rng.normal(0, 0.25, n), 0.02, 0.98)
    oof = pd.DataFrame(
        {
            "open_time": pd.date_range("2025-01-01", periods=n, freq="h", tz="UTC"),
            "target_up": y,
            "p_best": p,
            "p_copy": np.clip(p + rng.normal(0, 1e-4, n), 0.02, 0.98),  # the same model again
        }
    )
    train, valid = oof.iloc[:3000], oof.iloc[3000:]
    stacker = StackerModel(ModelConfig(params={"stacker": {"shrink_grid": (math.inf,)}})).fit(train, valid)
    stacked = stacker.predict_proba(valid).to_numpy()
    np.testing.assert_allclose(stacked, np.clip(valid[f"p_{stacker.report['anchor']}"], 1e-6, 1 - 1e-6))
    free = StackerModel(ModelConfig()).fit(train, valid)
    assert all(w >= 0 for w in free.coef)
    y_tr, y_va = train["target_up"].to_numpy(), valid["target_up"].to_numpy()
    anchor = min(("p_best", "p_copy"), key=lambda c: binary_log_loss(y_tr, train[c].to_numpy()))
    # chosen on valid, with λ = ∞ (the train-best model) among the options: never worse there
    assert free.report["valid_log_loss"] <= binary_log_loss(y_va, valid[anchor].to_numpy()) + 1e-9


def test_the_stacker_takes_its_level_from_the_models_and_weights_only_their_spread() -> None:
    """Scaled-up weights do not multiply the models' base-rate offset (the h1 failure without it)."""
    from tasks.models.stacker import combine

    agree = np.log(np.full((4, 3), 0.55) / 0.45)  # three models, all at P(up) = 0.55
    for weights in (np.array([3.0, 0.5, 0.0]), np.array([0.0, 0.0, 1.0])):
        np.testing.assert_allclose(combine(agree, weights, 0.0), np.log(0.55 / 0.45))
    apart = np.log(np.array([[0.52, 0.56, 0.54]]) / np.array([[0.48, 0.44, 0.46]]))
    assert combine(apart, np.array([0.0, 1.0, 0.0]), 0.0)[0] == pytest.approx(
        apart[0, 1]
    )  # e_best: that model
