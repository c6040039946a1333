"""The strategy's arithmetic compiled with numba: one bar's decision, and the backtest's loop around it.

:meth:`tasks.strategy.engine.Strategy.decide` (the live flow's caller) and
:func:`tasks.strategy.simulate.simulate` (the backtest's) both run :func:`decide_bar`, so
there is one copy of the rules that turn P(up) into orders. Everything is plain arrays:

* ``params``: the strategy's parameters (indices below), ``atr_table`` the ATR multiple per
  regime code, ``profiles`` the take-profit plans ``[profile, leg, (R, share)]``;
* the book per symbol (symbols sorted by name): ``side`` (+1 long, -1 short, 0 flat),
  quantity, entry, stop, initial stop, best close, last exit time (ns, :data:`NO_TIME`), the
  bar's close (NaN unknown);
* the venue's grids per symbol: tick and step sizes (0: none) and their decimals.

Veto codes are numbers here; :mod:`tasks.strategy.engine` words them.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from tasks.strategy.market import correlation, liquidity, volatility

NO_TIME = np.iinfo(np.int64).min

# Parameter indices of params (Strategy.parameters builds it).
ENTER, EXIT, ALLOW_SHORT = 0, 1, 2
RISK_PER_TRADE, KELLY_FRACTION, KELLY_AFTER, KELLY_CAP, MAX_POSITION_FRACTION, LEVERAGE = 3, 4, 5, 6, 7, 8
MIN_CONFIDENCE, MAX_OPEN, MAX_GROSS, COOLDOWN_BARS, DAILY_DRAWDOWN, HALT_DRAWDOWN = 9, 10, 11, 12, 13, 14
DEFENSIVE_AFTER, CRITICAL_AFTER, DEFENSIVE_SCALE, CRITICAL_SCALE = 15, 16, 17, 18
DEFENSIVE_MAX, CRITICAL_MAX = 19, 20
CONSERVATIVE_BELOW, AGGRESSIVE_ABOVE, BREAKEVEN_R, TRAIL_AFTER_R, TRAIL_R = 21, 22, 23, 24, 25
TOP_K, CLOSE_ON_FLAT, CHOPPY = 26, 27, 28
MAX_CORRELATED, RANK_CORRELATION, RANK_TRACK, TRACK_AFTER, TRACK_ALPHA = 29, 30, 31, 32, 33
SYMBOL_DISABLE_AFTER, SYMBOL_COOLOFF, POOR_SCALE = 34, 35, 36
SIZING_RULE, VOL_TARGET = 37, 38
N_PARAMETERS = 39

# Sizing rules (sizing.SIZING_RULES in this order).
RULE_FIXED, RULE_KELLY, RULE_VOL_TARGET = 0, 1, 2
VOL_MIN_RETURNS = 20  # returns in the window before volatility targeting sizes anything

# Modes (risk.Mode in this order).
NORMAL, DEFENSIVE, CRITICAL, HALT = 0, 1, 2, 3

# Candidate outcomes: 0 entered, -1 skipped (a short where shorting is off), else a veto.
VETO_HALT, VETO_CONFIDENCE, VETO_HELD, VETO_COOLDOWN, VETO_POSITIONS = 1, 2, 3, 4, 5
VETO_NO_EQUITY, VETO_EXPOSURE, VETO_SIZE, VETO_CORRELATED, VETO_DISABLED = 6, 7, 8, 9, 10

# Close reasons.
CLOSE_TURNED, CLOSE_FLAT = 1, 2

# Exit leg codes of a trade's exits (0: none).
LEG_CLOSE, LEG_STOP, LEG_TP = 1, 2, 3  # take-profit k (0-based) is LEG_TP + k
MAX_LEGS = 3
_EPS = 1e-9


@njit(cache=True)
def policy_event(params: np.ndarray, p_up: float, edge_scale: float, cost: float) -> float:
    """1 open long, -1 open short, 0 go flat, NaN keep what is held (the rule :class:`.Policy` documents)."""
    edge = (2.0 * p_up - 1.0) * edge_scale
    round_trip = 2.0 * cost
    event = np.nan
    if abs(edge) < params[EXIT] * round_trip:
        event = 0.0
    if edge > params[ENTER] * round_trip:
        event = 1.0
    if edge < -params[ENTER] * round_trip:
        event = -1.0 if params[ALLOW_SHORT] > 0 else 0.0
    return event


@njit(cache=True)
def policy_events(
    params: np.ndarray, p_up: np.ndarray, edge_scale: np.ndarray, cost: np.ndarray
) -> np.ndarray:
    """:func:`policy_event` of each row (flat arrays of one length)."""
    out = np.empty(len(p_up))
    for i in range(len(p_up)):
        out[i] = policy_event(params, p_up[i], edge_scale[i], cost[i])
    return out


@njit(cache=True)
def round_down(value: float, step: float, digits: int) -> float:
    """``value`` rounded down to the step grid (as the broker rounds a quantity); step 0: unchanged."""
    if step <= 0:
        return value
    return round(np.floor(value / step + _EPS) * step, digits)


@njit(cache=True)
def round_nearest(value: float, tick: float, digits: int) -> float:
    """``value`` on the nearest tick, halves up (as the broker rounds a price); tick 0: unchanged."""
    if tick <= 0:
        return value
    return round(np.floor(value / tick + 0.5 + _EPS) * tick, digits)


@njit(cache=True)
def stop_distance(
    params: np.ndarray, atr_table: np.ndarray, price: float, atr_pct: float, regime: float
) -> float:
    """How far from the entry the stop sits: ATR × the regime's multiple (CHOPPY's when unknown)."""
    multiple = atr_table[int(params[CHOPPY])]
    if np.isfinite(regime) and 0 <= int(regime) < len(atr_table) and np.isfinite(atr_table[int(regime)]):
        multiple = atr_table[int(regime)]
    if not atr_pct > 0:
        return 0.0
    return price * atr_pct * multiple


@njit(cache=True)
def risk_fraction(params: np.ndarray, p_win: float, payoff: float, closed_trades: int) -> float:
    """The share of equity a trade may lose at its stop.

    ``RISK_PER_TRADE``; under the Kelly rule, fractional Kelly (capped) once ``KELLY_AFTER``
    trades have closed.
    """
    if params[SIZING_RULE] != RULE_KELLY or closed_trades < params[KELLY_AFTER] or not payoff > 0:
        return params[RISK_PER_TRADE]
    kelly = p_win - (1.0 - p_win) / payoff
    return min(max(kelly * params[KELLY_FRACTION], 0.0), params[KELLY_CAP])


@njit(cache=True)
def quantity_for(params: np.ndarray, equity: float, price: float, distance: float, risk: float) -> float:
    """Base quantity that loses ``risk`` of ``equity`` at the stop, within the notional cap."""
    if not (distance > 0 and price > 0 and equity > 0 and risk > 0):
        return 0.0
    return min(equity * risk / distance, equity * params[MAX_POSITION_FRACTION] * params[LEVERAGE] / price)


@njit(cache=True)
def volatility_quantity(params: np.ndarray, equity: float, price: float, sigma: float, scale: float) -> float:
    """Base quantity whose one-bar volatility is ``VOL_TARGET`` × ``scale`` of equity, within the cap.

    ``sigma`` is the symbol's bar-return standard deviation (not finite or 0: nothing to size).
    """
    if not (sigma > 0 and price > 0 and equity > 0 and scale > 0):
        return 0.0
    return min(
        equity * params[VOL_TARGET] * scale / (sigma * price),
        equity * params[MAX_POSITION_FRACTION] * params[LEVERAGE] / price,
    )


@njit(cache=True)
def profile_of(params: np.ndarray, confidence: float) -> int:
    """0 conservative, 1 balanced, 2 aggressive: the take-profit plan of a call this confident."""
    if confidence < params[CONSERVATIVE_BELOW]:
        return 0
    return 2 if confidence > params[AGGRESSIVE_ABOVE] else 1


@njit(cache=True)
def take_profit_legs(
    params, profiles, sign, entry, distance, size, confidence, tick, lot, tick_digits, lot_digits,
    out_price, out_quantity,
):  # fmt: skip
    """The take-profit legs of an entry at R multiples of its stop distance, on the venue's grids.

    The plan follows the confidence (:func:`profile_of`); legs whose share rounds to nothing
    are dropped and the rest packed to the front (slot j is ``tp{j+1}``), absent slots NaN.
    """
    plan = profile_of(params, confidence)
    legs = 0
    for leg in range(MAX_LEGS):
        out_price[leg] = np.nan
        out_quantity[leg] = 0.0
    for leg in range(MAX_LEGS):
        r, share = profiles[plan, leg, 0], profiles[plan, leg, 1]
        leg_quantity = round_down(size * share, lot, lot_digits)
        if share > 0 and leg_quantity > 0:
            out_price[legs] = round_nearest(entry + sign * r * distance, tick, tick_digits)
            out_quantity[legs] = leg_quantity
            legs += 1
    return legs


@njit(cache=True)
def moved_stop(
    params: np.ndarray, sign: float, entry: float, stop: float, initial_stop: float, best: float
) -> float:
    """The stop after the best close so far: break-even, then trailing; never looser."""
    risk = abs(entry - initial_stop)
    if risk <= 0:
        return stop
    gained = sign * (best - entry) / risk
    wanted = stop
    if params[BREAKEVEN_R] > 0 and gained >= params[BREAKEVEN_R]:
        wanted = entry
    if params[TRAIL_AFTER_R] > 0 and gained >= params[TRAIL_AFTER_R]:
        wanted = best - sign * params[TRAIL_R] * risk
    return max(stop, wanted) if sign > 0 else min(stop, wanted)


@njit(cache=True)
def mode_of(
    params: np.ndarray, equity: float, peak: float, day_start: float, losing_streak: int, floor: int
) -> int:
    """HALT on the day's or the peak's drawdown limit, CRITICAL / DEFENSIVE on a losing streak.

    ``floor`` is the least cautious mode allowed (the model supervisor's DEFENSIVE when the
    live model drifts; NORMAL otherwise): the book's own mode is raised to it, never lowered.
    """
    mode = NORMAL
    if losing_streak >= params[DEFENSIVE_AFTER]:
        mode = DEFENSIVE
    if losing_streak >= params[CRITICAL_AFTER]:
        mode = CRITICAL
    if day_start > 0 and equity <= day_start * (1 - params[DAILY_DRAWDOWN]):
        mode = HALT
    if peak > 0 and equity <= peak * (1 - params[HALT_DRAWDOWN]):
        mode = HALT
    return max(mode, floor)


@njit(cache=True)
def symbol_disabled(params: np.ndarray, streak: int, last_exit: int, bar_time: int, step: int) -> bool:
    """A symbol is off after ``SYMBOL_DISABLE_AFTER`` losing trades in a row, for ``SYMBOL_COOLOFF`` bars.

    The cool-off runs from its last exit; after it the symbol trades again, and one more loss
    (the streak still long) turns it off for another cool-off, a win resets the streak.
    """
    if params[SYMBOL_DISABLE_AFTER] <= 0 or streak < params[SYMBOL_DISABLE_AFTER] or last_exit == NO_TIME:
        return False
    return bool(bar_time - last_exit < int(params[SYMBOL_COOLOFF]) * step)


@njit(cache=True)
def symbol_scale(params: np.ndarray, track: float, trades: int) -> float:
    """The risk a symbol's entries take: × ``POOR_SCALE`` when its track record is negative."""
    if trades >= params[TRACK_AFTER] and np.isfinite(track) and track < 0:
        return params[POOR_SCALE]
    return 1.0


