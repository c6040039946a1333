"""Shared fixtures: a fresh home per test, real candles from the bundled sample."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from core.settings import Settings, configure_environment, load_settings
from tasks.ingest.files import read_candle_file
from tasks.ingest.sample import SAMPLE_DIR

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "binance"


@pytest.fixture(scope="session", autouse=True)
def _quiet_offline_env(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Telemetry off, and one Prefect home for the whole session (its DB starts once)."""
    os.environ["PREFECT_HOME"] = str(tmp_path_factory.mktemp("prefect-home"))
    configure_environment(Settings(home=tmp_path_factory.mktemp("unused-home")))


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Settings with a fresh home and fast retries."""
    os.environ.pop("QT_HOME", None)
    s = load_settings(tmp_path / "home")
    s.http_backoff_s = 0.05
    s.http_timeout_s = 2.0
    return s


@pytest.fixture(scope="session")
def btc_raw() -> pd.DataFrame:
    """Real BTCUSDT 1h candles (10,968 rows, kline columns, int-ms times) from the sample."""
    raw = read_candle_file(SAMPLE_DIR / "BTCUSDT-1h.zip")
    return raw.drop(columns=["source_file", "source_row"])


@pytest.fixture
def write_csv(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Write a kline frame as a CSV named like a Binance file; returns its path."""

    def _write(frame: pd.DataFrame, name: str = "BTCUSDT-1h.csv", header: bool = True) -> Path:
        path = tmp_path / "files" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        frame.to_csv(path, index=False, header=header)
        return path

    return _write


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """One temporary Prefect server for every flow test (it takes ~15 s to start)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def shared_file(name: str) -> Path:
    """A file of ../shared/data/binance, skipping the test when it is absent."""
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"{path} is absent (only a developer checkout has ../shared)")
    return path


def copy_sample(dest: Path, symbols: list[str]) -> list[Path]:
    """Copy bundled sample zips into ``dest``; returns the copies."""
    dest.mkdir(parents=True, exist_ok=True)
    return [Path(shutil.copy(SAMPLE_DIR / f"{s}-1h.zip", dest)) for s in symbols]


@pytest.fixture(scope="session")
def sample_matrix(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    """The feature matrix of the whole bundled sample (5 pairs, 1h), built once per session."""
    from core.settings import load_settings
    from tasks.features.dataset import features_from_store
    from tasks.ingest import ingest_files
    from tasks.ingest.sample import sample_paths
    from tasks.store import CandleStore

    settings = load_settings(tmp_path_factory.mktemp("sample-home"))
    for path in sample_paths(None, "1h"):
        ingest_files(path.name.split("-")[0], "1h", "spot", [path], "sample", settings)
    return features_from_store(CandleStore(settings.store_dir), None, "1h")


def free_port() -> int:
    """A TCP port nobody listens on right now (127.0.0.1)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_qt_ui(home: Path, stderr: int = subprocess.DEVNULL) -> tuple[subprocess.Popen[str], int, int]:
    """``qt ui --json`` for ``home`` on free ports, in the home's own Prefect database.

    Returns the process (its stdout carries the JSON of URLs) and the Prefect and MLflow ports.
    """
    root = Path(__file__).resolve().parents[1]
    prefect_port, mlflow_port = free_port(), free_port()
    env = {**os.environ, "QT_HOME": str(home)}
    env.pop("PREFECT_API_URL", None)
    env.pop("PREFECT_HOME", None)  # the home's own Prefect database
    ui = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "ui", "--prefect-port", str(prefect_port),
         "--mlflow-port", str(mlflow_port), "--json"],
        cwd=root, env=env, stdout=subprocess.PIPE, stderr=stderr, text=True,
    )  # fmt: skip
    return ui, prefect_port, mlflow_port


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, Any]:
    """A home with 3 sample pairs and a small ensemble trained before UNTIL as champion (v1).

    One per session: tests/test_live.py and tests/test_api.py trade and serve the same
    champion (tests that move its alias put it back).
    """
    from model_registry.ensemble import fit_ensemble
    from model_registry.registry import register, set_alias
    from tasks.backtest import Costs
    from tasks.features.dataset import features_from_store
    from tasks.ingest import ingest_files
    from tasks.ingest.sample import sample_paths
    from tasks.models import ModelConfig
    from tasks.store import CandleStore
    from tasks.walkforward import WalkForward, walk_forward
    from tests.test_live import SYMBOLS, UNTIL
    from tests.test_models import TINY

    settings = load_settings(tmp_path_factory.mktemp("live") / "home")
    configure_environment(settings)
    for path in sample_paths(list(SYMBOLS), "1h"):
        ingest_files(path.name.split("-")[0], "1h", "spot", [path], "sample", settings)
    matrix = features_from_store(CandleStore(settings.store_dir), None, "1h")
    matrix = matrix[matrix["open_time"] < UNTIL]
    plan = WalkForward(UNTIL - pd.Timedelta(days=60), UNTIL, folds=2)
    config = ModelConfig(seed=1, device="cpu", params=TINY)
    result = walk_forward(matrix, ["xgb", "lgbm"], config, plan)
    assert result.stacker is not None
    ensemble = fit_ensemble(matrix, ["xgb", "lgbm"], config, plan, result.stacker, "1h", Costs())
    version = register(settings, ensemble, matrix[matrix["symbol"] == "BTCUSDT"].tail(2))
    set_alias(settings, "1h", "champion", version)
    return settings, ensemble
