"""The strategy the backtest and the live flow both call: policy → ranking → risk → sizing → exits.

:meth:`Strategy.decide` sees the :class:`~tasks.strategy.risk.Book` at a bar's close and
that bar's :class:`Signal` per symbol, and returns what to do at the next price: positions
to close (the policy went flat or turned), stops to move (break-even, trailing), entries
(with their stop and take-profit legs), and vetoes with their reasons. It is pure: the
backtest applies its answer with :mod:`tasks.fills`, the live flow through a broker.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd

from core.errors import BadConfigError
from tasks.features.regime import Regime
from tasks.fills import Side
from tasks.strategy.exits import PROFILES, Exits
from tasks.strategy.market import MarketWindow
from tasks.strategy.policy import Policy
from tasks.strategy.risk import Book, Mode, RiskLimits
from tasks.strategy.sizing import DEFAULT_SIZING, SIZING_RULES, Sizing


@dataclass(frozen=True)
class Signal:
    """A symbol at a bar's close: the calibrated P(up) and what sizing and costs need.

    Attributes:
        symbol: e.g. ``BTCUSDT``.
        bar_time: the bar's open time (its P(up) is known at its close).
        p_up: calibrated P(next close > this close).
        price: the bar's close (the expected entry).
        atr_pct: ATR / close.
        regime: the regime code (NaN when unknown).
        edge_scale: the symbol's mean absolute bar return (the edge a right call earns).
        cost: cost per side (fee + slippage) as a fraction of notional.
    """

    symbol: str
    bar_time: pd.Timestamp
    p_up: float
    price: float
    atr_pct: float
    regime: float
    edge_scale: float
    cost: float

    @property
    def confidence(self) -> float:
        """|2p − 1|."""
        return abs(2 * self.p_up - 1)

    @property
    def net_edge(self) -> float:
        """The expected edge of the call net of a round trip."""
        return self.confidence * self.edge_scale - 2 * self.cost


@dataclass(frozen=True)
class Entry:
    """Open a position at the next price, with its exits."""

    symbol: str
    side: Side
    quantity: float
    stop: float
    take_profits: tuple[tuple[float, float], ...]
    bar_time: pd.Timestamp
    reference_price: float
    p_up: float


@dataclass
class Decisions:
    """What :meth:`Strategy.decide` asks for at one bar's close."""

    closes: dict[str, str] = field(default_factory=dict)  # symbol → reason
    stop_moves: dict[str, float] = field(default_factory=dict)  # symbol → new stop
    entries: list[Entry] = field(default_factory=list)
    vetoes: list[tuple[str, str]] = field(default_factory=list)  # (symbol, reason)


