"""The backtest's bar loop compiled with numba: :func:`run` fills what :func:`.kernel.decide_bar` decides.

Per bar t, in the order the live flow meets them (see :mod:`tasks.strategy.simulate`): what
the previous close decided fills at t's open (closes, stop moves, entries); t's high and low
trigger stops and take-profits (:func:`tasks.fill_kernel.exit_fills`, the paper broker's
rule); futures funding at each 8-hour mark in (t, t + step]; the book is marked at t's close;
then the strategy decides. Arrays are ``[bar, symbol]``, symbols sorted by name, times in ns.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from tasks.fill_kernel import exit_fills, fee, market_price
from tasks.strategy.kernel import (
    LEG_CLOSE,
    LEG_STOP,
    LEG_TP,
    MAX_LEGS,
    NO_TIME,
    TOP_K,
    TRACK_ALPHA,
    decide_bar,
)
from tasks.strategy.market import shift_in, track_update

_DAY = 86_400 * 10**9
_FUNDING_EVERY = 8 * 3_600 * 10**9
#: exits one trade can record: take-profit legs, then the stop or a close.
TRADE_LEGS = MAX_LEGS + 1


# Float fields of a position row (pos[i, ...]) and of a trade row (trade_f[k, ...]).
QTY, ENTRY, STOP, INITIAL_STOP, BEST, OPENED_QTY, REALISED, FEES, FUNDING = range(9)
T_SIDE, T_QTY, T_ENTRY, T_REALISED, T_FEES, T_FUNDING, T_RISK = range(7)
# Int fields of a trade row (trade_i[k, ...]); its exits follow from T_LEGS on.
T_SYMBOL, T_ENTRY_TIME, T_EXIT_TIME, T_OPENED_AS, T_LEGS = 0, 1, 2, 3, 4
# Counters (stats) and sums of money.
N_TRADES, CLOSED, STREAK, N_WIN, N_LOSS = range(5)
CASH, FEES_PAID, FUNDING_PAID, SUM_WIN, SUM_LOSS = range(5)


@njit(cache=True)
def _fill(i, filled, fill_price, leg, at, fee_bps, account):
    """Book one exit fill of position ``i``; filled to nothing it becomes a trade (True: it closed).

    ``account``: (side, pos, times, legs, money, stats, trade_f, trade_i, track), see :func:`run`.
    """
    side, pos, times, legs, money, stats, trade_f, trade_i, track = account
    paid = fee(filled * fill_price, fee_bps)
    pnl = side[i] * (fill_price - pos[i, ENTRY]) * filled
    pos[i, REALISED] += pnl
    pos[i, FEES] += paid
    money[CASH] += pnl - paid
    money[FEES_PAID] += paid
    for j in range(TRADE_LEGS):
        if legs[i, j] == 0:
            legs[i, j] = leg
            break
    pos[i, QTY] -= filled
    if pos[i, QTY] > 1e-12:
        return False
    risk = abs(pos[i, ENTRY] - pos[i, INITIAL_STOP]) * pos[i, OPENED_QTY]
    net = pos[i, REALISED] + pos[i, FUNDING] - pos[i, FEES]
    k = stats[N_TRADES]
    trade_f[k, T_SIDE], trade_f[k, T_QTY], trade_f[k, T_ENTRY] = side[i], pos[i, OPENED_QTY], pos[i, ENTRY]
    trade_f[k, T_REALISED], trade_f[k, T_FEES], trade_f[k, T_FUNDING] = (
        pos[i, REALISED],
        pos[i, FEES],
        pos[i, FUNDING],
    )
    trade_f[k, T_RISK] = risk
    trade_i[k, T_SYMBOL], trade_i[k, T_ENTRY_TIME], trade_i[k, T_EXIT_TIME] = i, times[i, 0], at
    trade_i[k, T_OPENED_AS] = times[i, 3]
    trade_i[k, T_LEGS:] = legs[i, :]
    r = net / risk if risk > 0 else 0.0
    stats[N_TRADES] += 1
    stats[CLOSED] += 1
    track[i, 0] = track_update(track[i, 0], int(track[i, 1]), r, track[i, 2])
    track[i, 1] += 1
    track[i, 3] = track[i, 3] + 1 if r < 0 else 0
    stats[STREAK] = stats[STREAK] + 1 if r < 0 else 0
    if r > 0:
        stats[N_WIN] += 1
        money[SUM_WIN] += r
    elif r < 0:
        stats[N_LOSS] += 1
        money[SUM_LOSS] += -r
    times[i, 1] = at  # the last exit
    side[i] = 0
    pos[i, QTY] = 0.0
    return True


@njit(cache=True)
def run(
    params, atr_table, profiles, bar_times, step,
    bar_open, bar_high, bar_low, bar_close, has_bar, p_up, atr_pct, regime, edge_scale, cost,
    quote_volume, returns, volumes, last_close,
    tick, lot, tick_digits, lot_digits, fee_bps, slippage_bps, funding_bps, start_cash,
    then_open, then_has, then_time,
):  # fmt: skip
    """The backtest. Returns (equity per bar, trade_f, trade_i, vetoes, the open book, money).

    Trades are in closing order: by bar, and within a bar in the order the positions were
    opened (as the journal numbers them).

    ``vetoes`` rows: (bar, symbol, code, detail, detail, mode); the open book: (side, pos, tp_price,
    tp_quantity, times) with ``times[i]`` = (opened, last exit); ``money``: cash, fees paid,
    funding paid. ``returns`` / ``volumes`` (``[W, N]``) are the market window before the
    first bar (NaN where unknown) and ``last_close`` the closes of the bar before it; the
    loop shifts the window on at every close (:mod:`tasks.strategy.market`).
    """
    n_bars, n = bar_close.shape
    side = np.zeros(n, np.int8)
    pos = np.zeros((n, 9))
    times = np.full((n, 4), NO_TIME, np.int64)  # opened, last exit, funded until, the entry's number
    legs = np.zeros((n, TRADE_LEGS), np.int64)  # the exits each open position has filled so far
    price = np.full(n, np.nan)
    tp_price, tp_quantity = np.full((n, MAX_LEGS), np.nan), np.zeros((n, MAX_LEGS))
    # what one bar decided, filled at the next open
    close_code, stop_move = np.zeros(n, np.int8), np.full(n, np.nan)
    candidate, outcome, detail = np.zeros(n, np.int64), np.zeros(n, np.int64), np.zeros((n, 2))
    entry_sign, entry_quantity, entry_stop = np.zeros(n), np.zeros(n), np.zeros(n)
    entry_tp_price, entry_tp_quantity = np.full((n, MAX_LEGS), np.nan), np.zeros((n, MAX_LEGS))
    considered = 0
    capacity = n_bars * max(1, min(int(params[TOP_K]), n)) + n
    equity_at = np.zeros(n_bars)
    trade_f = np.zeros((capacity, 7))
    trade_i = np.zeros((capacity, T_LEGS + TRADE_LEGS), np.int64)
    vetoes = np.zeros((capacity, 6))
    n_vetoes = entries = 0
    stats = np.zeros(5, np.int64)
    track = np.zeros((n, 4))  # per symbol: average R, closed trades, the average's weight, losing streak
    track[:, 2] = params[TRACK_ALPHA]
    returns, volumes, previous = returns.copy(), volumes.copy(), last_close.copy()
    new_return = np.full(n, np.nan)
    money = np.zeros(5)
    money[CASH] = start_cash
    account = (side, pos, times, legs, money, stats, trade_f, trade_i, track)
    peak, day_start, day = start_cash, start_cash, NO_TIME
    fill_leg, fill_price, fill_quantity = (
        np.zeros(MAX_LEGS + 1, np.int64),
        np.zeros(MAX_LEGS + 1),
        np.zeros(MAX_LEGS + 1),
    )
    has_then = then_has.any()
    for t in range(n_bars + 1):
        last = t == n_bars
        if last and not has_then:
            break
        at = then_time if last else bar_times[t]
        opens = then_open if last else bar_open[t]
        present = then_has if last else has_bar[t]
        # 1. what the previous close decided, at this open: closes, stop moves, entries;
        # positions are visited in the order they were opened (the journal's order)
        for i in np.argsort(times[:, 3], kind="mergesort"):
            if close_code[i] != 0 and side[i] != 0 and present[i]:
                fill = market_price(opens[i], -float(side[i]), slippage_bps)
                _fill(i, pos[i, QTY], fill, LEG_CLOSE, at, fee_bps, account)
        for i in range(n):
            if not np.isnan(stop_move[i]) and side[i] != 0:
                pos[i, STOP] = stop_move[i]
        for k in range(considered):
            i = candidate[k]
            if outcome[k] != 0 or not present[i] or side[i] != 0:
                continue
            fill = market_price(opens[i], entry_sign[i], slippage_bps)
            paid = fee(entry_quantity[i] * fill, fee_bps)
            side[i] = np.int8(entry_sign[i])
            pos[i, :] = 0.0
            pos[i, QTY] = pos[i, OPENED_QTY] = entry_quantity[i]
            pos[i, ENTRY] = pos[i, BEST] = fill
            pos[i, STOP] = pos[i, INITIAL_STOP] = entry_stop[i]
            pos[i, FEES] = paid
            times[i, 0], times[i, 2], times[i, 3] = at, NO_TIME, entries
            entries += 1
            legs[i, :] = 0
            tp_price[i, :] = entry_tp_price[i, :]
            tp_quantity[i, :] = entry_tp_quantity[i, :]
            money[CASH] -= paid
            money[FEES_PAID] += paid
        if last:
            break
        # 2. stops and take-profits the bar triggers
        for i in np.argsort(times[:, 3], kind="mergesort"):
            if side[i] == 0 or not present[i]:
                continue
            count = exit_fills(float(side[i]), pos[i, QTY], pos[i, STOP], tp_price[i], tp_quantity[i],
                               bar_open[t, i], bar_high[t, i], bar_low[t, i], slippage_bps,
                               fill_leg, fill_price, fill_quantity)  # fmt: skip
            for f in range(count):
                leg = LEG_STOP if fill_leg[f] < 0 else LEG_TP + fill_leg[f]
                filled = min(fill_quantity[f], pos[i, QTY])
                if _fill(i, filled, fill_price[f], leg, at, fee_bps, account):
                    break
                tp_price[i, fill_leg[f]] = np.nan
                tp_quantity[i, fill_leg[f]] = 0.0
        # 3. funding at each 8-hour mark in (t, t + step]
        if funding_bps != 0:
            mark = ((at + step) // _FUNDING_EVERY) * _FUNDING_EVERY
            for i in range(n):
                if side[i] == 0 or not present[i]:
                    continue
                since = times[i, 2] if times[i, 2] != NO_TIME else times[i, 0]
                due, instant = 0, mark
                while instant > max(at, since):
                    due += 1
                    instant -= _FUNDING_EVERY
                if due:
                    paid = -side[i] * pos[i, QTY] * bar_close[t, i] * funding_bps / 1e4 * due
                    pos[i, FUNDING] += paid
                    money[CASH] += paid
                    money[FUNDING_PAID] -= paid
                    times[i, 2] = mark
        # 4. the book at the close: prices, best closes, equity, peak, the day's start
        for i in range(n):
            if present[i]:
                price[i] = bar_close[t, i]
                if side[i] > 0:
                    pos[i, BEST] = max(pos[i, BEST], price[i])
                elif side[i] < 0:
                    pos[i, BEST] = min(pos[i, BEST], price[i])
        unrealised = 0.0
        for i in range(n):
            if side[i] != 0:
                mark_price = pos[i, ENTRY] if np.isnan(price[i]) else price[i]
                unrealised += side[i] * (mark_price - pos[i, ENTRY]) * pos[i, QTY]
        equity = money[CASH] + unrealised
        for i in range(n):
            close_now = bar_close[t, i] if present[i] else np.nan
            new_return[i] = np.log(close_now / previous[i]) if previous[i] > 0 and close_now > 0 else np.nan
            previous[i] = close_now
        shift_in(returns, new_return)
        shift_in(volumes, np.where(present, quote_volume[t], np.nan))
        today = (at // _DAY) * _DAY
        if today != day:
            day_start = equity_at[t - 1] if t > 0 else start_cash
            day = today
        equity_at[t] = equity
        peak = max(peak, equity)
        # 5. the decision at the close
        n_win, n_loss = stats[N_WIN], stats[N_LOSS]
        payoff = (money[SUM_WIN] / n_win) / (money[SUM_LOSS] / n_loss) if n_win > 0 and n_loss > 0 else np.nan
        considered, mode = decide_bar(
            params, atr_table, profiles, equity, peak, day_start, stats[CLOSED], stats[STREAK], payoff, 0,
            side, pos[:, QTY], pos[:, ENTRY], pos[:, STOP], pos[:, INITIAL_STOP], pos[:, BEST], times[:, 1],
            price,
            present, p_up[t], bar_close[t], atr_pct[t], regime[t], edge_scale, cost, at, step,
            returns, volumes, track[:, 0], track[:, 1].astype(np.int64), track[:, 3].astype(np.int64),
            tick, lot, tick_digits, lot_digits,
            close_code, stop_move, candidate, outcome, detail, entry_sign, entry_quantity, entry_stop,
            entry_tp_price, entry_tp_quantity,
        )  # fmt: skip
        for k in range(considered):
            if outcome[k] > 0:
                vetoes[n_vetoes, 0], vetoes[n_vetoes, 1], vetoes[n_vetoes, 2] = t, candidate[k], outcome[k]
                vetoes[n_vetoes, 3], vetoes[n_vetoes, 4], vetoes[n_vetoes, 5] = (
                    detail[k, 0],
                    detail[k, 1],
                    mode,
                )
                n_vetoes += 1
    count = stats[N_TRADES]
    book = (side, pos, tp_price, tp_quantity, times)
    return equity_at, trade_f[:count], trade_i[:count], vetoes[:n_vetoes], book, money[:3]
