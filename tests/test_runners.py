"""The training flow on a Dask cluster gives what it gives on Prefect's process pool."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import pytest

from core.settings import Settings, load_settings
from tests.test_models import TINY

SYMBOLS = ["BTCUSDT", "ETHUSDT"]


def _oof(settings: Settings, run_id: str) -> pd.DataFrame:
    from tasks.tracking import use_store

    use_store(settings)
    with tempfile.TemporaryDirectory() as tmp:
        path = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path="oof_predictions.parquet", dst_path=tmp
        )
        return pd.read_parquet(path)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, prefect_harness: None) -> dict[str, Any]:
    """One small retrain per runner, each in a fresh home, same seeds and data."""
    from flows.dask_runner import dask_runner
    from flows.runners import LocalRunner
    from flows.training import training_flow

    out: dict[str, Any] = {}
    for kind, runner in (("local", LocalRunner(2)), ("dask", dask_runner(workers=2))):
        settings = load_settings(tmp_path_factory.mktemp(kind) / "home")
        doc = training_flow.with_options(task_runner=runner)(
            symbols=SYMBOLS, models=["xgb", "lgbm"], model_params=TINY, test_days=60, home=str(settings.home)
        )
        out[kind] = (settings, doc)
    return out


def test_a_local_cluster_of_two_workers_gives_the_same_oof_and_ensemble(runs: dict[str, Any]) -> None:
    """Same OOF predictions, same stacker, same registered ensemble; the run says where it ran."""
    from model_registry.registry import load_ensemble

    (local, local_doc), (dask, dask_doc) = runs["local"], runs["dask"]
    pd.testing.assert_frame_equal(_oof(local, local_doc["run_id"]), _oof(dask, dask_doc["run_id"]))
    assert local_doc["metrics"]["stacker_weights"] == dask_doc["metrics"]["stacker_weights"]
    assert local_doc["metrics"]["oof_log_loss"] == dask_doc["metrics"]["oof_log_loss"]
    assert local_doc["gate"]["checks"] == dask_doc["gate"]["checks"]
    ensembles = [
        load_ensemble(s, "1h", doc["challenger_version"])[0] for s, doc in (runs["local"], runs["dask"])
    ]
    from tasks.features.dataset import features_from_store
    from tasks.store import CandleStore

    matrix = features_from_store(CandleStore(local.store_dir), SYMBOLS, "1h", "spot").tail(400)
    pd.testing.assert_frame_equal(ensembles[0].predict_rows(matrix), ensembles[1].predict_rows(matrix))
    tags = {
        kind: mlflow.MlflowClient(s.tracking_uri).get_run(doc["run_id"]).data.tags
        for kind, (s, doc) in runs.items()
    }
    assert tags["local"]["task_runner"] == "local (2 processes)"
    assert tags["dask"]["task_runner"] == "dask LocalCluster (2 workers)"


def test_threads_per_fit_come_from_the_runner_size() -> None:
    """The cores shared among the tasks a runner runs at once, never fewer than one."""
    import os

    from flows.runners import LocalRunner, threads_per_fit

    cores = os.cpu_count() or 1
    assert threads_per_fit(LocalRunner(1)) == cores
    assert threads_per_fit(LocalRunner(cores * 2)) == 1


def test_the_settings_choose_the_runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``QT_TASK_RUNNER=dask`` with ``QT_DASK_ADDRESS`` names the scheduler; the default is local."""
    from flows.runners import LocalRunner, cpu_runner, describe

    assert isinstance(cpu_runner(load_settings(tmp_path)), LocalRunner)
    monkeypatch.setenv("QT_TASK_RUNNER", "dask")
    monkeypatch.setenv("QT_DASK_ADDRESS", "tcp://10.0.0.5:8786")
    runner = cpu_runner(load_settings(tmp_path))
    assert describe(runner) == "dask tcp://10.0.0.5:8786"
    monkeypatch.delenv("QT_DASK_ADDRESS")
    monkeypatch.setenv("QT_WORKERS", "3")
    assert describe(cpu_runner(load_settings(tmp_path))) == "dask LocalCluster (3 workers)"


def test_the_ingest_flow_runs_its_symbols_on_dask(
    runs: dict[str, Any], tmp_path: Path, prefect_harness: None
) -> None:
    """Per-symbol ingest tasks on a LocalCluster store what the thread pool stored."""
    from flows.dask_runner import dask_runner
    from flows.ingest import ingest_flow
    from tasks.store import CandleStore

    settings = load_settings(tmp_path / "home")
    doc = ingest_flow.with_options(task_runner=dask_runner(workers=2))(
        source="sample", symbols=SYMBOLS, home=str(settings.home)
    )
    assert sorted(doc["symbols"]) == SYMBOLS and not doc["failed"]
    local = CandleStore(runs["local"][0].store_dir)  # ingested by the retrain, on the thread pool
    for symbol in SYMBOLS:
        pd.testing.assert_frame_equal(
            CandleStore(settings.store_dir).read(symbol, "1h"), local.read(symbol, "1h")
        )
