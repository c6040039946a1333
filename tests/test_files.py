"""Binance data-dump files: names, headers, µs times, ZIPs, overlapping files."""

import zipfile
from pathlib import Path

import pandas as pd
import pytest

from core.errors import BadConfigError
from tasks.ingest.files import combine_files, expand_paths, group_files, name_of, read_candle_file


def test_names_give_symbol_and_interval() -> None:
    assert name_of(Path("BTCUSDT-1h.csv")) == ("BTCUSDT", "1h")
    assert name_of(Path("ETHUSDT-5m-2024-01.zip")) == ("ETHUSDT", "5m")
    assert name_of(Path("ETHUSDT-5m-2024-01-05.csv")) == ("ETHUSDT", "5m")
    assert name_of(Path("prices.csv")) is None


def test_headerless_microsecond_zip_reads_like_the_shared_layout(
    btc_raw: pd.DataFrame, tmp_path: Path
) -> None:
    rows = btc_raw.head(30).copy()
    rows["open_time"] = rows["open_time"] * 1000  # newer spot dumps use µs
    rows["close_time"] = rows["close_time"] * 1000 + 999
    rows["ignore"] = 0
    csv_text = rows.to_csv(index=False, header=False)
    path = tmp_path / "BTCUSDT-1h-2025-01.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("BTCUSDT-1h-2025-01.csv", csv_text)
    raw = read_candle_file(path)
    assert raw["source_row"].tolist()[:2] == [1, 2]  # no header: data starts on line 1
    assert raw["open_time"].iloc[0] == btc_raw["open_time"].iloc[0] * 1000  # normalised later


def test_header_aliases_of_binance_dumps(btc_raw: pd.DataFrame, write_csv) -> None:
    frame = btc_raw.head(5).rename(columns={"trades": "count", "taker_buy_base": "taker_buy_volume"})
    raw = read_candle_file(write_csv(frame))
    assert {"trades", "taker_buy_base"} <= set(raw.columns)
    assert raw["source_row"].tolist() == [2, 3, 4, 5, 6]  # the header is line 1


def test_overlapping_files_keep_shared_rows_once(btc_raw: pd.DataFrame, write_csv) -> None:
    first = read_candle_file(write_csv(btc_raw.iloc[0:100], "BTCUSDT-1h-a.csv"))
    second = read_candle_file(write_csv(btc_raw.iloc[50:150], "BTCUSDT-1h-b.csv"))
    combined = combine_files([second, first])  # any order
    assert len(combined) == 150
    assert combined["open_time"].is_monotonic_increasing


def test_duplicate_inside_one_file_is_left_for_validation(btc_raw: pd.DataFrame, write_csv) -> None:
    doubled = pd.concat([btc_raw.iloc[0:10], btc_raw.iloc[[5]]]).sort_values("open_time")
    combined = combine_files([read_candle_file(write_csv(doubled))])
    assert combined["open_time"].duplicated().sum() == 1


def test_paths_globs_and_folders(btc_raw: pd.DataFrame, write_csv, tmp_path: Path) -> None:
    a = write_csv(btc_raw.head(3), "BTCUSDT-1h.csv")
    b = write_csv(btc_raw.head(3), "ETHUSDT-1h.csv")
    assert expand_paths([str(a.parent)]) == [a, b]
    assert expand_paths([str(a.parent / "ETH*.csv")]) == [b]
    with pytest.raises(BadConfigError, match="no such file"):
        expand_paths([str(tmp_path / "missing.csv")])
    with pytest.raises(BadConfigError, match="matches no file"):
        expand_paths([str(tmp_path / "*.parquet")])


def test_grouping_by_dataset_and_unnamed_files(btc_raw: pd.DataFrame, write_csv) -> None:
    a = write_csv(btc_raw.head(3), "BTCUSDT-1h-2024-01.csv")
    b = write_csv(btc_raw.head(3), "BTCUSDT-1h-2024-02.csv")
    unnamed = write_csv(btc_raw.head(3), "prices.csv")
    assert group_files([a, b], None, None) == {("BTCUSDT", "1h"): [a, b]}
    assert group_files([unnamed], ["SOLUSDT"], "1h") == {("SOLUSDT", "1h"): [unnamed]}
    with pytest.raises(BadConfigError, match=r"prices\.csv: cannot tell symbol"):
        group_files([unnamed], None, None)
