"""The training flow end to end: retrain → gate → registry history, a degraded model refused."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import mlflow
import pytest

from core.settings import Settings, load_settings
from tests.test_cli import qt
from tests.test_models import TINY


@pytest.fixture(scope="module")
def first_retrain(
    tmp_path_factory: pytest.TempPathFactory, prefect_harness: None
) -> tuple[Settings, dict[str, Any]]:
    """A fresh home: the flow ingests the bundled sample itself, trains, registers, promotes."""
    from flows.training import training_flow

    settings = load_settings(tmp_path_factory.mktemp("training") / "home")
    started = time.time()
    doc = training_flow(
        symbols=["BTCUSDT", "ETHUSDT", "SOLUSDT"],
        models=["xgb", "lgbm", "nhits"],
        model_params=TINY,
        home=str(settings.home),
    )
    return settings, {**doc, "_wall": (started, time.time())}


FLOORS = {"log_loss_floor", "auc_floor", "sharpe_floor", "activity", "ece", "calibration_slope"}


def test_first_retrain_is_judged_on_the_absolute_floors_and_fully_tracked(
    first_retrain: tuple[Settings, dict[str, Any]],
) -> None:
    """No champion yet: the gate's floors decide, and the decision is acted on and recorded.

    On the bundled sample the fast ensemble loses money after costs (net Sharpe below 0),
    so the floors refuse it, where the old "Sharpe above momentum" check promoted it.
    """
    settings, doc = first_retrain
    assert doc["challenger_version"] == "1" and doc["previous_champion"] is None
    checks = {c["name"]: c for c in doc["gate"]["checks"]}
    assert set(checks) == FLOORS | {"shadow"}
    assert doc["promoted"] is all(c["passed"] for c in checks.values())
    sharpe = checks["sharpe_floor"]
    assert sharpe["threshold"] >= 0 and sharpe["passed"] is (sharpe["value"] > sharpe["threshold"])
    if doc["promoted"]:
        assert doc["champion"] == "1" and doc["reason"].startswith("promoted over climatology and momentum")
    else:
        assert doc["champion"] is None and doc["reason"].startswith("not promoted (climatology and momentum")
        assert all(checks[name]["detail"] in doc["reason"] for name in checks if not checks[name]["passed"])
    # the shadow rows are the newest week, after everything the challenger was trained on
    assert doc["shadow"]["rows"] == 3 * 168 and doc["shadow"]["start"] > doc["data"]["trained_until"]
    assert set(doc["metrics"]["per_model"]) == {"xgb", "lgbm", "nhits"}

    mlflow.set_tracking_uri(settings.tracking_uri)
    client = mlflow.MlflowClient()
    parent = client.get_run(doc["run_id"])
    decision = "promoted" if doc["promoted"] else "rejected"
    assert parent.data.tags["promotion.decision"] == decision
    assert parent.data.tags["prefect.flow_run_id"] == doc["flow_run_id"]
    assert {"oof_auc", "oof_log_loss", "backtest_sharpe", "buy_and_hold_sharpe", "shadow_rows"} <= set(
        parent.data.metrics
    )
    artifacts = {a.path for a in client.list_artifacts(doc["run_id"])}
    plots = {"reliability.png", "equity_vs_baselines.png", "stacker_weights.png"}
    assert (
        plots | {"oof_predictions.parquet", "promotion.json", "evaluation.json", "shadow_predictions.parquet"}
        <= artifacts
    )
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{doc['run_id']}'"
    )
    assert {r.data.tags["family"] for r in children} == {"xgb", "lgbm", "nhits", "stacker"}
    xgb = next(r for r in children if r.data.tags["family"] == "xgb")
    assert "xgb.pkl" in {a.path for a in client.list_artifacts(xgb.info.run_id)}  # the deployable base model

    # the parent run spans the flow (its duration is the flow's wall time); each child its fits
    started, ended = doc["_wall"]
    info = parent.info
    assert info.status == "FINISHED" and info.end_time is not None
    assert started * 1000 <= info.start_time <= started * 1000 + 2000
    assert ended * 1000 - 5000 <= info.end_time <= ended * 1000
    for child in children:
        assert info.start_time <= child.info.start_time <= child.info.end_time <= info.end_time
        assert child.info.status == "FINISHED" and child.data.metrics["fit_seconds"] > 0
    nhits = next(r for r in children if r.data.tags["family"] == "nhits")  # not the 0.1 s of logging
    assert nhits.info.end_time - nhits.info.start_time >= 1000 * nhits.data.metrics["fit_seconds"] / 8
    # the data it trained and was evaluated on, as MLflow datasets with a digest and a source
    for run in (parent, xgb):
        inputs = {
            (d.dataset.name, {t.key: t.value for t in d.tags}["mlflow.data.context"])
            for d in run.inputs.dataset_inputs
        }
        assert inputs == {("candles-1h-spot-train", "training"), ("oof-1h-spot", "evaluation")}
    train = next(d for d in parent.inputs.dataset_inputs if d.dataset.name.endswith("train"))
    tags = {t.key: t.value for t in train.tags}
    assert len(train.dataset.digest) == 32 and "store/spot/1h" in train.dataset.source
    assert tags["first_open_time"] == doc["data"]["start"] and int(tags["rows"]) > 0

    version = client.get_model_version("quantum-trader-1h", "1")
    assert version.run_id == doc["run_id"] and version.aliases == (
        ["champion"] if doc["promoted"] else ["challenger"]
    )
    wanted = ("data_hash", "data_start", "data_end", "metric.oof_auc", "metric.oof_log_loss", "gate.decision")
    for tag in wanted:
        assert version.tags.get(tag), tag


def test_a_flow_that_fails_marks_its_mlflow_run_failed(tmp_path: Path, prefect_harness: None) -> None:
    from flows.training import training_flow

    home = tmp_path / "home"
    with pytest.raises(Exception, match="max_depth"):
        training_flow(
            symbols=["BTCUSDT"], models=["xgb"], model_params={"xgb": {"max_depth": -3}},
            home=str(home),
        )  # fmt: skip
    mlflow.set_tracking_uri(load_settings(home).tracking_uri)
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert [r.info.status for r in parents] == ["FAILED"] and parents[0].info.end_time is not None


@pytest.mark.slow
def test_a_degraded_challenger_is_refused_and_rollback_restores_the_champion(
    first_retrain: tuple[Settings, dict[str, Any]],
) -> None:
    settings, first = first_retrain
    home = settings.home
    if not first["promoted"]:  # a person makes v1 the champion (the drill needs one)
        override = qt("registry", "promote", "1", "--reason", "drill champion", "--json", home=home)
        assert override.returncode == 0, override.stderr
    before = [
        (e["action"], e["version"], e["actor"])
        for e in json.loads(qt("registry", "list", "--json", home=home).stdout)["history"]
    ]
    degraded = qt(
        "retrain", "--symbols", "BTCUSDT,ETHUSDT,SOLUSDT", "--models", "xgb,lgbm", "--label-noise", "1",
        "--json", home=home,
    )  # fmt: skip
    assert degraded.returncode == 0, degraded.stderr[-3000:]
    doc = json.loads(degraded.stdout)
    assert {"run_id", "challenger_version", "promoted", "reason", "metrics"} <= set(doc)
    assert doc["challenger_version"] == "2" and doc["promoted"] is False
    assert doc["previous_champion"] == "1" and doc["champion"] == "1"
    checks = {c["name"]: c for c in doc["gate"]["checks"]}
    assert not checks["log_loss_vs_champion"]["passed"]  # shuffled labels cannot beat the champion's log loss
    assert doc["reason"].startswith("not promoted (champion v1")
    assert doc["metrics"]["oof_auc"] < 0.53  # evaluated against the true labels

    listed = json.loads(qt("registry", "list", "--json", home=home).stdout)
    assert {"name", "champion", "challenger", "versions", "history"} <= set(listed)
    assert (listed["champion"], listed["challenger"]) == ("1", "2")
    versions = [(v["version"], v["aliases"]) for v in listed["versions"]]
    assert versions == [("2", ["challenger"]), ("1", ["champion"])]
    assert all({"version", "aliases", "created", "metrics"} <= set(v) for v in listed["versions"])
    assert [(e["action"], e["version"], e["actor"]) for e in listed["history"]] == [
        *before,
        ("reject", "2", "gate"),
    ]
    assert before[-1][:2] == ("promote", "1")

    # a person overrides the gate, then rolls back
    promoted = qt("registry", "promote", "2", "--reason", "drill", "--json", home=home)
    assert promoted.returncode == 0, promoted.stderr
    assert json.loads(qt("registry", "list", "--json", home=home).stdout)["champion"] == "2"
    rolled = qt("registry", "rollback", "--json", home=home)
    assert rolled.returncode == 0, rolled.stderr
    event = json.loads(rolled.stdout)
    assert (event["action"], event["version"], event["previous"]) == ("rollback", "1", "2")
    after = json.loads(qt("registry", "list", "--json", home=home).stdout)
    assert after["champion"] == "1"
    assert [e["action"] for e in after["history"]] == [
        *(b[0] for b in before),
        "reject",
        "promote",
        "rollback",
    ]
    shown = json.loads(qt("registry", "show", "champion", "--json", home=home).stdout)
    assert shown["version"] == "1" and shown["tags"]["gate.decision"] == (
        "promoted" if first["promoted"] else "rejected"
    )

    # nothing earlier than v1 to roll back to; an unknown version is bad input
    assert qt("registry", "rollback", "--json", home=home).returncode == 2
    missing = qt("registry", "promote", "99", "--json", home=home)
    assert missing.returncode == 2 and "no version '99'" in missing.stdout
    assert not (Path.cwd() / "mlruns").exists()
