import pandas as pd
import pytest

from core.candles import count_gaps, from_store_frame, interval_ms, to_store_frame
from core.errors import BadConfigError
from core.timeutil import parse_utc


def test_interval_lengths() -> None:
    assert interval_ms("1h") == 3_600_000
    assert interval_ms("5m") == 300_000
    with pytest.raises(BadConfigError, match="unknown interval '7h'"):
        interval_ms("7h")
    with pytest.raises(BadConfigError, match="'1w' is calendar-aligned"):
        interval_ms("1w")


def test_gaps_count_events_and_missing_candles() -> None:
    hour = 3_600_000
    times = pd.to_datetime([0, hour, 4 * hour, 5 * hour, 7 * hour], unit="ms", utc=True)
    assert count_gaps(times, hour) == (2, 3)
    assert count_gaps(times[:2], hour) == (0, 0)


def test_store_frame_round_trip_keeps_values_and_nulls(btc_raw: pd.DataFrame) -> None:
    stored = to_store_frame(btc_raw.head(50))
    assert str(stored.index.dtype) == "datetime64[ms, UTC]"
    assert stored["quote_volume"].isna().all()  # the public files carry no quote volume
    back = from_store_frame(stored)
    pd.testing.assert_series_equal(back["open_time"], btc_raw["open_time"].head(50), check_names=False)
    pd.testing.assert_series_equal(back["close"], btc_raw["close"].head(50), check_names=False)


def test_parse_utc_names_the_option() -> None:
    assert parse_utc("2024-01-01", "--start") == pd.Timestamp("2024-01-01", tz="UTC")
    with pytest.raises(BadConfigError, match="--end"):
        parse_utc("yesterday-ish", "--end")