@njit(cache=True)
def risk_scale(params: np.ndarray, mode: int) -> float:
    """How much of the normal risk per trade the mode allows."""
    if mode == NORMAL:
        return 1.0
    if mode == DEFENSIVE:
        return params[DEFENSIVE_SCALE]
    return params[CRITICAL_SCALE] if mode == CRITICAL else 0.0


@njit(cache=True)
def max_positions(params: np.ndarray, mode: int) -> int:
    """Open positions the mode allows."""
    if mode == NORMAL:
        return int(params[MAX_OPEN])
    if mode == DEFENSIVE:
        return int(min(params[MAX_OPEN], params[DEFENSIVE_MAX]))
    return int(min(params[MAX_OPEN], params[CRITICAL_MAX])) if mode == CRITICAL else 0


@njit(cache=True)
def gross_exposure(
    side: np.ndarray, quantity: np.ndarray, entry: np.ndarray, price: np.ndarray, equity: float
) -> float:
    """Sum of the open positions' notional (at the bar's close, else the entry) over equity."""
    if equity <= 0:
        return np.inf
    total = 0.0
    for i in range(len(side)):
        if side[i] != 0:
            total += quantity[i] * (entry[i] if np.isnan(price[i]) else price[i])
    return total / equity


@njit(cache=True)
def _rho(returns: np.ndarray, rho: np.ndarray, known: np.ndarray, a: int, b: int) -> float:
    """The correlation of symbols a and b in this bar's window, computed once; unknown: 1 (cautious)."""
    if a == b:
        return 1.0
    if not known[a, b]:
        value = correlation(returns, a, b)
        rho[a, b] = rho[b, a] = 1.0 if np.isnan(value) else value
        known[a, b] = known[b, a] = True
    return rho[a, b]


