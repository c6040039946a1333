"""The model supervisor: live calibration and drift checks, DEFENSIVE, a triggered retrain, MLflow."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core.settings import Settings
from model_registry.ensemble import Ensemble
from serving import supervisor
from serving.journal import Journal
from serving.journal import models as db
from tasks.store import CandleStore
from tests.test_live import SYMBOLS, UNTIL

HOUR = pd.Timedelta(hours=1)
BARS = 300


def _signals(
    settings: Settings, folder: Path, p_of: Callable[[bool, np.random.Generator], float]
) -> Settings:
    """A journal of the champion's (v1) signals for BARS bars after UNTIL, P(up) from each bar's outcome."""
    rng = np.random.default_rng(3)
    folder.mkdir(parents=True, exist_ok=True)
    target = settings.model_copy(update={"journal_url": f"sqlite:///{folder / 'journal.db'}"})
    store = CandleStore(settings.store_dir)
    with Journal.open(target) as journal, journal.transaction() as session:
        for symbol in SYMBOLS:
            closes = store.read(symbol, "1h", "spot")["close"]
            window = closes[(closes.index >= UNTIL) & (closes.index < UNTIL + BARS * HOUR)]
            went_up = (closes.shift(-1).reindex(window.index) > window).to_numpy()
            for when, up in zip(window.index, went_up, strict=True):
                p = p_of(bool(up), rng)
                p_up = {"xgb": p, "lgbm": p, "ensemble": p}
                row = db.Signal(time=when.to_pydatetime(), symbol=symbol, interval="1h", model_version="1",
                                p_up=p_up, features_hash="")  # fmt: skip
                session.add(row)
    return target


def _honest(_up: bool, rng: np.random.Generator) -> float:
    return float(0.5 + rng.normal(0, 0.01))  # no skill, calibrated: what a weak model looks like


def _inverted(up: bool, _rng: np.random.Generator) -> float:
    return 0.15 if up else 0.85  # confidently wrong


def test_psi_is_zero_for_the_same_distribution_and_large_for_a_shift() -> None:
    rng = np.random.default_rng(0)
    reference = rng.normal(0, 1, 5_000)
    assert supervisor.psi(reference, rng.normal(0, 1, 2_000)) < 0.02
    assert supervisor.psi(reference, rng.normal(1, 1, 2_000)) > 0.25  # a one-sigma shift
    assert np.isnan(supervisor.psi(np.ones(100), rng.normal(0, 1, 100)))  # constant reference
    assert supervisor.chance_ece(1_680) == pytest.approx(0.0614, abs=1e-3)  # 10 pairs, a week of 1h bars


def test_a_calibrated_record_is_normal_and_a_confidently_wrong_one_defensive(
    trained: tuple[Settings, Ensemble], tmp_path: Path
) -> None:
    settings, _ = trained
    limits = supervisor.Limits(window_bars=BARS)
    good = _signals(settings, tmp_path / "good", _honest)
    with Journal.open(good) as journal:
        verdict, outcomes = supervisor.supervise(good, journal, "1h", "spot", limits)
    assert verdict.model_version == "1" and verdict.rows == len(SYMBOLS) * BARS
    assert verdict.mode == "NORMAL" and verdict.reasons == [], verdict.checks
    assert {c["check"] for c in verdict.checks} == {
        "log_loss", "accuracy", "ece", "calibration_slope_upper", "bias", "drifted_share"
    }  # fmt: skip
    assert {m["model"] for m in verdict.models} == {"xgb", "lgbm", "ensemble"}
    assert set(outcomes["model"]) == {"xgb", "lgbm", "ensemble"}
    assert len(verdict.drift) > 10 and all(np.isfinite(v) for v in verdict.drift.values())

    bad = _signals(settings, tmp_path / "bad", _inverted)
    with Journal.open(bad) as journal:
        verdict, _ = supervisor.supervise(bad, journal, "1h", "spot", limits)
        assert verdict.mode == "DEFENSIVE"
        failed = {c["check"] for c in verdict.checks if not c["passed"]}
        assert {"log_loss", "accuracy", "ece", "calibration_slope_upper"} <= failed
        assert any(r.startswith("live log loss") for r in verdict.reasons)
        supervisor.journal_verdict(journal, verdict)
        assert supervisor.floor_mode(journal, "1").value == "DEFENSIVE"
        assert supervisor.floor_mode(journal, "2").value == "NORMAL"  # a new champion starts afresh

    few = supervisor.Limits(window_bars=BARS, min_rows=10_000)
    with Journal.open(bad) as journal:
        verdict, _ = supervisor.supervise(bad, journal, "1h", "spot", few)
    assert verdict.mode == "NORMAL" and verdict.note and "fewer than 10000" in verdict.note


def test_the_live_tick_trades_defensive_while_the_supervisor_says_so(
    trained: tuple[Settings, Ensemble],
) -> None:
    from serving.live import LiveConfig, TickReport
    from serving.replay import replay
    from tests.test_live import EAGER

    settings, _ = trained
    modes: list[str | None] = []

    def after(report: TickReport) -> None:
        modes.append(report.mode)
        if len(modes) == 2:  # the supervisor's verdict lands between ticks 2 and 3
            home = max((settings.home / "replays").iterdir())
            with Journal.open(settings.model_copy(update={"home": home, "journal_url": None})) as journal:
                verdict = supervisor.Verdict("2025-05-15T02:00:00+00:00", "1", "1h", "spot", mode="DEFENSIVE")
                supervisor.journal_verdict(journal, verdict)

    config = LiveConfig(SYMBOLS, "1h", "spot", EAGER, model_policy=False)
    replay(settings, config, "paper", UNTIL, UNTIL + 3 * HOUR, on_tick=after)
    assert modes[:2] == ["NORMAL", "NORMAL"] and modes[2:] == ["DEFENSIVE", "DEFENSIVE"]


@pytest.mark.slow
def test_the_supervisor_flow_starts_a_retrain_and_logs_a_monitoring_run(
    trained: tuple[Settings, Ensemble], tmp_path: Path, prefect_harness: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow
    from prefect import get_client
    from prefect.utilities.asyncutils import run_coro_as_sync

    from flows.deploy import apply_deployments
    from flows.supervisor import supervisor_flow

    settings, _ = trained
    bad = _signals(settings, tmp_path, _inverted)
    monkeypatch.setenv("QT_JOURNAL_URL", str(bad.journal_url))
    apply_deployments(settings)
    verdict = supervisor_flow(str(settings.home))
    assert verdict["mode"] == "DEFENSIVE" and verdict["retrain_run_id"], verdict

    async def read() -> tuple[str, list[str]]:
        async with get_client() as client:
            run = await client.read_flow_run(verdict["retrain_run_id"])
            return run.state_name or "", run.tags

    state, tags = run_coro_as_sync(read())  # type: ignore[misc]
    assert state == "Scheduled" and any(t.startswith("reason:supervisor v1: live log loss") for t in tags)
    again = supervisor_flow(str(settings.home))  # within the cool-down: no second retrain
    assert again["mode"] == "DEFENSIVE" and again["retrain_run_id"] is None

    run = mlflow.get_run(verdict["mlflow_run_id"])
    assert run.info.run_id == again["mlflow_run_id"]  # one monitoring run per day
    assert run.data.tags["monitor.day"] == pd.Timestamp(verdict["time"]).strftime("%Y-%m-%d")
    assert run.data.metrics["defensive"] == 1.0 and "ensemble.log_loss" in run.data.metrics
    files = {f.path for f in mlflow.MlflowClient().list_artifacts(run.info.run_id)}
    assert {"live_reliability.png", "feature_drift.png", "checks"} <= files
    with Journal.open(bad) as journal:
        assert supervisor.floor_mode(journal, "1").value == "DEFENSIVE"


def test_qt_supervise_prints_the_checks_of_a_replay_without_a_retrain(
    trained: tuple[Settings, Ensemble],
) -> None:
    """A short replay has too few signals with an outcome: NORMAL, and the command says why."""
    import json
    import os
    import subprocess

    from serving.live import LiveConfig
    from serving.replay import replay
    from tests.test_cli import QT, ROOT
    from tests.test_live import EAGER

    settings, _ = trained
    config = LiveConfig(SYMBOLS, "1h", "spot", EAGER, model_policy=False)
    _, home = replay(settings, config, "paper", UNTIL, UNTIL + 5 * HOUR)
    env = {**os.environ, "QT_HOME": str(settings.home)}
    done = subprocess.run([*QT, "supervise", "--replay", str(home.home), "--no-retrain", "--json"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    verdict = json.loads(done.stdout)
    assert verdict["mode"] == "NORMAL" and verdict["model_version"] == "1"
    assert (
        verdict["rows"] == 5 * len(SYMBOLS) and "fewer than 300" in verdict["note"]
    )  # 6 bars, 5 with an outcome
    assert {c["check"] for c in verdict["checks"]} >= {"log_loss", "ece", "drifted_share"}
    plain = subprocess.run([*QT, "supervise", "--replay", str(home.home), "--no-retrain"],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert (
        plain.returncode == 0 and "live record per model" in plain.stdout and "fewer than 300" in plain.stdout
    )
