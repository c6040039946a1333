"""Feature groups: pure functions of past candles, each declaring the history it needs.

Every function takes a :class:`Candles` view (numpy arrays of one symbol, oldest first)
and returns named columns computed only from rows at or before each row — never later.
Recursive indicators (EMA, Wilder smoothing) come from TA-Lib's C code; a group's
``min_history`` is the number of candles after which the influence of where the series
started is below 1e-12 of the value, so the live flow can compute identical features
from the newest ``min_history`` candles alone (tests prove both properties).

Lags and windows count time, not rows: :func:`on_time_grid` puts the candles on the
interval's grid first, a bar missing from the exchange (a maintenance gap) becoming a flat,
zero-volume candle at the last known close, so ``log_ret_24`` spans 24 hours across a gap
too; ``gap_bars_24`` tells the models how many of the last 24 bars were missing.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import talib
from pandas.core.window.rolling import Rolling
from talib._ta_lib import MA_Type

Columns = dict[str, np.ndarray]
_SEED_TOLERANCE = 1e-12


@dataclass(frozen=True)
class Candles:
    """One symbol's candles as float64 arrays, oldest first."""

    open_time: pd.DatetimeIndex
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray
    missing: np.ndarray  # bool: the bar is absent from the exchange's data (a gap filler)

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, missing: np.ndarray | None = None) -> Candles:
        """From a store frame (``open_time`` index, OHLCV columns)."""
        arrays = {
            c: np.ascontiguousarray(frame[c].to_numpy(dtype=np.float64))
            for c in ("open", "high", "low", "close", "volume")
        }
        flags = np.zeros(len(frame), dtype=bool) if missing is None else missing
        return cls(open_time=pd.DatetimeIndex(frame.index), missing=flags, **arrays)


def on_time_grid(frame: pd.DataFrame, step: pd.Timedelta | None = None) -> tuple[pd.DataFrame, np.ndarray]:
    """The candles on the interval's time grid, and which grid rows were missing.

    A missing bar becomes a flat candle at the previous close with zero volume: what a
    chart of a halted market shows. It depends only on earlier candles, so features stay
    causal. ``step`` defaults to the smallest spacing in ``frame``.

    Raises:
        ValueError: an open time is off the grid (not a whole number of steps after the first).
    """
    index = pd.DatetimeIndex(frame.index)
    if len(index) < 2:
        return frame, np.zeros(len(frame), dtype=bool)
    step = step if step is not None else index.to_series().diff().min()
    offset = (index - index[0]) % step
    if (offset != pd.Timedelta(0)).any():
        bad = index[offset != pd.Timedelta(0)][0]
        minutes = step.total_seconds() / 60
        raise ValueError(f"candle at {bad} is off the grid of {minutes:g}-minute bars from {index[0]}")
    grid = pd.date_range(index[0], index[-1], freq=step, name=index.name).as_unit(index.unit)
    if len(grid) == len(index):
        return frame, np.zeros(len(frame), dtype=bool)
    missing = ~grid.isin(index)
    filled = frame.reindex(grid)
    close = filled["close"].ffill()
    for column in ("open", "high", "low"):
        filled[column] = filled[column].fillna(close)
    filled["close"] = close
    filled["volume"] = filled["volume"].fillna(0.0)
    return filled, missing


@dataclass(frozen=True)
class FeatureGroup:
    """A named set of feature columns and the candles they need to be exact."""

    name: str
    compute: Callable[[Candles], Columns]
    min_history: int


def converged_after(alpha: float, lookback: int) -> int:
    """Candles after which an exponential smoother's seed weighs < 1e-12 (plus its lookback)."""
    return lookback + math.ceil(math.log(_SEED_TOLERANCE) / math.log(1.0 - alpha))


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """Divide, giving NaN where ``den`` is 0 (e.g. a flat candle) rather than inf."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den != 0, num / den, np.nan)


def _rolling(values: np.ndarray, window: int) -> Rolling[pd.Series]:
    return pd.Series(values).rolling(window, min_periods=window)


def base(c: Candles) -> Columns:
    """The original system's 14 indicators (raw levels) and their scale-free forms."""
    ema_10, ema_50 = talib.EMA(c.close, 10), talib.EMA(c.close, 50)
    macd, macd_signal, macd_hist = talib.MACD(c.close, 12, 26, 9)
    bb_upper, bb_middle, bb_lower = talib.BBANDS(c.close, 20, 2.0, 2.0, MA_Type.SMA)
    atr = talib.ATR(c.high, c.low, c.close, 14)
    volume_sma_20 = talib.SMA(c.volume, 20)
    prev_close = np.concatenate(([np.nan], c.close[:-1]))
    return {
        "close": c.close,
        "volume": c.volume,
        "ema_10": ema_10,
        "ema_50": ema_50,
        "rsi_14": talib.RSI(c.close, 14),
        "macd": macd,
        "macd_signal": macd_signal,
        "bb_upper": bb_upper,
        "bb_middle": bb_middle,
        "bb_lower": bb_lower,
        "atr_14": atr,
        "volume_sma_20": volume_sma_20,
        "price_change_pct": (c.close / prev_close - 1.0) * 100.0,
        "high_low_range": c.high - c.low,
        # scale-free forms, so models can pool symbols of any price
        "ema_10_dist": c.close / ema_10 - 1.0,
        "ema_50_dist": c.close / ema_50 - 1.0,
        "ema_10_50_spread": ema_10 / ema_50 - 1.0,
        "macd_pct": macd / c.close,
        "macd_signal_pct": macd_signal / c.close,
        "macd_hist_pct": macd_hist / c.close,
        "bb_position": _ratio(c.close - bb_lower, bb_upper - bb_lower),
        "bb_width": (bb_upper - bb_lower) / bb_middle,
        "atr_pct": atr / c.close,
        "volume_ratio_20": _ratio(c.volume, volume_sma_20),
        "high_low_pct": (c.high - c.low) / c.close,
    }


