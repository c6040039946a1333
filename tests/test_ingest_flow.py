"""The Prefect ingest flow, run for real against a temporary Prefect server."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from core.errors import IngestError
from core.settings import Settings
from flows.ingest import ingest_flow
from infra.exchange import FakeExchange
from tasks.ingest.sample import sample_symbols
from tasks.store import CandleStore
from tests.conftest import copy_sample

pytestmark = pytest.mark.usefixtures("prefect_harness")


def test_sample_ingest_stores_every_symbol_and_is_idempotent(settings: Settings) -> None:
    report = ingest_flow(source="sample", home=str(settings.home))
    assert (
        sorted(report["symbols"])
        == sample_symbols()
        == ["BNBUSDT", "BTCUSDT", "ETHUSDT", "SOLUSDT", "XRPUSDT"]
    )
    assert {r["rows_added"] for r in report["symbols"].values()} == {10968}
    again = ingest_flow(source="sample", symbols=["BTCUSDT"], home=str(settings.home))
    assert again["symbols"]["BTCUSDT"]["rows_added"] == 0


def test_one_bad_symbol_fails_the_flow_but_the_others_are_stored(
    settings: Settings, btc_raw: pd.DataFrame, tmp_path: Path
) -> None:
    folder = tmp_path / "dumps"
    copy_sample(folder, ["ETHUSDT"])
    bad = btc_raw.iloc[:20].copy()
    bad.loc[5, "low"] = bad.loc[5, "high"] + 1
    bad.to_csv(folder / "BTCUSDT-1h.csv", index=False)

    with pytest.raises(IngestError) as caught:
        ingest_flow(source="files", paths=[str(folder)], home=str(settings.home))

    assert caught.value.exit_code == 2
    assert list(caught.value.failures) == ["BTCUSDT"]
    assert "BTCUSDT-1h.csv row 7" in str(caught.value)
    assert caught.value.report["symbols"]["ETHUSDT"]["rows_added"] == 10968
    assert CandleStore(settings.store_dir).symbols("1h") == ["ETHUSDT"]


def test_binance_source_through_the_flow(
    settings: Settings, btc_raw: pd.DataFrame, monkeypatch: pytest.MonkeyPatch
) -> None:
    with FakeExchange() as exchange:
        exchange.add_candles("BTCUSDT", "1h", btc_raw.iloc[:1500])
        exchange.add_candles("ETHUSDT", "1h", btc_raw.iloc[:1500])
        monkeypatch.setenv("QT_BINANCE_SPOT_URL", exchange.spot_url)
        start = pd.Timestamp(int(btc_raw["open_time"].iloc[0]), unit="ms", tz="UTC").isoformat()
        report = ingest_flow(source="binance", top=2, start=start, home=str(settings.home))
    assert {s: r["rows_added"] for s, r in report["symbols"].items()} == {"BTCUSDT": 1500, "ETHUSDT": 1500}
