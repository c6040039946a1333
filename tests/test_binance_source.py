"""The real python-binance Client against the local fake exchange over HTTP on 127.0.0.1."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pandas as pd
import pytest

from core.errors import BadConfigError, BadDataError, RetryableError
from core.settings import Settings
from infra.exchange import FakeExchange, Fault
from tasks.ingest import ingest_binance
from tasks.ingest.binance import BinanceKlineSource, _is_closed
from tasks.store import CandleStore

HOUR = 3_600_000
N_CANDLES = 3500


@pytest.fixture
def exchange(btc_raw: pd.DataFrame) -> Iterator[FakeExchange]:
    candles = btc_raw.iloc[:N_CANDLES]
    ex = FakeExchange(now_ms=int(candles["open_time"].iloc[3000]) + HOUR // 2)  # candle 3000 forming
    ex.add_candles("BTCUSDT", "1h", candles)
    ex.add_candles("BTCUSDT", "1h", candles, market="futures")
    with ex:
        yield ex


class Sleeps(list[float]):
    """Records waits and really waits (short ones only), so Retry-After is honoured for real."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)
        if seconds <= 5:
            time.sleep(seconds)


def source(
    settings: Settings, exchange: FakeExchange, market: str = "spot", sleeps: Sleeps | None = None
) -> BinanceKlineSource:
    settings.binance_spot_url = exchange.spot_url
    settings.binance_futures_url = exchange.futures_url
    return BinanceKlineSource(settings, market, sleep=sleeps if sleeps is not None else Sleeps())


def hours_ago(exchange: FakeExchange, hours: int) -> int:
    """Open time of the candle ``hours`` before the forming one."""
    now = exchange.clock()
    return now - now % HOUR - hours * HOUR


def kline_requests(exchange: FakeExchange) -> list[dict[str, str]]:
    return [params for path, params in exchange.requests if path.endswith("/klines")]


def test_backfill_3000_candles_pages_and_stores_closed_candles_only(
    settings: Settings, exchange: FakeExchange, btc_raw: pd.DataFrame
) -> None:
    start = pd.Timestamp(int(btc_raw["open_time"].iloc[0]), unit="ms", tz="UTC")
    report = ingest_binance("BTCUSDT", "1h", "spot", start, None, settings, source(settings, exchange))
    assert report.rows_added == 3000  # candle 3000 is still forming: not stored
    assert [int(p["limit"]) for p in kline_requests(exchange)] == [1000, 1000, 1000]
    stored = CandleStore(settings.store_dir).read("BTCUSDT", "1h")
    assert stored["close"].to_numpy().tolist() == btc_raw["close"].iloc[:3000].tolist()
    # the exchange does serve the forming candle to whoever asks for it
    forming = source(settings, exchange).client.get_klines(symbol="BTCUSDT", interval="1h", limit=1)
    assert int(forming[0][6]) > exchange.clock()


def test_incremental_update_fetches_only_new_closed_candles(
    settings: Settings, exchange: FakeExchange, btc_raw: pd.DataFrame
) -> None:
    start = pd.Timestamp(int(btc_raw["open_time"].iloc[2900]), unit="ms", tz="UTC")
    ingest_binance("BTCUSDT", "1h", "spot", start, None, settings, source(settings, exchange))
    assert exchange.now_ms is not None
    exchange.now_ms += 50 * HOUR
    exchange.requests.clear()
    report = ingest_binance("BTCUSDT", "1h", "spot", None, None, settings, source(settings, exchange))
    assert report.rows_added == 50
    assert report.rows_total == 150
    assert int(kline_requests(exchange)[0]["startTime"]) == int(btc_raw["open_time"].iloc[3000])
    again = ingest_binance("BTCUSDT", "1h", "spot", None, None, settings, source(settings, exchange))
    assert again.rows_added == 0


@pytest.mark.parametrize("kind", ["429", "418"])
def test_rate_limit_answers_wait_for_retry_after_then_succeed(
    settings: Settings, exchange: FakeExchange, kind: str
) -> None:
    exchange.inject(Fault(kind, retry_after=1))
    sleeps = Sleeps()
    began = time.monotonic()
    batch = source(settings, exchange, sleeps=sleeps).klines("BTCUSDT", "1h", hours_ago(exchange, 100))
    assert sleeps[0] == 1.0
    assert time.monotonic() - began >= 1.0
    assert len(batch.raw) == 100


@pytest.mark.parametrize("kind", ["500", "timeout", "invalid_json"])
def test_transient_failures_are_retried_with_backoff(
    settings: Settings, exchange: FakeExchange, kind: str
) -> None:
    settings.http_timeout_s = 0.3
    exchange.inject(Fault(kind, delay_s=1.0))
    sleeps = Sleeps()
    batch = source(settings, exchange, sleeps=sleeps).klines("BTCUSDT", "1h", hours_ago(exchange, 10))
    assert len(batch.raw) == 10
    assert sleeps == [settings.http_backoff_s]


def test_persistent_failure_gives_up_with_a_clear_error(settings: Settings, exchange: FakeExchange) -> None:
    settings.http_max_retries = 2
    exchange.inject(Fault("500", times=10))
    sleeps = Sleeps()
    with pytest.raises(RetryableError, match=r"BTCUSDT 1h klines from \d+: gave up after 3 tries: HTTP 500"):
        source(settings, exchange, sleeps=sleeps).klines("BTCUSDT", "1h", hours_ago(exchange, 10))
    assert sleeps == [0.05, 0.1]