class Grids:
    """The venue's tick and step sizes per symbol, as the kernel takes them (0: no grid)."""

    def __init__(self, rules: Mapping[str, Any] | None = None) -> None:
        self.rules = dict(rules or {})

    def of(self, symbols: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(tick, step, tick decimals, step decimals) of ``symbols``."""
        tick, lot = np.zeros(len(symbols)), np.zeros(len(symbols))
        tick_digits, lot_digits = np.zeros(len(symbols), np.int64), np.zeros(len(symbols), np.int64)
        for i, symbol in enumerate(symbols):
            rule = self.rules.get(symbol)
            if rule is None:
                continue
            for sizes, digits, value in (
                (tick, tick_digits, rule.tick_size),
                (lot, lot_digits, rule.step_size),
            ):
                sizes[i] = float(value)
                digits[i] = max(0, -int(Decimal(str(value)).normalize().as_tuple().exponent))
        return tick, lot, tick_digits, lot_digits


@dataclass(frozen=True)
class Strategy:
    """Policy, sizing, risk and exits: one object, two callers.

    Attributes:
        policy: P(up) → the side to hold.
        sizing: stop distance and quantity.
        risk: modes and vetoes.
        exits: take-profit legs, break-even, trailing.
        top_k: at most this many candidates considered per bar, best ranked first.
        close_on_flat: close a position when the policy goes flat (not only when it turns).
        window: bars of returns and volumes the correlations and the liquidity are measured on.
        rank_correlation: how much a candidate's correlation with what is held (same
            direction) lowers its rank: score × (1 − this × the strongest correlation).
        rank_track: how much the symbol's track record (average R) moves its rank.
        track_after: closed trades in a symbol before its track record counts.
        track_alpha: the weight of the newest trade in the track record's average.
    """

    policy: Policy = field(default_factory=Policy)
    sizing: Sizing = DEFAULT_SIZING
    risk: RiskLimits = field(default_factory=RiskLimits)
    exits: Exits = field(default_factory=Exits)
    top_k: int = 2
    close_on_flat: bool = False
    window: int = 96
    rank_correlation: float = 0.5
    rank_track: float = 0.5
    track_after: int = 5
    track_alpha: float = 0.2

    @cached_property
    def parameters(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(params, ATR multiple per regime code, take-profit plans): the kernel's view of this strategy."""
        from tasks.strategy import kernel as k

        params = np.zeros(k.N_PARAMETERS)
        policy, sizing, risk, exits = self.policy, self.sizing, self.risk, self.exits
        params[[k.ENTER, k.EXIT, k.ALLOW_SHORT]] = policy.enter, policy.exit, float(policy.allow_short)
        sizing_at = [k.RISK_PER_TRADE, k.KELLY_FRACTION, k.KELLY_AFTER, k.KELLY_CAP, k.MAX_POSITION_FRACTION,
                     k.LEVERAGE]  # fmt: skip
        params[sizing_at] = (
            sizing.risk_per_trade, sizing.kelly_fraction, sizing.kelly_after, sizing.kelly_cap,
            sizing.max_position_fraction, sizing.leverage,
        )  # fmt: skip
        risk_at = [k.MIN_CONFIDENCE, k.MAX_OPEN, k.MAX_GROSS, k.COOLDOWN_BARS, k.DAILY_DRAWDOWN,
                   k.HALT_DRAWDOWN]  # fmt: skip
        params[risk_at] = (
            risk.min_confidence, risk.max_open_positions, risk.max_gross_exposure, risk.cooldown_bars,
            risk.daily_drawdown, risk.halt_drawdown,
        )  # fmt: skip
        params[[k.DEFENSIVE_AFTER, k.CRITICAL_AFTER, k.DEFENSIVE_SCALE, k.CRITICAL_SCALE]] = (
            risk.defensive_after_losses, risk.critical_after_losses, risk.defensive_risk_scale,
            risk.critical_risk_scale,
        )  # fmt: skip
        params[[k.DEFENSIVE_MAX, k.CRITICAL_MAX]] = risk.defensive_max_positions, risk.critical_max_positions
        params[[k.CONSERVATIVE_BELOW, k.AGGRESSIVE_ABOVE, k.BREAKEVEN_R, k.TRAIL_AFTER_R, k.TRAIL_R]] = (
            exits.conservative_below, exits.aggressive_above, exits.breakeven_r, exits.trail_after_r,
            exits.trail_r,
        )  # fmt: skip
        params[[k.TOP_K, k.CLOSE_ON_FLAT, k.CHOPPY]] = (
            self.top_k,
            float(self.close_on_flat),
            int(Regime.CHOPPY),
        )
        params[[k.MAX_CORRELATED, k.RANK_CORRELATION, k.RANK_TRACK, k.TRACK_AFTER, k.TRACK_ALPHA]] = (
            risk.max_correlated_exposure, self.rank_correlation, self.rank_track, self.track_after,
            self.track_alpha,
        )  # fmt: skip
        params[[k.SIZING_RULE, k.VOL_TARGET]] = SIZING_RULES.index(sizing.rule), sizing.vol_target
        params[[k.SYMBOL_DISABLE_AFTER, k.SYMBOL_COOLOFF, k.POOR_SCALE]] = (
            risk.symbol_disable_after, risk.symbol_cooloff_bars, risk.poor_symbol_scale,
        )  # fmt: skip
        multiples = dict(sizing.atr_multiples)
        atr_table = np.full(max(max(multiples), int(Regime.CHOPPY)) + 1, np.nan)
        for code, multiple in multiples.items():
            atr_table[int(code)] = multiple
        profiles = np.zeros((3, k.MAX_LEGS, 2))
        for p, name in enumerate(("conservative", "balanced", "aggressive")):
            plan = PROFILES[name]
            if len(plan) > k.MAX_LEGS:
                raise BadConfigError(
                    f"take-profit profile {name!r} has {len(plan)} legs; at most {k.MAX_LEGS}"
                )
            profiles[p, : len(plan)] = plan
        return params, atr_table, profiles

    def want(self, signal: Signal) -> float:
        """The policy's event: 1 long, -1 short, 0 flat, NaN keep what is held."""
        from tasks.strategy.kernel import policy_event

        return float(policy_event(self.parameters[0], signal.p_up, signal.edge_scale, signal.cost))

    def decide(
        self,
        book: Book,
        signals: list[Signal],
        step: pd.Timedelta,
        grids: Grids | None = None,
        window: MarketWindow | None = None,
    ) -> Decisions:
        """What to do at the next price, from the book at this bar's close and its signals.

        ``grids`` puts sizes and prices on the venue's grids (the broker rounds them the same
        way); ``window`` holds the recent closes and volumes (None: correlations unknown,
        taken as 1). The rules are :func:`tasks.strategy.kernel.decide_bar`, the backtest's too.
        """
        from tasks.strategy import kernel as k
        from tasks.strategy.market import track_record

        symbols = sorted({s.symbol for s in signals} | set(book.positions))
        n = len(symbols)
        row = {symbol: i for i, symbol in enumerate(symbols)}
        side, held = (
            np.zeros(n, np.int8),
            np.zeros((6, n)),
        )  # quantity, entry, stop, initial stop, best, price
        last_exit = np.full(n, k.NO_TIME, np.int64)
        held[5] = np.nan
        for symbol, position in book.positions.items():
            i = row[symbol]
            side[i] = 1 if position.side == "long" else -1
            held[:5, i] = (
                position.quantity,
                position.entry,
                position.stop,
                position.initial_stop,
                position.best,
            )
        for symbol, when in book.last_exit.items():
            if symbol in row:
                last_exit[row[symbol]] = pd.Timestamp(when).value
        for symbol, price in book.prices.items():
            if symbol in row:
                held[5, row[symbol]] = price
        has_signal = np.zeros(n, np.bool_)
        numbers = np.full((6, n), np.nan)  # p_up, price, atr_pct, regime, edge scale, cost
        for signal in signals:
            i = row[signal.symbol]
            has_signal[i] = True
            numbers[:, i] = (
                signal.p_up,
                signal.price,
                signal.atr_pct,
                signal.regime,
                signal.edge_scale,
                signal.cost,
            )
        bar_time = max(s.bar_time for s in signals) if signals else pd.Timestamp(0, tz="UTC")
        out = _Answer(n)
        params, atr_table, profiles = self.parameters
        track, track_count, streak = np.zeros(n), np.zeros(n, np.int64), np.zeros(n, np.int64)
        for symbol, results in book.symbol_r.items():
            if symbol in row:
                track[row[symbol]], track_count[row[symbol]], streak[row[symbol]] = track_record(
                    results, self.track_alpha
                )
        returns, volumes, _ = (window or MarketWindow.empty()).arrays(symbols, self.window)
        wins, losses = [r for r in book.r_multiples if r > 0], [-r for r in book.r_multiples if r < 0]
        payoff = (sum(wins) / len(wins)) / (sum(losses) / len(losses)) if wins and losses else np.nan
        considered, mode = k.decide_bar(  # type: ignore[call-arg]
            params, atr_table, profiles, book.equity, book.peak_equity, book.day_start_equity,
            len(book.r_multiples), book.losing_streak, payoff, list(Mode).index(book.floor_mode),
            side, held[0], held[1], held[2], held[3], held[4], last_exit, held[5],
            has_signal, *numbers, bar_time.value, step.value, returns, volumes, track, track_count, streak,
            *(grids or Grids()).of(symbols), *out.arrays(),
        )  # fmt: skip
        by_symbol = {s.symbol: s for s in signals}
        return out.decisions(symbols, by_symbol, considered, Mode(list(Mode)[mode]), self.risk)


