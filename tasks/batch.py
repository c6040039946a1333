"""A batch of candles on its way into the store: raw values plus where each row came from."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from core.candles import KLINE_COLUMNS

#: Columns carried beside the kline columns so every error can name its origin.
ORIGIN_COLUMNS = ("source_file", "source_row")
#: Epoch values at or above this are microseconds (Binance spot dumps since 2025), not ms.
_MICROSECONDS_FROM = 10**14


@dataclass
class CandleBatch:
    """Raw candles for one (market, symbol, interval) from one source.

    Attributes:
        symbol: e.g. ``BTCUSDT``.
        interval: e.g. ``1h``.
        market: ``spot`` or ``futures``.
        source: what produced it, for messages (``files``, ``binance spot``, ``sample``).
        raw: the values as read, one row per candle, with :data:`ORIGIN_COLUMNS`.
    """

    symbol: str
    interval: str
    market: str
    source: str
    raw: pd.DataFrame

    @property
    def label(self) -> str:
        """``BTCUSDT 1h spot`` — how messages name the dataset."""
        return f"{self.symbol} {self.interval} {self.market}"


def coerce_numeric(raw: pd.DataFrame) -> tuple[pd.DataFrame, pd.Series]:
    """Turn raw kline values into numbers and normalise epoch units to milliseconds.

    Returns:
        ``(frame, unparseable)``: the numeric frame (same index, origin columns kept) and,
        per row, the comma-separated names of fields whose value is not a finite number
        (text, ``inf``) or, for ``trades``, not a whole number (empty string when none) —
        so nothing is silently turned into a null.
    """
    frame = raw.copy()
    bad_fields = pd.Series("", index=raw.index, dtype=object)
    for col in KLINE_COLUMNS:
        if col not in raw:
            continue
        values = raw[col]
        if pd.api.types.is_numeric_dtype(values):  # parsed as numbers already: no text lost
            numeric = values.astype(np.float64)
            bad = numeric.isin([np.inf, -np.inf])
        else:
            numeric = pd.to_numeric(values, errors="coerce").astype(np.float64)
            text = values.notna() & numeric.isna() & (values.astype(str).str.strip() != "")
            bad = text | numeric.isin([np.inf, -np.inf])
        if col == "trades":
            bad |= numeric.notna() & (numeric != np.floor(numeric))
        if bad.any():
            bad_fields[bad] = bad_fields[bad] + np.where(bad_fields[bad] == "", "", ",") + col
        numeric = numeric.where(~bad)
        if col in ("open_time", "close_time"):
            numeric = numeric.where(numeric < _MICROSECONDS_FROM, numeric // 1000)
        frame[col] = numeric
    return frame, bad_fields
