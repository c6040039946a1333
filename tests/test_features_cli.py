"""`qt features` and the store → matrix path: parity between a full and a truncated store."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from prefect import flow

from core.errors import BadConfigError
from core.settings import Settings, load_settings
from flows.features import build_features_task
from tasks.features.dataset import features_from_store
from tasks.ingest import ingest_files
from tasks.ingest.sample import sample_paths
from tasks.store import CandleStore
from tests.test_cli import qt

T = pd.Timestamp("2025-02-03 17:00", tz="UTC")


def _ingest(settings: Settings, end: pd.Timestamp | None = None) -> CandleStore:
    for path in sample_paths(["BTCUSDT", "ETHUSDT"], "1h"):
        ingest_files(path.name.split("-")[0], "1h", "spot", [path], "sample", settings, end=end)
    return CandleStore(settings.store_dir)


def test_features_at_t_are_identical_whether_or_not_later_candles_exist(tmp_path: Path) -> None:
    full = features_from_store(_ingest(load_settings(tmp_path / "a")), None, "1h", include_unlabeled=True)
    cut = features_from_store(
        _ingest(load_settings(tmp_path / "b"), end=T), None, "1h", include_unlabeled=True
    )
    assert cut["open_time"].max() == T
    a = full[full["open_time"] == T].set_index("symbol").drop(columns=["target_log_return", "target_up"])
    b = cut[cut["open_time"] == T].set_index("symbol").drop(columns=["target_log_return", "target_up"])
    assert list(a.index) == ["BTCUSDT", "ETHUSDT"]
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    assert cut.loc[cut["open_time"] == T, "target_up"].isna().all()  # unknown yet: kept, not filled


def test_unknown_symbol_is_named(tmp_path: Path) -> None:
    store = _ingest(load_settings(tmp_path / "a"))
    with pytest.raises(BadConfigError, match=r"no stored 1h spot candles for \['DOGEUSDT'\]"):
        features_from_store(store, ["DOGEUSDT"], "1h")


def test_the_prefect_task_builds_the_same_matrix(tmp_path: Path, prefect_harness: None) -> None:
    settings = load_settings(tmp_path / "a")
    _ingest(settings)

    @flow
    def features_only() -> pd.DataFrame:
        return build_features_task(settings, ["ETHUSDT"], "1h")

    matrix = features_only()
    direct = features_from_store(CandleStore(settings.store_dir), ["ETHUSDT"], "1h")
    pd.testing.assert_frame_equal(matrix, direct)


@pytest.mark.slow
def test_cli_writes_the_matrix_and_reports_it(tmp_path: Path) -> None:
    home = tmp_path / "home"
    _ingest(load_settings(home))
    out = tmp_path / "features.parquet"
    result = qt(
        "features", "--symbols", "ETHUSDT", "--start", "2025-01-01", "--out", str(out), "--json", home=home
    )
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    matrix = pd.read_parquet(out)
    assert doc["rows"] == len(matrix) and list(doc["symbols"]) == ["ETHUSDT"]
    assert {"target_log_return", "target_up"} <= set(matrix.columns) and "btc_log_ret_1" in doc[
        "feature_columns"
    ]
    assert matrix["open_time"].min() == pd.Timestamp("2025-01-01", tz="UTC")
    empty = qt("features", "--out", str(out), home=tmp_path / "empty")
    assert empty.returncode == 2 and "run qt ingest first" in empty.stderr