@njit(cache=True)
def _rank_weight(params: np.ndarray, liquid: float, track: float, trades: int) -> float:
    """Liquidity (capped at 1; unknown: 1) × track record (after TRACK_AFTER trades, within 0.5–1.5)."""
    weight = min(liquid, 1.0) if np.isfinite(liquid) and liquid >= 0 else 1.0
    if trades >= params[TRACK_AFTER] and np.isfinite(track):
        weight *= min(max(1.0 + params[RANK_TRACK] * track, 0.5), 1.5)
    return weight


@njit(cache=True)
def decide_bar(
    params, atr_table, profiles,
    equity, peak, day_start, closed_trades, losing_streak, payoff, floor_mode,
    side, quantity, entry, stop, initial_stop, best, last_exit, price,
    has_signal, p_up, close, atr_pct, regime, edge_scale, cost, bar_time, step,
    returns, volumes, track, track_count, symbol_streak,
    tick, lot, tick_digits, lot_digits,
    close_code, stop_move, candidate, outcome, detail, entry_sign, entry_quantity, entry_stop,
    tp_price, tp_quantity,
):  # fmt: skip
    """One bar's decision for every symbol; returns (candidates considered, mode).

    Held positions with a signal: close when the policy turned (or went flat with
    ``CLOSE_ON_FLAT``), else move the stop (break-even, trailing) when it tightens. Flat
    symbols the policy wants in are ranked, best first, at most ``TOP_K`` considered: the
    score is the call's net edge × the symbol's liquidity (capped at 1) × its track record
    (1 + ``RANK_TRACK`` × its average R after ``TRACK_AFTER`` trades, within 0.5–1.5) × (1 −
    ``RANK_CORRELATION`` × its strongest same-direction correlation with what is held or
    taken this bar); ties by symbol. Each is sized (ATR stop; the sizing rule: risk per
    trade, Kelly or volatility target; scaled by the mode — at least ``floor_mode`` — and by
    :func:`symbol_scale`), put on the venue's grids and risk-checked, the correlation-weighted
    exposure sqrt(vᵀ C v) / equity (v the signed notionals, C the window's correlations,
    unknown ones 1) included; a symbol on a
    losing streak is vetoed in its cool-off (:func:`symbol_disabled`, ``symbol_streak`` its
    losing trades in a row). ``candidate[k]`` is the k-th considered symbol, ``outcome[k]``
    what became of it (0 entered), ``detail[k]`` the veto's numbers; an entry's
    side, size, stop and take-profit legs are at its symbol's row of ``entry_*`` / ``tp_*``.
    """
    n = len(side)
    held_count = 0
    for i in range(n):
        close_code[i] = 0
        stop_move[i] = np.nan
        if side[i] != 0:
            held_count += 1
    wanted = np.full(n, np.nan)
    for i in range(n):
        if has_signal[i]:
            wanted[i] = policy_event(params, p_up[i], edge_scale[i], cost[i])
    for i in range(n):
        if side[i] == 0 or not has_signal[i]:
            continue
        turned = (wanted[i] == 1.0 and side[i] < 0) or (wanted[i] == -1.0 and side[i] > 0)
        if turned or (params[CLOSE_ON_FLAT] > 0 and wanted[i] == 0.0):
            close_code[i] = CLOSE_TURNED if turned else CLOSE_FLAT
            continue
        sign = float(side[i])
        moved = round_nearest(
            moved_stop(params, sign, entry[i], stop[i], initial_stop[i], best[i]), tick[i], tick_digits[i]
        )
        if moved != stop[i] and (moved > stop[i] if sign > 0 else moved < stop[i]):
            stop_move[i] = moved
    count = 0
    net_edge = np.full(n, -np.inf)
    for i in range(n):
        if side[i] == 0 and has_signal[i] and (wanted[i] == 1.0 or wanted[i] == -1.0):
            net_edge[i] = abs(2.0 * p_up[i] - 1.0) * edge_scale[i] - 2.0 * cost[i]
            count += 1
    mode = mode_of(params, equity, peak, day_start, losing_streak, floor_mode)
    scale = risk_scale(params, mode)
    limit = max_positions(params, mode)
    exposure = gross_exposure(side, quantity, entry, price, equity)
    weight = liquidity(volumes)
    rho = np.full((n, n), np.nan)
    known = np.zeros((n, n), np.bool_)
    signed = np.zeros(n)  # the book's signed notional per symbol: held, then taken this bar
    for i in range(n):
        if side[i] != 0:
            signed[i] = side[i] * quantity[i] * (entry[i] if np.isnan(price[i]) else price[i])
    quadratic = 0.0  # vᵀ C v of what is held and taken
    for a in range(n):
        for b in range(n):
            if signed[a] != 0 and signed[b] != 0:
                quadratic += signed[a] * signed[b] * _rho(returns, rho, known, a, b)
    taken_notional, taken = 0.0, 0
    considered = min(count, int(params[TOP_K]))
    for k in range(considered):
        i, best_score = -1, -np.inf
        for c in range(n):
            if net_edge[c] == -np.inf:
                continue
            score = net_edge[c] * _rank_weight(params, weight[c], track[c], track_count[c])
            crowd = 0.0
            for j in range(n):
                if signed[j] != 0:
                    crowd = max(crowd, wanted[c] * np.sign(signed[j]) * _rho(returns, rho, known, c, j))
            score *= 1.0 - params[RANK_CORRELATION] * crowd
            if score > best_score or i < 0:
                i, best_score = c, score
        net_edge[i] = -np.inf
        candidate[k] = i
        detail[k, 0] = detail[k, 1] = 0.0
        sign = wanted[i]
        if sign < 0 and params[ALLOW_SHORT] <= 0:
            outcome[k] = -1
            continue
        distance = stop_distance(params, atr_table, close[i], atr_pct[i], regime[i])
        p_win = p_up[i] if sign > 0 else 1.0 - p_up[i]
        scaled = scale * symbol_scale(params, track[i], track_count[i])
        if params[SIZING_RULE] == RULE_VOL_TARGET:
            sigma = volatility(returns, i, VOL_MIN_RETURNS)
            raw = volatility_quantity(params, equity, close[i], sigma, scaled)
        else:
            risk = risk_fraction(params, p_win, payoff, closed_trades) * scaled
            raw = quantity_for(params, equity, close[i], distance, risk)
        size = round_down(raw, lot[i], lot_digits[i])
        confidence = abs(2.0 * p_up[i] - 1.0)
        value = sign * size * close[i]
        cross = 0.0
        for j in range(n):
            if signed[j] != 0:
                cross += signed[j] * _rho(returns, rho, known, i, j)
        correlated = (
            np.sqrt(max(quadratic + value * value + 2.0 * value * cross, 0.0)) / equity
            if equity > 0
            else np.inf
        )
        code = 0
        if mode == HALT:
            code = VETO_HALT
        elif confidence < params[MIN_CONFIDENCE]:
            code, detail[k, 0] = VETO_CONFIDENCE, confidence
        elif last_exit[i] != NO_TIME and bar_time - last_exit[i] < int(params[COOLDOWN_BARS]) * step:
            code, detail[k, 0] = VETO_COOLDOWN, last_exit[i] / 1e9  # seconds
        elif symbol_disabled(params, symbol_streak[i], last_exit[i], bar_time, step):
            until = (last_exit[i] + int(params[SYMBOL_COOLOFF]) * step) / 1e9  # seconds
            code, detail[k, 0], detail[k, 1] = VETO_DISABLED, float(symbol_streak[i]), until
        elif held_count + taken >= limit:
            code, detail[k, 0], detail[k, 1] = VETO_POSITIONS, float(held_count + taken), float(limit)
        elif equity <= 0:
            code = VETO_NO_EQUITY
        elif exposure + (taken_notional + size * close[i]) / equity > params[MAX_GROSS] + 1e-12:
            code, detail[k, 0] = VETO_EXPOSURE, exposure + (taken_notional + size * close[i]) / equity
        elif size > 0 and correlated > params[MAX_CORRELATED] + 1e-12:
            code, detail[k, 0] = VETO_CORRELATED, correlated
        elif size <= 0:
            code = VETO_SIZE
        outcome[k] = code
        if code != 0:
            continue
        taken += 1
        taken_notional += size * close[i]
        quadratic += value * value + 2.0 * value * cross
        signed[i] = value
        entry_quantity[i] = size
        entry_stop[i] = round_nearest(close[i] - sign * distance, tick[i], tick_digits[i])
        entry_sign[i] = sign
        take_profit_legs(params, profiles, sign, close[i], distance, size, confidence, tick[i], lot[i],
                         tick_digits[i], lot_digits[i], tp_price[i], tp_quantity[i])  # fmt: skip
    return considered, mode
