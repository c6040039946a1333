"""The ``qt`` command line as a user runs it: exit codes, JSON on stdout, messages."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import copy_sample, shared_file

QT = [sys.executable, "-m", "cli.main"]
ROOT = Path(__file__).resolve().parents[1]


def qt(*args: str, home: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "QT_HOME": str(home), "COLUMNS": "200", **(env or {})}
    return subprocess.run([*QT, *args], cwd=ROOT, env=full, capture_output=True, text=True, timeout=300)


def test_help_lists_the_commands(tmp_path: Path) -> None:
    result = qt("--help", home=tmp_path)
    assert result.returncode == 0
    for command in ("ingest", "validate", "demo"):
        assert command in result.stdout
    assert "--source" in qt("ingest", "--help", home=tmp_path).stdout


@pytest.mark.slow
def test_ingest_json_then_idempotent_then_validate(tmp_path: Path) -> None:
    files = copy_sample(tmp_path / "dumps", ["SOLUSDT"])
    first = qt("ingest", "--source", "files", "--path", str(files[0]), "--json", home=tmp_path / "home")
    assert first.returncode == 0, first.stderr
    report = json.loads(first.stdout)["symbols"]["SOLUSDT"]
    assert (report["rows_added"], report["rows_total"]) == (10968, 10968)
    assert set(report) >= {"rows_added", "rows_total", "first_open_time", "last_open_time", "gaps"}

    second = qt("ingest", "--source", "files", "--path", str(files[0]), "--json", home=tmp_path / "home")
    assert json.loads(second.stdout)["symbols"]["SOLUSDT"]["rows_added"] == 0

    checked = qt("validate", "--json", home=tmp_path / "home")
    assert checked.returncode == 0, checked.stderr
    assert json.loads(checked.stdout)["datasets"]["SOLUSDT"]["success"] is True


@pytest.mark.slow
def test_bad_csv_exits_2_naming_file_and_row_and_stores_nothing(
    tmp_path: Path, btc_raw: pd.DataFrame
) -> None:
    bad = btc_raw.iloc[:12].copy()
    bad.loc[8, "high"] = bad.loc[8, "low"] - 10
    path = tmp_path / "BTCUSDT-1h-2024-03.csv"
    bad.to_csv(path, index=False)
    result = qt("ingest", "--source", "files", "--path", str(path), home=tmp_path / "home")
    assert result.returncode == 2
    assert f"{path} row 10" in result.stderr
    assert not (tmp_path / "home" / "store" / "spot" / "1h" / "BTCUSDT.parquet").exists()
    reports = list((tmp_path / "home" / "quarantine").glob("*_spot_BTCUSDT_1h/report.md"))
    assert len(reports) == 1 and "row 10" in reports[0].read_text()


def test_bad_options_exit_2_with_a_message(tmp_path: Path) -> None:
    result = qt("ingest", "--source", "files", "--path", str(tmp_path / "nope.csv"), "--json", home=tmp_path)
    assert result.returncode == 2
    assert json.loads(result.stdout)["exit_code"] == 2
    assert "nope.csv" in result.stderr
    assert qt("ingest", "--interval", "7h", "--source", "binance", home=tmp_path).returncode == 2


def test_validate_rejects_corrupted_stored_data(tmp_path: Path, btc_raw: pd.DataFrame) -> None:
    stored = tmp_path / "store" / "spot" / "1h" / "BTCUSDT.parquet"
    stored.parent.mkdir(parents=True)
    frame = btc_raw.iloc[:10].copy()
    frame.loc[3, "low"] = frame.loc[3, "high"] * 2  # written behind the store's back
    for col in ("open_time", "close_time"):
        frame[col] = pd.to_datetime(frame[col], unit="ms", utc=True).astype("datetime64[ms, UTC]")
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), stored)
    result = qt("validate", home=tmp_path)
    assert result.returncode == 2
    assert f"{stored} row 4" in result.stderr


@pytest.mark.shared_data
@pytest.mark.slow
def test_acceptance_shared_btc_file_36760_rows_5_gaps(tmp_path: Path) -> None:
    path = shared_file("BTCUSDT-1h.csv")
    first = qt("ingest", "--source", "files", "--path", str(path), "--json", home=tmp_path)
    assert first.returncode == 0, first.stderr
    report = json.loads(first.stdout)["symbols"]["BTCUSDT"]
    assert (report["rows_added"], report["rows_total"], report["gaps"]) == (36760, 36760, 5)
    again = qt("ingest", "--source", "files", "--path", str(path), "--json", home=tmp_path)
    assert json.loads(again.stdout)["symbols"]["BTCUSDT"]["rows_added"] == 0


@pytest.mark.slow
def test_demo_ingests_the_sample_retrains_and_reaches_a_decision(tmp_path: Path) -> None:
    result = qt("demo", "--models", "xgb,lgbm", "--json", home=tmp_path)
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["data"]["symbols"] == ["BNBUSDT", "BTCUSDT", "ETHUSDT", "SOLUSDT", "XRPUSDT"]
    assert doc["challenger_version"] == "1" and isinstance(doc["promoted"], bool) and doc["reason"]
    assert set(doc["metrics"]["per_model"]) == {"xgb", "lgbm"}
    assert doc["data"]["end"].startswith("2025-06-14 22:00")  # the sample's newest labelled bar
    replayed = doc["replay"]  # the live loop over the newest 12 hours: the champion, else the challenger
    assert replayed["ticks"] == 12 and replayed["model_version"] == "1"
    assert replayed["unprotected_positions"] == 0 and replayed["signals"] == 12 * 5
    if doc["promoted"]:
        assert (replayed["model_alias"], replayed["label"]) == ("champion", "champion")
    else:  # refused: shown as what it is, and the champion alias stays unset
        assert replayed["label"] == "challenger (not promoted — demo only)" and doc["champion"] is None
        listed = json.loads(qt("registry", "list", "--json", home=tmp_path).stdout)
        assert (listed["champion"], listed["challenger"]) == (None, "1")


def test_invalid_settings_and_paths_are_bad_input_with_one_json_document(tmp_path: Path) -> None:
    env_bad = subprocess.run(
        [*QT, "validate", "--json"],
        cwd=ROOT,
        env={**os.environ, "QT_HOME": str(tmp_path), "QT_HTTP_MAX_RETRIES": "-1"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert env_bad.returncode == 2 and "http_max_retries" in json.loads(env_bad.stdout)["error"]
    folder = qt("features", "--out", str(tmp_path), "--json", home=tmp_path)
    assert folder.returncode == 2 and "is a folder" in json.loads(folder.stdout)["error"]