class _Answer:
    """The kernel's output arrays for one bar, and their reading as :class:`Decisions`."""

    def __init__(self, n: int) -> None:
        from tasks.strategy.kernel import MAX_LEGS

        self.close_code, self.stop_move = np.zeros(n, np.int8), np.full(n, np.nan)
        self.candidate, self.outcome, self.detail = (
            np.zeros(n, np.int64),
            np.zeros(n, np.int64),
            np.zeros((n, 2)),
        )
        self.sign, self.quantity, self.stop = np.zeros(n), np.zeros(n), np.zeros(n)
        self.tp_price, self.tp_quantity = np.full((n, MAX_LEGS), np.nan), np.zeros((n, MAX_LEGS))

    def arrays(self) -> tuple[np.ndarray, ...]:
        return (self.close_code, self.stop_move, self.candidate, self.outcome, self.detail, self.sign,
                self.quantity, self.stop, self.tp_price, self.tp_quantity)  # fmt: skip

    def decisions(
        self, symbols: list[str], signals: Mapping[str, Signal], considered: int, mode: Mode, risk: RiskLimits
    ) -> Decisions:
        from tasks.strategy import kernel as k

        out = Decisions()
        for i, symbol in enumerate(symbols):
            if self.close_code[i]:
                out.closes[symbol] = (
                    "signal turned" if self.close_code[i] == k.CLOSE_TURNED else "signal flat"
                )
            elif np.isfinite(self.stop_move[i]):
                out.stop_moves[symbol] = float(self.stop_move[i])
        for j in range(considered):
            i = int(self.candidate[j])
            symbol, code = symbols[i], int(self.outcome[j])
            if code > 0:
                out.vetoes.append((symbol, veto_reason(code, self.detail[j], mode, risk)))
                continue
            if code < 0:
                continue
            signal = signals[symbol]
            legs = tuple(
                (float(p), float(q))
                for p, q in zip(self.tp_price[i], self.tp_quantity[i], strict=True)
                if q > 0
            )
            side: Side = "long" if self.sign[i] > 0 else "short"
            entry = Entry(symbol, side, float(self.quantity[i]), float(self.stop[i]), legs, signal.bar_time,
                          signal.price, signal.p_up)  # fmt: skip
            out.entries.append(entry)
        return out