def returns(c: Candles) -> Columns:
    """Log returns over 1…168 bars and realised volatility of 1-bar returns."""
    log_close = np.log(c.close)
    out: Columns = {}
    for lag in (1, 2, 3, 6, 12, 24, 48, 168):
        shifted = (
            np.concatenate((np.full(lag, np.nan), log_close[:-lag]))
            if lag < len(log_close)
            else np.full_like(log_close, np.nan)
        )
        out[f"log_ret_{lag}"] = log_close - shifted
    for window in (12, 24, 72, 168):
        out[f"realized_vol_{window}"] = _rolling(out["log_ret_1"], window).std(ddof=1).to_numpy()
    return out


def trend(c: Candles) -> Columns:
    """ADX with +DI/−DI (Wilder, 14) and the stochastic oscillator (14, 3, 3)."""
    stoch_k, stoch_d = talib.STOCH(c.high, c.low, c.close, 14, 3, MA_Type.SMA, 3, MA_Type.SMA)
    return {
        "adx_14": talib.ADX(c.high, c.low, c.close, 14),
        "plus_di_14": talib.PLUS_DI(c.high, c.low, c.close, 14),
        "minus_di_14": talib.MINUS_DI(c.high, c.low, c.close, 14),
        "stoch_k": stoch_k,
        "stoch_d": stoch_d,
    }


def volume_flow(c: Candles) -> Columns:
    """On-balance-volume flow, distance to a rolling VWAP, and volume z-score.

    OBV itself accumulates from the first candle ever seen, so it differs between a
    training history and a live window; its 20-bar change over 20-bar volume does not.
    """
    direction = np.sign(np.diff(c.close, prepend=np.nan))
    signed = _rolling(direction * c.volume, 20).sum().to_numpy()
    total = _rolling(c.volume, 20).sum().to_numpy()
    typical = (c.high + c.low + c.close) / 3.0
    vwap_24 = _ratio(
        _rolling(typical * c.volume, 24).sum().to_numpy(), _rolling(c.volume, 24).sum().to_numpy()
    )
    vol = _rolling(c.volume, 20)
    return {
        "obv_flow_20": _ratio(signed, total),
        "vwap_dist_24": c.close / vwap_24 - 1.0,
        "volume_z_20": _ratio(c.volume - vol.mean().to_numpy(), vol.std(ddof=0).to_numpy()),
    }


def candle_shape(c: Candles) -> Columns:
    """Body and wick sizes as fractions of the candle's range (0 range → NaN)."""
    span = c.high - c.low
    return {
        "body_ratio": _ratio(c.close - c.open, span),
        "upper_wick_ratio": _ratio(c.high - np.maximum(c.open, c.close), span),
        "lower_wick_ratio": _ratio(np.minimum(c.open, c.close) - c.low, span),
    }


def gaps(c: Candles) -> Columns:
    """How many of the last 24 bars were missing from the exchange (0 almost always)."""
    return {"gap_bars_24": _rolling(c.missing.astype(np.float64), 24).sum().to_numpy()}


def calendar(c: Candles) -> Columns:
    """Hour of day and day of week of the candle's open, on the unit circle."""
    hour = c.open_time.hour.to_numpy() + c.open_time.minute.to_numpy() / 60.0
    dow = c.open_time.dayofweek.to_numpy()
    return {
        "hour_sin": np.sin(2 * np.pi * hour / 24.0),
        "hour_cos": np.cos(2 * np.pi * hour / 24.0),
        "dow_sin": np.sin(2 * np.pi * dow / 7.0),
        "dow_cos": np.cos(2 * np.pi * dow / 7.0),
    }


_WILDER_14 = converged_after(1 / 14, 14)
GROUPS: dict[str, FeatureGroup] = {
    g.name: g
    for g in (
        FeatureGroup("base", base, converged_after(2 / 51, 50)),  # EMA 50 is the slowest
        FeatureGroup("returns", returns, 169),
        FeatureGroup("trend", trend, 2 * _WILDER_14),  # ADX smooths a Wilder-smoothed DX again
        FeatureGroup("volume_flow", volume_flow, 25),
        FeatureGroup("candle_shape", candle_shape, 1),
        FeatureGroup("calendar", calendar, 1),
        FeatureGroup("gaps", gaps, 24),
    )
}
