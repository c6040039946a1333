"""Candle store: idempotent upserts, ranges, many symbols, and crash safety."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from core.candles import to_store_frame
from core.errors import CandleConflictError
from tasks.store import CandleStore

ROOT = Path(__file__).resolve().parents[1]


def test_upsert_is_idempotent_and_does_not_rewrite(tmp_path: Path, btc_raw: pd.DataFrame) -> None:
    store = CandleStore(tmp_path)
    candles = to_store_frame(btc_raw.iloc[:500])
    first = store.upsert("BTCUSDT", "1h", "spot", candles)
    assert (first.rows_added, first.rows_total) == (500, 500)
    mtime = store.path("BTCUSDT", "1h").stat().st_mtime_ns
    again = store.upsert("BTCUSDT", "1h", "spot", candles)
    assert (again.rows_added, again.rows_updated, again.rows_total) == (0, 0, 500)
    assert store.path("BTCUSDT", "1h").stat().st_mtime_ns == mtime


def test_overlapping_upsert_adds_new_and_takes_corrected_values(
    tmp_path: Path, btc_raw: pd.DataFrame
) -> None:
    store = CandleStore(tmp_path)
    store.upsert("BTCUSDT", "1h", "spot", to_store_frame(btc_raw.iloc[:100]))
    before = store.path("BTCUSDT", "1h").read_bytes()
    newer = to_store_frame(btc_raw.iloc[50:150])
    newer.iloc[0, newer.columns.get_loc("volume")] += 1.0
    with pytest.raises(CandleConflictError, match=r"1 stored candle\(s\) would change.*volume [0-9.]+ → "):
        store.upsert("BTCUSDT", "1h", "spot", newer)  # a changed stored candle is refused ...
    assert store.path("BTCUSDT", "1h").read_bytes() == before
    result = store.upsert("BTCUSDT", "1h", "spot", newer, overwrite=True)  # ... unless asked
    assert (result.rows_added, result.rows_updated, result.rows_total) == (50, 1, 150)
    stored = store.read("BTCUSDT", "1h")
    assert stored.index.is_monotonic_increasing and stored.index.is_unique
    assert stored["volume"].iloc[50] == btc_raw["volume"].iloc[50] + 1.0


def test_read_range_and_many_symbols(tmp_path: Path, btc_raw: pd.DataFrame) -> None:
    store = CandleStore(tmp_path)
    for symbol in ("BTCUSDT", "ETHUSDT"):
        store.upsert(symbol, "1h", "spot", to_store_frame(btc_raw.iloc[:200]))
    start, end = pd.Timestamp(int(btc_raw["open_time"].iloc[10]), unit="ms", tz="UTC"), None
    one = store.read("BTCUSDT", "1h", start=start, end=end)
    assert len(one) == 190 and one.index[0] == start
    both = store.read_many(["BTCUSDT", "ETHUSDT"], "1h", start=start)
    assert both.index.names == ["symbol", "open_time"]
    assert both.loc["ETHUSDT"].shape == (190, 10)
    assert store.symbols("1h") == ["BTCUSDT", "ETHUSDT"]
    assert store.read("SOLUSDT", "1h").empty


_CRASHING_WRITER = textwrap.dedent(
    """
    import os, signal, sys
    import pandas as pd
    import pyarrow.parquet as pq
    from core.candles import to_store_frame
    from tasks.store import CandleStore

    raw = pd.read_parquet(sys.argv[2])
    real_write = pq.ParquetWriter.write_table

    def write_one_row_group_then_die(self, table, row_group_size=None):
        real_write(self, table.slice(0, 1000), row_group_size)
        os.kill(os.getpid(), signal.SIGKILL)

    pq.ParquetWriter.write_table = write_one_row_group_then_die
    CandleStore(__import__("pathlib").Path(sys.argv[1])).upsert("BTCUSDT", "1h", "spot", to_store_frame(raw))
    """
)


def test_a_writer_killed_midway_leaves_the_previous_data_intact(
    tmp_path: Path, btc_raw: pd.DataFrame
) -> None:
    store = CandleStore(tmp_path / "store")
    store.upsert("BTCUSDT", "1h", "spot", to_store_frame(btc_raw.iloc[:5000]))
    before = store.read("BTCUSDT", "1h")
    btc_raw.to_parquet(tmp_path / "all.parquet")

    child = subprocess.run(
        [sys.executable, "-c", _CRASHING_WRITER, str(tmp_path / "store"), str(tmp_path / "all.parquet")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr
    leftovers = list(store.path("BTCUSDT", "1h").parent.glob(".BTCUSDT.parquet.*.tmp"))
    assert len(leftovers) == 1 and leftovers[0].stat().st_size > 0  # it died while writing

    pd.testing.assert_frame_equal(store.read("BTCUSDT", "1h"), before)
    result = store.upsert("BTCUSDT", "1h", "spot", to_store_frame(btc_raw))
    assert (result.rows_added, result.rows_total) == (len(btc_raw) - 5000, len(btc_raw))
    assert not list(store.path("BTCUSDT", "1h").parent.glob("*.tmp"))  # the next writer cleans up


def test_optional_values_are_neither_missed_nor_erased(tmp_path: Path, btc_raw: pd.DataFrame) -> None:
    store = CandleStore(tmp_path)
    bare = to_store_frame(btc_raw.iloc[:3])  # public files: no trades, no quote volume
    store.upsert("BTCUSDT", "1h", "spot", bare)
    rich = bare.copy()
    rich["trades"] = pd.array([10, 20, 30], dtype="Int64")
    rich["quote_volume"] = [1.0, 2.0, 3.0]
    assert store.upsert("BTCUSDT", "1h", "spot", rich).rows_updated == 3  # NA → value is a change
    again = store.upsert("BTCUSDT", "1h", "spot", bare)  # re-importing the bare file ...
    assert again.rows_updated == 0
    assert store.read("BTCUSDT", "1h")["trades"].tolist() == [10, 20, 30]  # ... keeps them


def test_cached_reads_are_what_the_file_holds(
    tmp_path: Path, btc_raw: pd.DataFrame, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The in-memory copy equals a cold read, follows a file replaced from outside, and is never shared."""
    import pyarrow.parquet as pq

    from core.errors import DamagedStoreError
    from tasks import store as store_module

    store = CandleStore(tmp_path)
    store.upsert("BTCUSDT", "1h", "spot", to_store_frame(btc_raw.iloc[:300]))
    store.upsert("BTCUSDT", "1h", "spot", to_store_frame(btc_raw.iloc[300:301]))  # appended, cached
    warm = store.read("BTCUSDT", "1h")
    store_module._CACHE.clear()
    pd.testing.assert_frame_equal(warm, store.read("BTCUSDT", "1h"))
    assert store.time_range("BTCUSDT", "1h") == (warm.index[0], warm.index[-1])

    warm["close"] = 0.0  # a caller changing its frame changes nothing stored or cached
    assert (store.read("BTCUSDT", "1h")["close"] > 0).all()

    path = store.path("BTCUSDT", "1h")
    outside = to_store_frame(btc_raw.iloc[:10]).reset_index()
    pq.write_table(pq.read_table(path).slice(0, 0), path)  # emptied in place by another tool
    assert store.read("BTCUSDT", "1h").empty and store.time_range("BTCUSDT", "1h") is None
    store_module.write_parquet_atomic(outside, path)  # another process replaced it
    assert len(store.read("BTCUSDT", "1h")) == 10
    path.write_bytes(b"not parquet")
    with pytest.raises(DamagedStoreError, match=r"BTCUSDT\.parquet"):
        store.read("BTCUSDT", "1h")

    monkeypatch.setattr(store_module, "CACHED_FILE_BYTES", 0)  # large files: read the rows asked for
    store_module.write_parquet_atomic(to_store_frame(btc_raw.iloc[:300]).reset_index(), path)
    start, end = warm.index[10], warm.index[19]
    assert store.read("BTCUSDT", "1h", start=start, end=end).index.tolist() == warm.index[10:20].tolist()
