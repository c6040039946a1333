"""The fill rules of :mod:`tasks.fills` compiled with numba: one copy, for the paper broker and the backtest.

:func:`tasks.fills.triggered_exits` (the paper broker's) and the backtest's loop
(:mod:`tasks.strategy.kernel`) both call :func:`exit_fills`, so a candle fills an exit the same
way in both. Sides are signs here (+1 long, -1 short; +1 buy, -1 sell), absent legs NaN.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True)
def market_price(reference: float, order_sign: float, slippage_bps: float) -> float:
    """A market order's price: ``reference`` moved against the order (+1 buy, -1 sell) by the slippage."""
    return reference * (1.0 + order_sign * slippage_bps / 1e4)


@njit(cache=True)
def fee(notional: float, fee_bps: float) -> float:
    """The fee of a fill: a fraction of its notional."""
    return abs(notional) * fee_bps / 1e4


@njit(cache=True)
def exit_fills(
    sign: float,
    quantity: float,
    stop: float,
    tp_price: np.ndarray,
    tp_quantity: np.ndarray,
    bar_open: float,
    bar_high: float,
    bar_low: float,
    slippage_bps: float,
    out_leg: np.ndarray,
    out_price: np.ndarray,
    out_quantity: np.ndarray,
) -> int:
    """The exits one candle triggers, in fill order; returns how many (written to ``out_*``).

    ``out_leg`` is -1 for the stop, else the take-profit's index. A stop touched in the bar
    fills first and closes all of ``quantity`` (at the stop, or at the open when the candle
    gapped through it, less slippage), so no take-profit of that bar fills; otherwise
    take-profits fill nearest first at their own price, never more than ``quantity`` in all.
    """
    if not np.isnan(stop):
        touched = bar_low <= stop if sign > 0 else bar_high >= stop
        if touched:
            gapped = bar_open < stop if sign > 0 else bar_open > stop
            out_leg[0] = -1
            out_price[0] = market_price(bar_open if gapped else stop, -sign, slippage_bps)
            out_quantity[0] = quantity
            return 1
    order = np.argsort(tp_price * sign, kind="mergesort")  # nearest first; NaN (no leg) last
    done = 0
    left = quantity
    for j in order:
        price = tp_price[j]
        if left <= 0 or np.isnan(price):
            break
        if not (bar_high >= price if sign > 0 else bar_low <= price):
            break
        filled = min(tp_quantity[j], left)
        out_leg[done] = j
        out_price[done] = price
        out_quantity[done] = filled
        done += 1
        left -= filled
    return done
