"""The ensemble as one registered pyfunc model: register, alias, load in a fresh process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core.settings import Settings, load_settings
from model_registry.ensemble import Ensemble, fit_ensemble
from model_registry.registry import register, set_alias
from tasks.backtest import Costs
from tasks.features.dataset import features_from_store
from tasks.ingest import ingest_files
from tasks.ingest.sample import sample_paths
from tasks.models import ModelConfig
from tasks.store import CandleStore
from tasks.walkforward import WalkForward, walk_forward
from tests.test_cli import qt
from tests.test_models import TINY

FRESH_PROCESS = """
import json, sys
import mlflow
from pathlib import Path
from tasks.features.dataset import features_from_store
from tasks.store import CandleStore
from model_registry.registry import to_pyfunc_input

home = Path(sys.argv[1])
mlflow.set_tracking_uri(f"sqlite:///{home / 'mlflow' / 'mlflow.db'}")
model = mlflow.pyfunc.load_model("models:/quantum-trader-1h@champion")
features = features_from_store(CandleStore(home / "store"), None, "1h", include_unlabeled=True)
latest = features.groupby("symbol").tail(40)
out = model.predict(to_pyfunc_input(latest))
print(out.to_json(orient="records"))
"""


UNTIL = pd.Timestamp("2025-05-15", tz="UTC")


@pytest.fixture(scope="module")
def registered(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, Ensemble]:
    """A home with 3 sample pairs and an ensemble trained on data before UNTIL as champion."""
    settings = load_settings(tmp_path_factory.mktemp("registry") / "home")
    for path in sample_paths(["BTCUSDT", "ETHUSDT", "SOLUSDT"], "1h"):
        ingest_files(path.name.split("-")[0], "1h", "spot", [path], "sample", settings)
    matrix = features_from_store(CandleStore(settings.store_dir), None, "1h")
    matrix = matrix[matrix["open_time"] < UNTIL]
    plan = WalkForward(UNTIL - pd.Timedelta(days=60), UNTIL, folds=2)
    names = ["xgb", "lgbm", "nhits"]
    config = ModelConfig(seed=1, device="cpu", params=TINY)
    result = walk_forward(matrix, names, config, plan)
    assert result.stacker is not None
    ensemble = fit_ensemble(
        matrix, names, config, plan, result.stacker, "1h", Costs(), metrics={"oof_auc": 0.51}
    )
    example = matrix[matrix["symbol"] == "BTCUSDT"].tail(ensemble.history_rows + 1)
    version = register(settings, ensemble, example)
    set_alias(settings, "1h", "champion", version)
    return settings, ensemble


def test_a_fresh_process_loads_the_champion_and_predicts_from_stored_candles(
    registered: tuple[Settings, Ensemble],
) -> None:
    settings, ensemble = registered

    done = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS, str(settings.home)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(done.stdout.strip().splitlines()[-1])
    assert [r["symbol"] for r in rows] == ["BTCUSDT", "ETHUSDT", "SOLUSDT"]
    for r in rows:
        assert 0 < r["p_up"] < 1 and r["action"] in {"BUY", "SELL", "HOLD"}
        assert r["open_time"] == "2025-06-14T23:00:00Z"  # the newest candle, whose target is unknown
        assert {"p_xgb", "p_lgbm", "p_nhits"} <= set(r)
    # The same numbers as the in-process ensemble on the same rows.
    latest = features_from_store(CandleStore(settings.store_dir), None, "1h", include_unlabeled=True)
    here = ensemble.predict(latest.groupby("symbol").tail(40))
    np.testing.assert_allclose([r["p_up"] for r in rows], here["p_up"].to_numpy(), rtol=1e-9)
    assert not (Path.cwd() / "mlruns").exists()  # every artifact stays under the home


def test_qt_evaluate_reports_every_interface_key_out_of_sample(registered: tuple[Settings, Ensemble]) -> None:
    settings, _ = registered
    result = qt("evaluate", "--model", "champion", "--json", home=settings.home)
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["model_version"] == "1" and doc["in_sample"] is False
    assert doc["start"] >= "2025-05-15" and doc["rows"] > 2000
    for key in ("auc", "log_loss", "log_loss_climatology", "brier", "brier_climatology", "accuracy", "ece"):
        assert np.isfinite(doc["classification"][key])
    assert set(doc["per_model"]) == {"xgb", "lgbm", "nhits"}
    assert all(np.isfinite(v["auc"]) and np.isfinite(v["log_loss"]) for v in doc["per_model"].values())
    assert set(doc["stacker_weights"]) == {"xgb", "lgbm", "nhits", "intercept"}
    bt_keys = ("sharpe", "sortino", "max_drawdown", "total_return", "win_rate", "profit_factor", "turnover")
    for key in (*bt_keys, "fees_paid"):
        assert doc["backtest"][key] is not None and np.isfinite(doc["backtest"][key])
    for name in ("buy_and_hold", "momentum_fallback"):
        assert all(np.isfinite(doc["baselines"][name][k]) for k in ("sharpe", "total_return", "turnover"))
    assert np.isfinite(doc["baselines"]["climatology"]["log_loss"])
    # the market's costs and the policy it traded are in the document, and its trade count
    # is what its positions did: trades exactly when it held something
    assert doc["market"] == "spot" and doc["costs"]["fee_bps"] == 10.0 and doc["costs"]["long_only"] is True
    assert doc["policy"]["allow_short"] is False and {"enter", "exit"} <= set(doc["policy"])
    assert (doc["backtest"]["trades"] > 0) == (doc["backtest"]["turnover"] > 0)

    missing = qt("evaluate", "--model", "challenger", "--json", home=settings.home)
    assert missing.returncode == 2 and "run qt retrain" in missing.stdout

    # The rows the gate judged the version on (its shadow window) are left out by default too.
    from model_registry.registry import tag_version

    gated = pd.Timestamp(doc["start"]) + pd.Timedelta(days=7)
    tag_version(settings, "1h", "1", {"gate.rows_until": str(gated)})
    after = json.loads(qt("evaluate", "--model", "champion", "--json", home=settings.home).stdout)
    assert pd.Timestamp(after["start"]) == gated + pd.Timedelta(hours=1) and after["gate_rows"] is False
    assert after["rows"] < doc["rows"] and after["gated_until"] == str(gated)


def test_evaluate_counts_the_trades_of_a_model_that_trades(registered: tuple[Settings, Ensemble]) -> None:
    """The same registered model with a policy that enters on any edge: its evaluation shows its trades."""
    from dataclasses import replace

    from model_registry.evaluate import evaluate_ensemble
    from tasks.backtest import Costs
    from tasks.strategy.policy import Policy

    settings, ensemble = registered
    matrix = features_from_store(CandleStore(settings.store_dir), None, "1h")
    eager = replace(ensemble, policy=Policy(enter=0.0, exit=0.0))
    doc = evaluate_ensemble(eager, matrix, pd.Timedelta(hours=1), Costs.from_settings(settings, "spot"))
    assert (
        doc["backtest"]["trades"] > 0 and doc["backtest"]["turnover"] > 0 and doc["backtest"]["fees_paid"] > 0
    )
    assert doc["policy"]["enter"] == 0.0 and doc["costs"]["fee_bps"] == 10.0


def test_a_version_is_fetched_once_into_the_homes_model_copy_and_loaded_from_there(
    registered: tuple[Settings, Ensemble], caplog: pytest.LogCaptureFixture
) -> None:
    """The hot reload reads the local per-version copy; a damaged copy is fetched again."""
    import shutil

    import mlflow

    from model_registry.cache import version_dir
    from model_registry.registry import load_ensemble, model_name

    settings, ensemble = registered
    version = register(
        settings, ensemble, features_from_store(CandleStore(settings.store_dir), ["BTCUSDT"], "1h").tail(40)
    )
    copy = version_dir(settings, model_name("1h", "spot"), version)
    shutil.rmtree(copy, ignore_errors=True)
    loaded, _ = load_ensemble(settings, "1h", version)
    assert (copy / "MLmodel").exists() and sorted(loaded.models) == sorted(ensemble.models)
    (copy / "python_model.pkl").write_bytes(b"damaged")  # a broken copy: thrown away, fetched again
    with caplog.at_level("WARNING", logger="model_registry.cache"):
        again, _ = load_ensemble(settings, "1h", version)
    assert "does not load: fetching it again" in caplog.text
    assert sorted(again.models) == sorted(ensemble.models)
    (copy / "MLmodel").unlink()  # a copy missing its descriptor is not a copy: fetched again
    assert sorted(load_ensemble(settings, "1h", version)[0].models) == sorted(ensemble.models)
    store = mlflow.MlflowClient().get_model_version_download_uri(model_name("1h", "spot"), version)
    shutil.rmtree(store.removeprefix("file://"))  # the registry's files gone: the copy still serves
    assert sorted(load_ensemble(settings, "1h", version)[0].models) == sorted(ensemble.models)
