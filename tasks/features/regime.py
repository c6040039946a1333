"""Market regime per bar: TRENDING, RANGING, CHOPPY or BREAKOUT (the seeds' regime detector).

Rules, in order of precedence, from ADX, ATR ratio, EMA alignment and range width:

* BREAKOUT — the close leaves the previous 20-bar high/low range while ATR expands
  (ATR / its 50-bar mean > 1.1): range expansion with momentum.
* TRENDING — ADX > 25 and the EMAs aligned with price (close > EMA10 > EMA50 or the mirror).
* RANGING — ADX < 20 and no volatility expansion (ATR ratio ≤ 1.1): sideways.
* CHOPPY — everything else: volatility without a clean trend.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np

from tasks.features.groups import Candles, Columns, _rolling

ADX_TRENDING, ADX_RANGING, ATR_EXPANSION, RANGE_BARS, ATR_MEAN_BARS = 25.0, 20.0, 1.1, 20, 50


class Regime(IntEnum):
    """Regime codes (the ``regime`` feature column)."""

    TRENDING = 0
    RANGING = 1
    CHOPPY = 2
    BREAKOUT = 3


def regime_features(c: Candles, columns: Columns) -> Columns:
    """Regime code, one-hot flags, ATR ratio and range width from already computed columns."""
    atr, adx = columns["atr_14"], columns["adx_14"]
    atr_ratio = atr / _rolling(atr, ATR_MEAN_BARS).mean().to_numpy()
    prior_high = np.concatenate(([np.nan], _rolling(c.high, RANGE_BARS).max().to_numpy()[:-1]))
    prior_low = np.concatenate(([np.nan], _rolling(c.low, RANGE_BARS).min().to_numpy()[:-1]))
    ema_10, ema_50 = columns["ema_10"], columns["ema_50"]
    aligned = ((c.close > ema_10) & (ema_10 > ema_50)) | ((c.close < ema_10) & (ema_10 < ema_50))
    breakout = ((c.close > prior_high) | (c.close < prior_low)) & (atr_ratio > ATR_EXPANSION)
    trending = (adx > ADX_TRENDING) & aligned
    ranging = (adx < ADX_RANGING) & (atr_ratio <= ATR_EXPANSION)
    code = np.select(
        [breakout, trending, ranging], [Regime.BREAKOUT, Regime.TRENDING, Regime.RANGING], Regime.CHOPPY
    )
    known = ~(np.isnan(atr_ratio) | np.isnan(adx) | np.isnan(prior_high))
    regime = np.where(known, code, np.nan)
    out: Columns = {
        "regime": regime,
        "atr_ratio_50": atr_ratio,
        "range_width_20": (prior_high - prior_low) / c.close,
    }
    for member in Regime:
        out[f"regime_{member.name.lower()}"] = np.where(known, (code == member).astype(np.float64), np.nan)
    return out


#: candles the regime needs beyond those of ADX/ATR: the 50-bar ATR mean and 20-bar range.
REGIME_EXTRA_HISTORY = ATR_MEAN_BARS + RANGE_BARS
