"""What the ranking and the risk engine know of the market and of each symbol's record (numba).

* the **window**: the last ``W`` bars' log returns and quote volumes per symbol,
  chronological, NaN where a symbol had no bar (``[W, N]``, symbols sorted by name). The
  backtest's loop shifts it on at every close; the live flow builds it from the stored
  candles with :func:`window_returns`, so both see the same numbers in the same order;
* **correlation** of two symbols' returns over the rows where both traded (unknown below
  3 rows or without variance: callers treat unknown as 1, the cautious guess);
* **liquidity**: a symbol's mean quote volume over the window relative to the universe's
  median (capped at 1 as a ranking weight: liquid symbols are not preferred beyond "liquid
  enough", illiquid ones are pushed back);
* the **track record**: an exponential average of the symbol's closed trades' R multiples.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from numba import njit


@dataclass(frozen=True)
class MarketWindow:
    """Recent closes and quote volumes per symbol on one time grid (index: open time; columns: symbols)."""

    closes: pd.DataFrame
    volumes: pd.DataFrame

    @classmethod
    def empty(cls) -> MarketWindow:
        """No history: every correlation unknown, every liquidity unknown."""
        return cls(pd.DataFrame(), pd.DataFrame())

    @classmethod
    def of(cls, candles: Mapping[str, pd.DataFrame], until: pd.Timestamp | None = None) -> MarketWindow:
        """From candles per symbol (indexed by open time; ``close``, ``quote_volume``) up to ``until``."""
        closes = pd.DataFrame({s: c["close"] for s, c in candles.items()}).sort_index()
        volumes = pd.DataFrame({s: c.get("quote_volume", np.nan) for s, c in candles.items()}).reindex(
            closes.index
        )
        if until is not None:
            closes, volumes = closes[closes.index <= until], volumes[volumes.index <= until]
        return cls(closes.astype(np.float64), volumes.astype(np.float64))

    @classmethod
    def of_rows(cls, rows: pd.DataFrame) -> MarketWindow:
        """From long rows (``symbol``, ``open_time``, ``close``, optional ``quote_volume``)."""
        closes = rows.pivot_table(index="open_time", columns="symbol", values="close", aggfunc="last")
        if "quote_volume" in rows:
            volumes = rows.pivot_table(
                index="open_time", columns="symbol", values="quote_volume", aggfunc="last"
            )
        else:
            volumes = pd.DataFrame(np.nan, index=closes.index, columns=closes.columns)
        return cls(closes.astype(np.float64), volumes.reindex(closes.index).astype(np.float64))

    def arrays(self, symbols: Sequence[str], rows: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(returns ``[rows, N]``, volumes ``[rows, N]``, the last closes ``[N]``), NaN-padded at the top."""
        n = len(symbols)
        closes = np.full((rows + 1, n), np.nan)
        volumes = np.full((rows, n), np.nan)
        if len(self.closes):
            have = self.closes.reindex(columns=list(symbols)).to_numpy(np.float64)[-(rows + 1) :]
            closes[rows + 1 - len(have) :] = have
            vol = (
                self.volumes.reindex(columns=list(symbols)).to_numpy(np.float64)[-rows:] if rows else have[:0]
            )
            volumes[rows - len(vol) :] = vol
        return window_returns(closes), volumes, closes[-1].copy()


@njit(cache=True)
def window_returns(closes: np.ndarray) -> np.ndarray:
    """Log returns ``[W, N]`` of ``[W + 1, N]`` closes on one time grid (NaN where either is missing)."""
    rows, n = closes.shape
    out = np.full((max(rows - 1, 0), n), np.nan)
    for t in range(1, rows):
        for i in range(n):
            a, b = closes[t - 1, i], closes[t, i]
            if a > 0 and b > 0:
                out[t - 1, i] = np.log(b / a)
    return out


@njit(cache=True)
def shift_in(window: np.ndarray, row: np.ndarray) -> None:
    """Drop the oldest row of ``window`` and append ``row`` (in place)."""
    rows = window.shape[0]
    if rows == 0:
        return
    for t in range(rows - 1):
        window[t, :] = window[t + 1, :]
    window[rows - 1, :] = row


@njit(cache=True)
def correlation(returns: np.ndarray, a: int, b: int) -> float:
    """Pearson correlation of columns ``a`` and ``b`` over the rows where both are finite (NaN: unknown)."""
    count = 0
    sa = sb = saa = sbb = sab = 0.0
    for t in range(returns.shape[0]):
        x, y = returns[t, a], returns[t, b]
        if np.isfinite(x) and np.isfinite(y):
            count += 1
            sa += x
            sb += y
            saa += x * x
            sbb += y * y
            sab += x * y
    if count < 3:
        return np.nan
    va, vb = saa - sa * sa / count, sbb - sb * sb / count
    if va <= 0 or vb <= 0:
        return np.nan
    return (sab - sa * sb / count) / np.sqrt(va * vb)


@njit(cache=True)
def volatility(returns: np.ndarray, a: int, at_least: int) -> float:
    """Standard deviation of column ``a``'s finite returns (NaN with fewer than ``at_least``)."""
    count = 0
    total = squares = 0.0
    for t in range(returns.shape[0]):
        x = returns[t, a]
        if np.isfinite(x):
            count += 1
            total += x
            squares += x * x
    if count < max(at_least, 2):
        return np.nan
    variance = (squares - total * total / count) / (count - 1)
    return np.sqrt(variance) if variance > 0 else np.nan


@njit(cache=True)
def liquidity(volumes: np.ndarray) -> np.ndarray:
    """Each symbol's mean quote volume over the window / the median of those means (NaN: unknown)."""
    n = volumes.shape[1]
    means = np.full(n, np.nan)
    for i in range(n):
        total, count = 0.0, 0
        for t in range(volumes.shape[0]):
            if np.isfinite(volumes[t, i]):
                total += volumes[t, i]
                count += 1
        if count:
            means[i] = total / count
    known = means[np.isfinite(means)]
    if len(known) == 0:
        return means
    middle = np.median(known)
    return means / middle if middle > 0 else np.full(n, np.nan)


@njit(cache=True)
def track_update(average: float, count: int, r_multiple: float, alpha: float) -> float:
    """The symbol's track record after one more closed trade (the first trade sets it)."""
    return r_multiple if count == 0 else average + alpha * (r_multiple - average)


def track_record(results: Sequence[float], alpha: float) -> tuple[float, int, int]:
    """(track record, closed trades, losing streak) of a symbol's closed trades' R, oldest first.

    The backtest's loop keeps the same three figures trade by trade (:func:`track_update`).
    """
    track, streak = 0.0, 0
    for count, r in enumerate(results):
        track = track_update(track, count, float(r), alpha)
        streak = streak + 1 if r < 0 else 0
    return float(track), len(results), streak