def veto_reason(code: int, detail: np.ndarray, mode: Mode, risk: RiskLimits) -> str:
    """A kernel veto code (with its numbers) in words."""
    from tasks.strategy import kernel as k

    if code == k.VETO_HALT:
        return "HALT: drawdown limit reached"
    if code == k.VETO_CONFIDENCE:
        return f"confidence {detail[0]:.3f} below {risk.min_confidence}"
    if code == k.VETO_HELD:
        return "a position in the symbol is open"
    if code == k.VETO_COOLDOWN:
        return f"cooldown: closed {pd.Timestamp(round(detail[0] * 1e6), unit='us', tz='UTC').isoformat()}"
    if code == k.VETO_POSITIONS:
        return f"{mode.value}: {int(detail[0])} positions open (max {int(detail[1])})"
    if code == k.VETO_NO_EQUITY:
        return "no equity"
    if code == k.VETO_EXPOSURE:
        return f"gross exposure {detail[0]:.2f} above {risk.max_gross_exposure}"
    if code == k.VETO_DISABLED:
        until = pd.Timestamp(round(detail[1] * 1e6), unit="us", tz="UTC").isoformat()
        return f"symbol disabled: {int(detail[0])} losing trades in a row; cool-off until {until}"
    if code == k.VETO_CORRELATED:
        return f"correlation-weighted exposure {detail[0]:.2f} above {risk.max_correlated_exposure}"
    return "size 0 (Kelly sees no edge, or the stop distance is 0)"
