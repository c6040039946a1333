"""Textbook indicator definitions as plain loops: an independent reference for TA-Lib.

Seeding follows Wilder / common practice (simple mean of the first ``n`` values); it may
differ from TA-Lib's, which is why comparisons skip a warm-up.
"""

from __future__ import annotations

import numpy as np


def ema(x: np.ndarray, n: int) -> np.ndarray:
    out = np.full(len(x), np.nan)
    alpha = 2.0 / (n + 1)
    first = int(np.argmax(~np.isnan(x)))
    value = float(np.mean(x[first : first + n]))
    out[first + n - 1] = value
    for i in range(first + n, len(x)):
        value = alpha * x[i] + (1 - alpha) * value
        out[i] = value
    return out


def _wilder_mean(x: np.ndarray, n: int, start: int) -> np.ndarray:
    """Wilder's average: simple mean of x[start:start+n], then avg = (avg*(n-1) + x) / n."""
    out = np.full(len(x), np.nan)
    value = float(np.mean(x[start : start + n]))
    out[start + n - 1] = value
    for i in range(start + n, len(x)):
        value = (value * (n - 1) + x[i]) / n
        out[i] = value
    return out


def rsi(close: np.ndarray, n: int = 14) -> np.ndarray:
    change = np.diff(close, prepend=np.nan)
    gain, loss = np.where(change > 0, change, 0.0), np.where(change < 0, -change, 0.0)
    avg_gain, avg_loss = _wilder_mean(gain, n, 1), _wilder_mean(loss, n, 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(avg_loss == 0, 100.0, 100.0 - 100.0 / (1.0 + avg_gain / avg_loss))


def macd(close: np.ndarray, fast: int = 12, slow: int = 26, signal: int = 9) -> tuple[np.ndarray, np.ndarray]:
    line = ema(close, fast) - ema(close, slow)
    return line, ema(line, signal)


def bbands(close: np.ndarray, n: int = 20, k: float = 2.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    windows = np.lib.stride_tricks.sliding_window_view(close, n)
    mid, std = windows.mean(axis=1), windows.std(axis=1)  # population std, as Bollinger did
    pad = np.full(n - 1, np.nan)
    middle = np.concatenate((pad, mid))
    width = np.concatenate((pad, k * std))
    return middle + width, middle, middle - width


def true_range(high: np.ndarray, low: np.ndarray, close: np.ndarray) -> np.ndarray:
    prev = np.concatenate(([np.nan], close[:-1]))
    return np.maximum.reduce([high - low, np.abs(high - prev), np.abs(low - prev)])


def atr(high: np.ndarray, low: np.ndarray, close: np.ndarray, n: int = 14) -> np.ndarray:
    return _wilder_mean(true_range(high, low, close), n, 1)


def adx(
    high: np.ndarray, low: np.ndarray, close: np.ndarray, n: int = 14
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ADX, +DI, −DI per Wilder (1978): smoothed sums of +DM, −DM and true range."""
    up = np.diff(high, prepend=np.nan)
    down = -np.diff(low, prepend=np.nan)
    plus_dm = np.where((up > down) & (up > 0), up, 0.0)
    minus_dm = np.where((down > up) & (down > 0), down, 0.0)
    tr = true_range(high, low, close)

    def wilder_sum(x: np.ndarray) -> np.ndarray:
        out = np.full(len(x), np.nan)
        total = float(np.sum(x[1 : n + 1]))
        out[n] = total
        for i in range(n + 1, len(x)):
            total = total - total / n + x[i]
            out[i] = total
        return out

    s_tr = wilder_sum(tr)
    plus_di = 100.0 * wilder_sum(plus_dm) / s_tr
    minus_di = 100.0 * wilder_sum(minus_dm) / s_tr
    dx = 100.0 * np.abs(plus_di - minus_di) / (plus_di + minus_di)
    return _wilder_mean(dx, n, n), plus_di, minus_di
