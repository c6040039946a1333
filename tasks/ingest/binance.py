"""Klines from Binance through the python-binance ``Client`` (spot and USD-M futures).

We page ``get_klines`` / ``futures_klines`` ourselves instead of calling
``get_historical_klines``: that helper restarts from the beginning on any error, while
here each 1000-candle page is retried on its own (HTTP 429/418 honouring ``Retry-After``,
5xx, timeouts, with exponential backoff), used request weight is honoured, progress is
reported per page, and only closed candles (``close_time`` before the exchange's clock)
are kept.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar

import pandas as pd
import requests

from core.candles import KLINE_COLUMNS, check_market, interval_ms
from core.errors import BadConfigError, RetryableError
from core.settings import Settings
from tasks.batch import CandleBatch

log = logging.getLogger(__name__)
T = TypeVar("T")
ProgressFn = Callable[[int, int], None]
_RETRYABLE_STATUS = {408, 418, 429}


def make_client(settings: Settings) -> Any:
    """A python-binance ``Client`` pointed at Binance, its testnet, or ``QT_BINANCE_*_URL``.

    Creating it makes no network call (``ping=False``). Keys are optional: klines are public.
    """
    from binance.client import Client

    key = settings.binance_api_key.get_secret_value() if settings.binance_api_key else None
    secret = settings.binance_api_secret.get_secret_value() if settings.binance_api_secret else None
    client = Client(
        api_key=key,
        api_secret=secret,
        testnet=settings.binance_testnet,
        ping=False,
        requests_params={"timeout": settings.http_timeout_s},
    )
    if settings.binance_spot_url:
        client.API_URL = client.API_TESTNET_URL = settings.binance_spot_url.rstrip("/")
    if settings.binance_futures_url:
        client.FUTURES_URL = client.FUTURES_TESTNET_URL = settings.binance_futures_url.rstrip("/")
    return client


class BinanceKlineSource:
    """Fetches closed klines and the liquid universe for one market.

    Args:
        settings: retry, timeout and weight settings.
        market: ``spot`` or ``futures`` (USD-M).
        client: a python-binance ``Client``; made from ``settings`` when omitted.
        sleep: how to wait (tests may pass a recorder; the default really sleeps).
    """

    def __init__(
        self,
        settings: Settings,
        market: str = "spot",
        client: Any | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.settings = settings
        self.market = check_market(market)
        self.client = client if client is not None else make_client(settings)
        self.sleep = sleep
        self.weight_limit = settings.spot_weight_limit if market == "spot" else settings.futures_weight_limit

    def server_time_ms(self) -> int:
        """The exchange's clock, which decides whether a candle has closed."""
        call = self.client.get_server_time if self.market == "spot" else self.client.futures_time
        return int(self.call(call, "server time")["serverTime"])

    def klines(
        self,
        symbol: str,
        interval: str,
        start_ms: int,
        end_ms: int | None = None,
        progress: ProgressFn | None = None,
        server_now_ms: int | None = None,
    ) -> CandleBatch:
        """Closed candles with ``start_ms <= open_time <= end_ms`` as a raw batch.

        Rows keep Binance's values as returned (strings for prices); ``source_row`` is the
        candle's position in the download, so a malformed row can be named. A candle has
        closed when the venue's clock (``server_now_ms``, else asked now) is past it; the
        live tick reads the clock once for all its symbols.
        """
        step = interval_ms(interval)
        server_now = self.server_time_ms() if server_now_ms is None else server_now_ms
        last_closed_open = (server_now // step) * step - step
        end = last_closed_open if end_ms is None else min(end_ms, last_closed_open)
        fetch = self.client.get_klines if self.market == "spot" else self.client.futures_klines
        rows: list[list[Any]] = []
        cursor, total = start_ms, max(0, (end - start_ms) // step + 1)
        while cursor <= end:
            request = partial(
                fetch,
                symbol=symbol,
                interval=interval,
                startTime=cursor,
                endTime=end,
                limit=self.settings.kline_page_limit,
            )
            page = self.call(request, f"{symbol} {interval} klines from {cursor}")
            if not page:
                break
            rows.extend(page)
            cursor = _next_cursor(page, cursor, step)
            if progress is not None:
                progress(min(len(rows), total), total)
            if len(page) < self.settings.kline_page_limit:
                break
        frame = _rows_to_frame(rows, f"binance {self.market} {symbol} {interval}")
        closed = _is_closed(frame, server_now)
        dropped = int((~closed).sum())
        if dropped:
            log.info("%s %s: left out %d candle(s) still forming", symbol, interval, dropped)
        return CandleBatch(symbol, interval, self.market, f"binance {self.market}", frame[closed])

    def top_symbols(self, n: int, min_quote_volume: float, quote_asset: str) -> list[str]:
        """The ``n`` symbols quoted in ``quote_asset`` with the largest 24h quote volume.

        Only pairs at or above ``min_quote_volume`` and (spot) in ``TRADING`` status count.
        """
        if n < 1:
            raise BadConfigError(f"--top must be at least 1, got {n}")
        if self.market == "spot":
            tickers = self.call(self.client.get_ticker, "24h tickers")
            info = self.call(self.client.get_exchange_info, "exchange info")
        else:
            tickers = self.call(self.client.futures_ticker, "24h tickers")
            info = self.call(self.client.futures_exchange_info, "exchange info")
        trading = {
            s["symbol"]
            for s in info.get("symbols", [])
            if s.get("status") == "TRADING" and s.get("quoteAsset") == quote_asset
        }
        liquid = [
            (float(t["quoteVolume"]), t["symbol"])
            for t in tickers
            if t["symbol"] in trading and float(t.get("quoteVolume", 0)) >= min_quote_volume
        ]
        return [sym for _, sym in sorted(liquid, reverse=True)[:n]]

    def call(self, fn: Callable[[], T], what: str) -> T:
        """Call the exchange, retrying transient failures with backoff, then honour weight.

        Raises:
            RetryableError: still failing after ``http_max_retries`` retries.
            BadConfigError: the exchange rejected the request itself (e.g. unknown symbol).
        """
        attempt = 0
        while True:
            try:
                result = fn()
            except Exception as err:  # classified below; anything unknown is re-raised
                transient = _classify(err, what)
                asked = transient.retry_after
                if asked is not None and asked > self.settings.http_max_wait_s:
                    # retrying before the exchange's wait is over only lengthens a ban
                    raise RetryableError(
                        f"{what}: the exchange asks us to wait {asked:.0f}s, longer than "
                        f"QT_HTTP_MAX_WAIT_S={self.settings.http_max_wait_s:.0f}s; try again later",
                        asked,
                    ) from err
                if attempt >= self.settings.http_max_retries:
                    raise RetryableError(
                        f"{what}: gave up after {attempt + 1} tries: {transient}",
                        transient.retry_after,
                    ) from err
                backoff = min(self.settings.http_backoff_s * 2**attempt, self.settings.http_max_wait_s)
                wait = asked if asked is not None else backoff
                log.warning("%s: %s; retrying in %.1fs (try %d)", what, transient, wait, attempt + 2)
                self.sleep(wait)
                attempt += 1
                continue
            self._honour_weight()
            return result

    def _honour_weight(self) -> None:
        response = getattr(self.client, "response", None)
        used = response.headers.get("x-mbx-used-weight-1m") if response is not None else None
        if used is None or int(used) < self.weight_limit * self.settings.weight_pause_fraction:
            return
        wait = 60.0 - (time.time() % 60.0) + 0.5
        log.warning("used request weight %s of %d: pausing %.1fs", used, self.weight_limit, wait)
        self.sleep(wait)


def _classify(err: Exception, what: str) -> RetryableError:
    """Turn a client error into a RetryableError, or re-raise it when it is not transient."""
    from binance.exceptions import BinanceAPIException, BinanceRequestException

    if isinstance(err, BinanceAPIException):
        status = int(err.status_code)
        if status in _RETRYABLE_STATUS or status >= 500:
            header = err.response.headers.get("Retry-After") if err.response is not None else None
            retry_after = float(header) if header else None
            return RetryableError(f"HTTP {status} {err.message}", retry_after)
        raise BadConfigError(f"{what}: Binance rejected the request: HTTP {status} {err.message}") from err
    if isinstance(err, (requests.Timeout, requests.ConnectionError)):
        return RetryableError(f"{type(err).__name__}: {err}")
    if isinstance(err, BinanceRequestException):
        return RetryableError(f"unreadable response: {err.message[:200]}")
    raise err


def _next_cursor(page: list[list[Any]], cursor: int, step: int) -> int:
    """Open time after the last candle of a page (never moving backwards)."""
    try:
        last = int(page[-1][0])
    except (TypeError, ValueError, IndexError):
        return cursor + step * len(page)
    return max(last + step, cursor + step)


def _rows_to_frame(rows: list[list[Any]], source: str) -> pd.DataFrame:
    """Raw kline rows (lists of 12 fields) as a frame; short rows leave nulls to be caught."""
    width = len(KLINE_COLUMNS)
    padded = [(list(r) + [None] * width)[:width] if isinstance(r, list) else [None] * width for r in rows]
    frame = pd.DataFrame(padded, columns=list(KLINE_COLUMNS))
    frame["source_file"] = source
    frame["source_row"] = range(1, len(frame) + 1)
    return frame


def _is_closed(frame: pd.DataFrame, server_now_ms: int) -> pd.Series:
    """True for candles whose close time has passed (unparseable ones kept for validation)."""
    close = pd.to_numeric(frame["close_time"], errors="coerce")
    close = close.where(close < 10**14, close // 1000)
    return close.isna() | (close < server_now_ms)
