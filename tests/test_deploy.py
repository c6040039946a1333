"""Deployments in the Prefect API, and ``qt ui`` serving both UIs (a real Prefect server)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import IO, Any

import pytest

from core.settings import Settings, load_settings
from tests.conftest import start_qt_ui
from tests.test_cli import QT, ROOT


def test_deployments_daily_and_triggered_are_in_the_prefect_api(
    settings: Settings, prefect_harness: None
) -> None:
    from prefect import get_client
    from prefect.utilities.asyncutils import run_coro_as_sync

    from flows.deploy import apply_deployments, request_retrain

    found = {d["name"]: d for d in apply_deployments(settings)}
    daily, triggered = found["training/daily-retrain"], found["training/triggered-retrain"]
    assert [(s["cron"], s["timezone"]) for s in daily["schedules"]] == [("0 0 * * *", "UTC")]
    assert triggered["schedules"] == []
    for d in (daily, triggered):
        assert d["parameters"] == {"home": str(settings.home), "source": "store"}
        assert d["concurrency_limit"] == 1

    live = found["live/every-minute"]
    assert [(s["cron"], s["timezone"]) for s in live["schedules"]] == [("* * * * *", "UTC")]
    assert live["concurrency_limit"] == 1 and live["parameters"]["broker"] == "paper"
    supervisor = found["supervisor/hourly"]
    assert [(s["cron"], s["timezone"]) for s in supervisor["schedules"]] == [("5 * * * *", "UTC")]
    assert supervisor["concurrency_limit"] == 1 and supervisor["parameters"]["home"] == str(settings.home)

    run_id = request_retrain("live win rate below 45 %", {"models": ["xgb"]})

    async def read() -> tuple[str, list[str], dict[str, object]]:
        async with get_client() as client:
            run = await client.read_flow_run(run_id)
            return run.state_name or "", run.tags, run.parameters

    state, tags, parameters = run_coro_as_sync(read())  # type: ignore[misc]
    assert state == "Scheduled" and "triggered" in tags
    assert "reason:live win rate below 45 %" in tags
    assert parameters["models"] == ["xgb"] and parameters["home"] == str(settings.home)


POOL = "qt-test-pool"
NAMES = ("training/daily-retrain", "training/triggered-retrain", "live/every-minute", "supervisor/hourly")


def _pool_and_deployments(pool: str) -> tuple[str, dict[str, tuple[str | None, dict[str, object]]]]:
    """The pool's type, and name → (work pool, parameters) of the four deployments, from the API."""
    from prefect import get_client

    with get_client(sync_client=True) as client:
        kind = client.read_work_pool(pool).type
        found = {name: client.read_deployment_by_name(name) for name in NAMES}
    return kind, {name: (d.work_pool_name, d.parameters) for name, d in found.items()}


def _delete(names: tuple[str, ...], pool: str) -> None:
    """Remove the deployments and the pool, so later tests of the session apply fresh served ones."""
    from prefect import get_client

    with get_client(sync_client=True) as client:
        for name in names:
            client.delete_deployment(client.read_deployment_by_name(name).id)
        client.delete_work_pool(pool)


def test_with_a_work_pool_the_deployments_are_the_process_pools_and_carry_no_home(
    settings: Settings, prefect_harness: None
) -> None:
    from flows.deploy import apply_deployments

    try:
        found = {d["name"]: d for d in apply_deployments(settings, "binance", work_pool=POOL)}
        kind, stored = _pool_and_deployments(POOL)
        assert kind == "process"  # created by apply_deployments, with the process worker's template
        assert set(found) == set(NAMES)
        for name in NAMES:
            pool, parameters = stored[name]
            assert pool == POOL and found[name]["work_pool"] == POOL
            assert "home" not in parameters  # the worker's QT_HOME decides
        assert stored["training/daily-retrain"][1] == {"source": "binance"}
        assert stored["live/every-minute"][1] == {"broker": "paper", "market": "spot"}
        assert [(s["cron"], s["timezone"]) for s in found["training/daily-retrain"]["schedules"]] == [
            ("0 0 * * *", "UTC")
        ]
        again = apply_deployments(settings, "binance", work_pool=POOL)  # the pool exists: reused
        assert [d["id"] for d in again] == [found[name]["id"] for name in NAMES]
    finally:
        _delete(NAMES, POOL)


def test_a_work_pool_of_another_type_is_refused_with_its_name(
    settings: Settings, prefect_harness: None
) -> None:
    from prefect import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    from core.errors import BadConfigError
    from flows.deploy import apply_deployments

    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name="qt-test-docker", type="docker"))
    try:
        with pytest.raises(BadConfigError, match="'qt-test-docker' is of type 'docker'"):
            apply_deployments(settings, work_pool="qt-test-docker")
    finally:
        with get_client(sync_client=True) as client:
            client.delete_work_pool("qt-test-docker")