def test_malformed_rows_are_quarantined_and_nothing_is_stored(
    settings: Settings, exchange: FakeExchange
) -> None:
    exchange.inject(Fault("malformed"))
    start = pd.Timestamp(hours_ago(exchange, 20), unit="ms", tz="UTC")
    with pytest.raises(BadDataError, match=r"binance spot BTCUSDT 1h row 2") as caught:
        ingest_binance("BTCUSDT", "1h", "spot", start, None, settings, source(settings, exchange))
    assert "unparseable_fields" in str(caught.value)
    assert caught.value.quarantine is not None
    assert (caught.value.quarantine / "report.md").exists()
    assert not CandleStore(settings.store_dir).path("BTCUSDT", "1h").exists()


def test_unknown_symbol_needs_an_operator(settings: Settings, exchange: FakeExchange) -> None:
    with pytest.raises(BadConfigError, match="Invalid symbol"):
        source(settings, exchange).klines("NOPEUSDT", "1h", 0)


def test_used_weight_near_the_limit_pauses_until_the_next_minute(
    settings: Settings, exchange: FakeExchange
) -> None:
    exchange.used_weight_override = 5500  # of 6000
    waits: list[float] = []
    src = BinanceKlineSource(
        settings.model_copy(update={"binance_spot_url": exchange.spot_url}), "spot", sleep=waits.append
    )
    src.server_time_ms()
    assert len(waits) == 1 and 0 < waits[0] <= 60.5


def test_futures_klines_come_from_the_fapi(settings: Settings, exchange: FakeExchange) -> None:
    batch = source(settings, exchange, market="futures").klines("BTCUSDT", "1h", hours_ago(exchange, 5))
    assert len(batch.raw) == 5
    assert all(path.startswith("/fapi/v1/") for path, _ in exchange.requests)


def test_universe_is_top_n_by_quote_volume_above_minimum(
    settings: Settings, exchange: FakeExchange, btc_raw: pd.DataFrame
) -> None:
    for symbol, scale in (("ETHUSDT", 0.5), ("DUSTUSDT", 1e-9)):
        frame = btc_raw.iloc[:N_CANDLES].copy()
        frame["volume"] *= scale
        exchange.add_candles(symbol, "1h", frame)
    src = source(settings, exchange)
    assert src.top_symbols(2, 500_000, "USDT") == ["BTCUSDT", "ETHUSDT"]
    assert src.top_symbols(5, 500_000, "USDT") == ["BTCUSDT", "ETHUSDT"]  # DUST is below the minimum


def test_closed_means_close_time_before_the_exchange_clock() -> None:
    frame = pd.DataFrame({"close_time": ["1999", 2999, None]})
    assert _is_closed(frame, 2000).tolist() == [True, False, True]  # unparseable kept for validation


def test_an_earlier_start_backfills_before_the_oldest_stored_candle(
    settings: Settings, exchange: FakeExchange, btc_raw: pd.DataFrame
) -> None:
    def at(i: int) -> pd.Timestamp:
        return pd.Timestamp(int(btc_raw["open_time"].iloc[i]), unit="ms", tz="UTC")

    ingest_binance("BTCUSDT", "1h", "spot", at(2900), None, settings, source(settings, exchange))
    exchange.requests.clear()
    report = ingest_binance("BTCUSDT", "1h", "spot", at(2800), None, settings, source(settings, exchange))
    assert (report.rows_added, report.rows_total) == (100, 200)
    assert [int(p["endTime"]) for p in kline_requests(exchange)] == [int(btc_raw["open_time"].iloc[2899])]


def test_backfill_respects_end(settings: Settings, exchange: FakeExchange, btc_raw: pd.DataFrame) -> None:
    def at(i: int) -> pd.Timestamp:
        return pd.Timestamp(int(btc_raw["open_time"].iloc[i]), unit="ms", tz="UTC")

    ingest_binance("BTCUSDT", "1h", "spot", at(2900), None, settings, source(settings, exchange))
    report = ingest_binance("BTCUSDT", "1h", "spot", at(2700), at(2749), settings, source(settings, exchange))
    assert (report.rows_added, report.rows_total) == (50, 150)


def test_a_wait_longer_than_allowed_stops_instead_of_retrying_early(
    settings: Settings, exchange: FakeExchange
) -> None:
    settings.http_max_wait_s = 5
    exchange.inject(Fault("418", retry_after=600))
    sleeps = Sleeps()
    with pytest.raises(RetryableError, match="asks us to wait 600s") as caught:
        source(settings, exchange, sleeps=sleeps).klines("BTCUSDT", "1h", hours_ago(exchange, 5))
    assert caught.value.retry_after == 600 and sleeps == []
    assert len(kline_requests(exchange)) == 1  # no second request during the ban


def test_last_prices_of_many_symbols_come_in_one_request(exchange: FakeExchange) -> None:
    """The live tick asks the venue for every symbol's price at once (Binance's ticker without a symbol)."""
    from serving.replay import VenuePrices

    for market in ("spot", "futures"):
        prices = VenuePrices(exchange.client(), market)
        before = len(exchange.requests)
        both = prices.many(["BTCUSDT", "ETHUSDT"])
        (path, params), *_ = exchange.requests[before:]
        assert (
            len(exchange.requests) == before + 1 and path.endswith("ticker/price") and "symbol" not in params
        )
        assert both == {"BTCUSDT": prices("BTCUSDT")}  # ETH is not listed
