"""Files → Great Expectations → store: bad batches are named, quarantined, never stored."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest

from core.errors import BadDataError
from core.settings import Settings
from tasks.ingest import ingest_files
from tasks.store import CandleStore


def ingest(settings: Settings, *paths: Path):  # type: ignore[no-untyped-def]
    return ingest_files("BTCUSDT", "1h", "spot", list(paths), "files", settings)


def test_good_file_is_stored_with_gaps_reported_not_rejected(
    settings: Settings, btc_raw: pd.DataFrame, write_csv
) -> None:
    with_gap = pd.concat([btc_raw.iloc[:100], btc_raw.iloc[103:200]])  # 3 missing hours
    report = ingest(settings, write_csv(with_gap))
    assert (report.rows_added, report.rows_total, report.gaps, report.missing_candles) == (197, 197, 1, 3)
    assert ingest(settings, write_csv(with_gap)).rows_added == 0


def test_microsecond_dump_stores_the_same_candles(
    settings: Settings, btc_raw: pd.DataFrame, write_csv
) -> None:
    micro = btc_raw.iloc[:50].copy()
    micro["open_time"] *= 1000
    micro["close_time"] = micro["close_time"] * 1000 + 999
    ingest(settings, write_csv(micro, header=False))
    stored = CandleStore(settings.store_dir).read("BTCUSDT", "1h")
    assert stored.index[0] == pd.Timestamp(int(btc_raw["open_time"].iloc[0]), unit="ms", tz="UTC")
    assert stored["close_time"].iloc[0].value // 10**6 == btc_raw["close_time"].iloc[0]


def _corrupt(frame: pd.DataFrame, row: int, column: str, value: object) -> pd.DataFrame:
    bad = frame.astype({column: object}).copy()
    bad.iloc[row, bad.columns.get_loc(column)] = value
    return bad


def _forming_last_row(frame: pd.DataFrame) -> pd.DataFrame:
    """Append the candle of the current hour: it has not closed yet."""
    hour = 3_600_000
    now = pd.Timestamp.now(tz="UTC").value // 1_000_000
    row = frame.iloc[[-1]].copy()
    row["open_time"], row["close_time"] = now - now % hour, now - now % hour + hour - 1
    return pd.concat([frame, row], ignore_index=True)


CASES = {
    "high below low": (lambda f: _corrupt(f, 3, "high", 1.0), r"\[high, open\].*row 5 \(high=1.0"),
    "duplicated open_time": (
        lambda f: pd.concat([f.iloc[:4], f.iloc[[3]], f.iloc[4:]]),
        r"expect_column_values_to_be_unique \[open_time\] 2 rows: .*row 5.*row 6",
    ),
    "non-number": (
        lambda f: _corrupt(f, 2, "close", "abc"),
        r"unparseable_fields.* row 4 \(unparseable_fields=close",
    ),
    "zero price": (lambda f: _corrupt(f, 6, "open", 0.0), r"be_between \[open\] 1 row: .*row 8"),
    "negative volume": (lambda f: _corrupt(f, 1, "volume", -5.0), r"be_between \[volume\] 1 row: .*row 3"),
    "misaligned open_time": (
        lambda f: _corrupt(f, 7, "open_time", int(f["open_time"].iloc[7]) + 60_000),
        r"open_time_offset_ms.*row 9",
    ),
    "wrong close_time": (
        lambda f: _corrupt(f, 5, "close_time", int(f["close_time"].iloc[5]) + 1),
        r"close_time_error_ms.*row 7",
    ),
    "missing column": (lambda f: f.drop(columns=["close"]), r"expect_column_to_exist \[close\]"),
    "null low": (lambda f: _corrupt(f, 4, "low", None), r"not_be_null \[low\] 1 row: .*row 6"),
    "infinite price": (lambda f: _corrupt(f, 2, "high", "inf"), r"row 4 \(unparseable_fields=high"),
    "infinite volume": (
        lambda f: _corrupt(f, 2, "volume", float("inf")),
        r"row 4 \(unparseable_fields=volume",
    ),
    "fractional trades": (lambda f: _corrupt(f, 3, "trades", 1.5), r"row 5 \(unparseable_fields=trades"),
    "negative quote volume": (
        lambda f: _corrupt(f, 1, "quote_volume", -50.0),
        r"be_between \[quote_volume\] 1 row",
    ),
    "candle still forming": (_forming_last_row, r"in_set \[closed\] 1 row: .*row 22"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_batch_is_named_quarantined_and_store_untouched(
    case: str, settings: Settings, btc_raw: pd.DataFrame, write_csv
) -> None:
    store = CandleStore(settings.store_dir)
    ingest(settings, write_csv(btc_raw.iloc[:10], "BTCUSDT-1h-good.csv"))
    before = store.read("BTCUSDT", "1h")
    break_it, expected = CASES[case]
    bad_file = write_csv(break_it(btc_raw.iloc[10:30].reset_index(drop=True)), "BTCUSDT-1h-bad.csv")

    with pytest.raises(BadDataError) as caught:
        ingest(settings, bad_file)

    message = str(caught.value)
    assert "BTCUSDT 1h spot" in message and str(bad_file) in message
    assert re.search(expected, message), message
    pd.testing.assert_frame_equal(store.read("BTCUSDT", "1h"), before)
    folder = caught.value.quarantine
    assert folder is not None and folder.parent == settings.quarantine_dir
    assert len(pd.read_csv(folder / "batch.csv")) == len(pd.read_csv(bad_file))
    report = json.loads((folder / "report.json").read_text())
    assert report["dataset"] == "BTCUSDT 1h spot" and report["failures"]


def _batch(symbol: str, raw: pd.DataFrame):  # type: ignore[no-untyped-def]
    from tasks.batch import CandleBatch

    frame = raw.reset_index(drop=True)
    frame["source_file"], frame["source_row"] = f"{symbol}.csv", range(1, len(frame) + 1)
    return CandleBatch(symbol, "1h", "spot", "test", frame)


def test_batches_validated_together_report_as_each_alone(btc_raw: pd.DataFrame) -> None:
    """The live tick's one-GX-run path: all good → all pass; one bad → named exactly as alone."""
    from tasks.validate import validate_batch, validate_batches

    good = [
        _batch(s, btc_raw.iloc[i * 50 : i * 50 + 30]) for i, s in enumerate(("BTCUSDT", "ETHUSDT", "SOLUSDT"))
    ]
    together = validate_batches([(b, None) for b in good])
    assert all(report.success for _, report in together)
    for (frame, _), batch in zip(together, good, strict=True):  # the frames are what each would store
        alone, _ = validate_batch(batch)
        pd.testing.assert_frame_equal(frame, alone)
    duplicated = _batch("XRPUSDT", pd.concat([btc_raw.iloc[:4], btc_raw.iloc[[3]], btc_raw.iloc[4:30]]))
    mixed = validate_batches([(good[0], None), (duplicated, None), (good[1], None)])
    assert [r.success for _, r in mixed] == [True, False, True]
    assert mixed[1][1].summary() == validate_batch(duplicated)[1].summary()
    assert "expect_column_values_to_be_unique [open_time]" in mixed[1][1].summary()
    missing = _batch("ADAUSDT", btc_raw.iloc[:30].drop(columns=["volume"]))
    schema = validate_batches([(good[0], None), (missing, None)])
    assert [r.success for _, r in schema] == [True, False]
    assert "expect_column_to_exist [volume]" in schema[1][1].summary()
