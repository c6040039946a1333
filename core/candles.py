"""The candle (kline) schema shared by every source, the store and the features."""

from __future__ import annotations

import re
from typing import Final

import numpy as np
import pandas as pd

from core.errors import BadConfigError

#: Binance kline columns, in the order of Binance's REST API and data-dump files.
KLINE_COLUMNS: Final = (
    "open_time",
    "open",
    "high",
    "low",
    "close",
    "volume",
    "close_time",
    "quote_volume",
    "trades",
    "taker_buy_base",
    "taker_buy_quote",
)
PRICE_COLUMNS: Final = ("open", "high", "low", "close")
#: Columns that must be present and non-null in every candle.
REQUIRED_COLUMNS: Final = ("open_time", "open", "high", "low", "close", "volume", "close_time")
#: Columns a source may leave empty (some public files do not carry them).
OPTIONAL_COLUMNS: Final = ("quote_volume", "trades", "taker_buy_base", "taker_buy_quote")
FLOAT_COLUMNS: Final = (
    "open",
    "high",
    "low",
    "close",
    "volume",
    "quote_volume",
    "taker_buy_base",
    "taker_buy_quote",
)
MARKETS: Final = ("spot", "futures")

_INTERVAL_RE = re.compile(r"^(\d+)([smhdwM])$")
_UNIT_MS: Final = {
    "s": 1_000,
    "m": 60_000,
    "h": 3_600_000,
    "d": 86_400_000,
    "w": 604_800_000,
    "M": 2_592_000_000,  # nominal 30 days; calendar intervals are rejected below
}
#: Binance's kline intervals.
BINANCE_INTERVALS: Final = (
    "1s", "1m", "3m", "5m", "15m", "30m", "1h", "2h", "4h", "6h", "8h", "12h", "1d", "3d", "1w", "1M",
)  # fmt: skip
#: Binance intervals whose candles do not sit on multiples of a fixed length since the epoch.
CALENDAR_INTERVALS: Final = ("3d", "1w", "1M")
SUPPORTED_INTERVALS: Final = tuple(i for i in BINANCE_INTERVALS if i not in CALENDAR_INTERVALS)
_SYMBOL_RE = re.compile(r"^[A-Z0-9]{2,30}$")


def interval_ms(interval: str) -> int:
    """Length of a Binance interval such as ``"1h"`` or ``"5m"`` in milliseconds.

    Raises:
        BadConfigError: the interval is not one Binance serves.
    """
    match = _INTERVAL_RE.match(interval)
    if match is None or interval not in BINANCE_INTERVALS:
        raise BadConfigError(f"unknown interval {interval!r}; known: {', '.join(BINANCE_INTERVALS)}")
    if interval in CALENDAR_INTERVALS:
        raise BadConfigError(
            f"interval {interval!r} is calendar-aligned (weeks start on Monday, months vary in "
            f"length) and not supported; use one of {', '.join(SUPPORTED_INTERVALS)}"
        )
    return int(match.group(1)) * _UNIT_MS[match.group(2)]


def check_symbol(symbol: str) -> str:
    """Return ``symbol`` upper-cased, or raise naming it when it cannot be a Binance symbol."""
    sym = symbol.strip().upper()
    if not _SYMBOL_RE.match(sym):
        raise BadConfigError(f"invalid symbol {symbol!r}: expected letters/digits like BTCUSDT")
    return sym


def check_market(market: str) -> str:
    """Return ``market`` if it is ``spot`` or ``futures`` (USD-M), else raise."""
    if market not in MARKETS:
        raise BadConfigError(f"unknown market {market!r}; known: {', '.join(MARKETS)}")
    return market


def empty_candles() -> pd.DataFrame:
    """An empty candle frame with the store's dtypes, indexed by ``open_time``."""
    frame = pd.DataFrame({col: pd.Series(dtype=np.float64) for col in FLOAT_COLUMNS})
    frame["trades"] = pd.Series(dtype="Int64")
    frame["close_time"] = pd.Series(dtype="datetime64[ms, UTC]")
    frame.index = pd.DatetimeIndex([], dtype="datetime64[ms, UTC]", name="open_time")
    return frame[list(KLINE_COLUMNS[1:])]


def to_store_frame(raw: pd.DataFrame) -> pd.DataFrame:
    """Convert a validated batch with integer-millisecond times to the store's layout.

    The result is indexed by a UTC ``open_time`` (ms precision) and has the kline columns
    with their store dtypes; columns a source lacks are null.
    """
    index = pd.DatetimeIndex(pd.to_datetime(raw["open_time"].to_numpy(), unit="ms", utc=True))
    columns: dict[str, object] = {}
    for col in FLOAT_COLUMNS:
        if col not in raw:
            columns[col] = np.full(len(raw), np.nan)
        elif raw[col].dtype == np.float64:  # validated frames are numeric already
            columns[col] = raw[col].to_numpy()
        else:
            columns[col] = pd.to_numeric(raw[col], errors="coerce").to_numpy(dtype=np.float64)
    trades = raw["trades"] if "trades" in raw else pd.Series(pd.NA, index=raw.index)
    columns["trades"] = pd.to_numeric(trades, errors="coerce").astype("Int64").array
    columns["close_time"] = pd.to_datetime(raw["close_time"].to_numpy(), unit="ms", utc=True).as_unit("ms")
    out = pd.DataFrame(columns, index=index.as_unit("ms").rename("open_time"))
    return out[list(KLINE_COLUMNS[1:])]


def count_gaps(open_times: pd.Index | pd.Series, step_ms: int) -> tuple[int, int]:
    """Count gap events and missing candles in sorted open times.

    Returns:
        ``(gap_events, missing_candles)``: how many times the series jumps by more than one
        interval, and how many candles those jumps skip in total.
    """
    ms = np.asarray(pd.DatetimeIndex(open_times).as_unit("ms").asi8, dtype=np.int64)
    if ms.size < 2:
        return 0, 0
    steps = np.diff(ms)
    jumps = steps[steps > step_ms]
    return int(jumps.size), int((jumps // step_ms - 1).sum())


def from_store_frame(stored: pd.DataFrame) -> pd.DataFrame:
    """Inverse of :func:`to_store_frame`: integer-millisecond times, ``open_time`` a column."""
    raw = stored.reset_index()
    for col in ("open_time", "close_time"):
        raw[col] = pd.DatetimeIndex(raw[col]).as_unit("ms").asi8
    return raw