@pytest.mark.slow
def test_a_process_worker_runs_a_deployment_on_its_own_home(
    settings: Settings, prefect_harness: None, tmp_path: Path
) -> None:
    """``prefect worker start`` imports the flow by its module path and runs it on the worker's QT_HOME."""
    import prefect.settings
    from prefect import get_client
    from prefect.deployments import run_deployment

    from flows.deploy import apply_deployments
    from serving import supervisor
    from serving.journal import Journal

    worker_home = tmp_path / "worker-home"
    Journal.open(load_settings(worker_home)).close()  # an empty journal: the supervisor has nothing to flag
    try:
        found = {d["name"]: d for d in apply_deployments(settings, work_pool=POOL)}
        with get_client(sync_client=True) as client:
            for d in found.values():  # no scheduled runs beside the one this test starts
                client.pause_deployment(d["id"])
        run: Any = run_deployment("supervisor/hourly", parameters={"retrain": False}, timeout=0)
        api = str(prefect.settings.PREFECT_API_URL.value())
        env = {**os.environ, "PREFECT_API_URL": api, "QT_HOME": str(worker_home)}
        worker = subprocess.run(
            [str(Path(sys.executable).parent / "prefect"), "worker", "start", "--pool", POOL,
             "--type", "process", "--run-once", "--install-policy", "never"],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert worker.returncode == 0, worker.stdout[-3000:] + worker.stderr[-3000:]
        with get_client(sync_client=True) as client:
            state = client.read_flow_run(run.id).state
        assert state is not None and state.is_completed(), (state, worker.stdout[-3000:])
        with Journal.open(load_settings(worker_home)) as journal:  # its verdict, in the worker's journal
            verdict = supervisor.latest(journal)
        assert verdict is not None and verdict["mode"] == "NORMAL"
        assert (worker_home / "mlflow" / "mlflow.db").exists()  # its monitoring run: the worker's MLflow
        assert not (settings.home / "mlflow").exists()
    finally:
        _delete(NAMES, POOL)


def test_qt_deploy_refuses_serve_with_a_work_pool(tmp_path: Path) -> None:
    env = {**os.environ, "QT_HOME": str(tmp_path / "home"), "PREFECT_API_URL": "http://127.0.0.1:9/api"}
    command = [*QT, "deploy", "--serve", "--work-pool", POOL, "--json"]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "the pool's workers run the deployments" in json.loads(done.stdout)["error"]


def _read_json(stream: IO[str]) -> dict[str, str]:
    """The first JSON document on a stream that stays open."""
    text = ""
    for line in stream:
        text += line
        if line.startswith("}"):
            return dict(json.loads(text))
    raise AssertionError(f"no JSON document before the stream closed: {text!r}")


@pytest.mark.slow
def test_qt_ui_serves_both_uis_and_qt_deploy_registers_on_it(tmp_path: Path) -> None:
    home = tmp_path / "home"
    ui, prefect_port, mlflow_port = start_qt_ui(home, stderr=subprocess.PIPE)
    env = {**os.environ, "QT_HOME": str(home)}
    env.pop("PREFECT_API_URL", None)
    env.pop("PREFECT_HOME", None)
    try:
        assert ui.stdout is not None
        urls = _read_json(ui.stdout)  # printed once both servers answer
        assert urls["prefect_ui"] == f"http://127.0.0.1:{prefect_port}"
        assert urls["mlflow_ui"] == f"http://127.0.0.1:{mlflow_port}"
        for url in (urls["prefect_ui"], urls["mlflow_ui"]):
            with urllib.request.urlopen(url, timeout=10) as page:
                assert page.status == 200 and b"<html" in page.read().lower()

        deploy = subprocess.run(
            [*QT, "deploy", "--no-serve", "--json"],
            cwd=ROOT, env={**env, "PREFECT_API_URL": urls["prefect_api"]},
            capture_output=True, text=True, timeout=180,
        )  # fmt: skip
        assert deploy.returncode == 0, deploy.stderr[-3000:]
        names = {d["name"] for d in json.loads(deploy.stdout)["deployments"]}
        assert names == {"training/daily-retrain", "training/triggered-retrain", "live/every-minute",
                         "supervisor/hourly"}  # fmt: skip
        request = urllib.request.Request(
            f"{urls['prefect_api']}/deployments/filter",
            data=b"{}",
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as reply:
            listed = json.loads(reply.read())
        crons = {d["name"]: [s["schedule"].get("cron") for s in d["schedules"]] for d in listed}
        expected = {"daily-retrain": ["0 0 * * *"], "triggered-retrain": [], "every-minute": ["* * * * *"],
                    "hourly": ["5 * * * *"]}  # fmt: skip
        assert crons == expected
    finally:
        ui.send_signal(signal.SIGTERM)
        code = ui.wait(timeout=60)
    assert code == 0
    for port in (prefect_port, mlflow_port):  # both servers stopped with it
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) != 0


def test_qt_deploy_without_a_server_is_refused_with_advice(tmp_path: Path) -> None:
    env = {**os.environ, "QT_HOME": str(tmp_path / "home")}
    env.pop("PREFECT_API_URL", None)
    command = [*QT, "deploy", "--json"]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "run qt ui --home" in json.loads(done.stdout)["error"]


def test_a_retrain_waits_for_the_one_holding_the_retrain_slot(
    settings: Settings, prefect_harness: None
) -> None:
    """With qt deploy's limits in place, a second training flow queues until the first is done."""
    import threading
    import time

    from prefect.concurrency.sync import concurrency

    from core.errors import QTError
    from flows.deploy import apply_deployments
    from flows.live import RETRAIN_LIMIT
    from flows.training import training_flow

    apply_deployments(settings)
    held, hold_s = threading.Event(), 6.0

    def first_retrain() -> None:  # stands for a retrain in progress: it holds the slot for hold_s
        with concurrency(RETRAIN_LIMIT, occupy=1):
            held.set()
            time.sleep(hold_s)

    holder = threading.Thread(target=first_retrain)
    holder.start()
    assert held.wait(60)
    started = time.monotonic()
    with pytest.raises(QTError) as failed:  # an empty store: the flow fails once it is inside the slot
        training_flow(home=str(settings.home), source="store")
    waited = time.monotonic() - started
    print(failed.value)
    holder.join()
    assert waited >= hold_s - 0.5, (
        f"the second retrain started after {waited:.1f} s, inside the first one's slot"
    )
