"""The backtest with exits: the strategy bar by bar, filled by :mod:`tasks.fills`, as the paper broker fills.

Per bar t of the timeline, in the order the live flow meets them:

1. what was decided at the previous close fills at t's open: closes and entries at market
   (slippage, taker fee), stop moves take effect;
2. t's high and low trigger stops and take-profits (the stop first when both are touched);
3. futures pay or receive funding at each 8-hour mark in (t, t + step] (positions opened
   before it), at t's close;
4. the book is marked at t's close (equity, peak, the day's start), the best close of each
   position updated;
5. :meth:`Strategy.decide` sees the book and t's signals.

Quantities and prices go through the venue's grids (``rules``) exactly as the broker
rounds them, so replaying the same candles through the live loop with the paper broker
gives the same trades; :func:`summary` turns the result into the evaluation's figures.
The loop itself is compiled (:func:`tasks.strategy.loop.run`) and decides each bar with
:func:`tasks.strategy.kernel.decide_bar`, the function the live flow's
:meth:`~tasks.strategy.engine.Strategy.decide` calls.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import pandas as pd

from tasks.fills import Bar
from tasks.strategy.engine import Grids, Signal, Strategy
from tasks.strategy.market import MarketWindow
from tasks.strategy.risk import Held, Mode, RiskLimits

_FUNDING_EVERY = pd.Timedelta(hours=8)


@dataclass(frozen=True)
class Venue:
    """What a fill costs: the paper broker's parameters.

    Attributes:
        fee_bps: taker fee per side.
        slippage_bps: slippage per side on market fills and stops.
        funding_bps_8h: futures funding per 8 h (longs pay it when positive); 0 on spot.
        cash: starting equity (quote).
    """

    fee_bps: float = 10.0
    slippage_bps: float = 1.0
    funding_bps_8h: float = 0.0
    cash: float = 10_000.0


@dataclass
class Trade:
    """A closed position."""

    symbol: str
    side: str
    quantity: float
    entry_time: pd.Timestamp
    entry_price: float
    exit_time: pd.Timestamp
    realised: float
    fees: float
    funding: float
    risk: float
    exits: list[str] = field(default_factory=list)

    @property
    def net(self) -> float:
        """Realised P&L plus funding less fees."""
        return self.realised + self.funding - self.fees

    @property
    def r_multiple(self) -> float:
        """Net P&L in units of the entry's risk (stop distance × quantity)."""
        return self.net / self.risk if self.risk > 0 else 0.0


class Simulation:
    """The backtest's answer: closed trades, the equity at every close, vetoes, what is still open.

    The kernel's arrays are kept; :attr:`trades` and :attr:`vetoes` are read from them when asked.
    """

    def __init__(self, symbols: list[str], times: pd.DatetimeIndex, answer: tuple, risk: RiskLimits) -> None:  # type: ignore[type-arg]
        equity, self._trade_f, self._trade_i, self._vetoes, book, money = answer
        self.symbols, self.times, self._risk = symbols, times, risk
        self.equity = pd.Series(equity, index=times, dtype=np.float64)
        self.fees, self.funding = float(money[1]), float(money[2])
        side, pos, tp_price, tp_quantity, opened = book
        self.open_positions: dict[str, Held] = {}
        for i in np.flatnonzero(side):
            legs = [(float(p), float(q)) for p, q in zip(tp_price[i], tp_quantity[i], strict=True) if q > 0]
            quantity, entry, stop, initial_stop, best = (float(v) for v in pos[i, :5])
            since = pd.Timestamp(int(opened[i, 0]), tz="UTC")
            direction = "long" if side[i] > 0 else "short"
            held = Held(symbols[i], direction, quantity, entry, stop, initial_stop, best, since, legs)  # type: ignore[arg-type]
            self.open_positions[symbols[i]] = held

    @property
    def r_multiples(self) -> np.ndarray:
        """Each closed trade's net P&L over its risk (0 where the risk is 0)."""
        from tasks.strategy.loop import T_FEES, T_FUNDING, T_REALISED, T_RISK

        f = self._trade_f
        net = f[:, T_REALISED] + f[:, T_FUNDING] - f[:, T_FEES]
        risk = f[:, T_RISK]
        return np.divide(net, risk, out=np.zeros(len(f)), where=risk > 0)

    @cached_property
    def trades(self) -> list[Trade]:
        """The closed positions, in the journal's order: by closing bar, then by opening."""
        from tasks.strategy import kernel, loop

        names = {kernel.LEG_CLOSE: "close", kernel.LEG_STOP: "stop"}
        names |= {kernel.LEG_TP + j: f"tp{j + 1}" for j in range(kernel.MAX_LEGS)}
        out = []
        order = np.lexsort((self._trade_i[:, loop.T_OPENED_AS], self._trade_i[:, loop.T_EXIT_TIME]))
        for f, i in zip(self._trade_f[order].tolist(), self._trade_i[order].tolist(), strict=True):
            out.append(
                Trade(self.symbols[i[loop.T_SYMBOL]], "long" if f[loop.T_SIDE] > 0 else "short",
                      f[loop.T_QTY],
                      pd.Timestamp(i[loop.T_ENTRY_TIME], tz="UTC"), f[loop.T_ENTRY],
                      pd.Timestamp(i[loop.T_EXIT_TIME], tz="UTC"), f[loop.T_REALISED], f[loop.T_FEES],
                      f[loop.T_FUNDING], f[loop.T_RISK], [names[c] for c in i[loop.T_LEGS:] if c])
            )  # fmt: skip
        return out

    @cached_property
    def vetoes(self) -> list[tuple[pd.Timestamp, str, str]]:
        """(bar, symbol, reason) of every entry the risk engine refused."""
        from tasks.strategy.engine import veto_reason

        out = []
        for bar, symbol, code, first, second, mode in self._vetoes.tolist():
            reason = veto_reason(int(code), np.array([first, second]), list(Mode)[int(mode)], self._risk)
            out.append((self.times[int(bar)], self.symbols[int(symbol)], reason))
        return out


def signals_at(rows: pd.DataFrame, abs_return: Mapping[str, float], cost: float) -> list[Signal]:
    """The bar's :class:`Signal` per symbol from rows with ``p_up``, ``close``, ``atr_pct``, ``regime``."""
    typical = float(np.mean(list(abs_return.values()))) if abs_return else 0.0
    regime = rows["regime"].to_numpy(dtype=np.float64) if "regime" in rows else np.full(len(rows), np.nan)
    out = []
    numbers = rows[["p_up", "close", "atr_pct"]].to_numpy(dtype=np.float64)
    for symbol, when, (p_up, close, atr), code in zip(
        rows["symbol"].astype(str), rows["open_time"], numbers, regime, strict=True
    ):
        scale = float(abs_return.get(symbol, typical))
        signal = Signal(
            symbol, pd.Timestamp(when), float(p_up), float(close), float(atr), float(code), scale, cost
        )
        out.append(signal)
    return out


def bars_of(rows: pd.DataFrame) -> dict[str, Bar]:
    """Symbol → its :class:`~tasks.fills.Bar` from rows with open, high, low, close."""
    prices = rows[["open", "high", "low", "close"]].to_numpy(dtype=np.float64)
    return {str(s): Bar(*map(float, p)) for s, p in zip(rows["symbol"], prices, strict=True)}


def simulate(
    frame: pd.DataFrame,
    strategy: Strategy,
    step: pd.Timedelta,
    venue: Venue,
    abs_return: Mapping[str, float],
    cost: float,
    rules: Mapping[str, object] | None = None,
    then: pd.DataFrame | None = None,
    history: pd.DataFrame | None = None,
) -> Simulation:
    """Run ``strategy`` over ``frame`` (one row per symbol and bar: OHLC, ``p_up``, ``atr_pct``, ``regime``).

    ``cost`` is the per-side cost the policy weighs edges against; ``venue`` what fills cost;
    ``rules`` the venue's grids per symbol (the broker's ``SymbolRules``).
    ``then``: the rows of the bar after the last: what the last close decided fills at its
    open (as the live loop fills it), and nothing else of it is simulated. ``history``:
    candles before the first bar (``symbol``, ``open_time``, ``close``, ``quote_volume``)
    that fill the market window the ranking and the correlation check read (without it the
    window starts empty: correlations unknown, taken as 1, until it fills). ``frame``'s own
    ``quote_volume`` column, when present, feeds the liquidity rank.
    """
    from tasks.strategy.loop import run

    symbols = sorted(frame["symbol"].astype(str).unique())
    times = pd.DatetimeIndex(frame["open_time"].drop_duplicates().sort_values())
    column = pd.Index(symbols).get_indexer(pd.Index(frame["symbol"].astype(str)))
    row = times.get_indexer(pd.Index(frame["open_time"]))
    shape = (len(times), len(symbols))
    has_bar = np.zeros(shape, np.bool_)
    has_bar[row, column] = True
    grid = {}
    for name in ("open", "high", "low", "close", "p_up", "atr_pct", "regime", "quote_volume"):
        values = np.full(shape, np.nan)
        if name in frame:
            values[row, column] = frame[name].to_numpy(dtype=np.float64)
        grid[name] = values
    typical = float(np.mean(list(abs_return.values()))) if abs_return else 0.0
    edge_scale = np.array([float(abs_return.get(s, typical)) for s in symbols])
    then_open, then_has, then_time = np.full(len(symbols), np.nan), np.zeros(len(symbols), np.bool_), 0
    if then is not None and len(then):
        where = pd.Index(symbols).get_indexer(pd.Index(then["symbol"].astype(str)))
        known = where >= 0
        then_open[where[known]] = then["open"].to_numpy(dtype=np.float64)[known]
        then_has[where[known]] = True
        then_time = pd.Timestamp(str(then["open_time"].iloc[0])).value
    window = MarketWindow.of_rows(history) if history is not None and len(history) else MarketWindow.empty()
    returns, volumes, last_close = window.arrays(symbols, strategy.window)
    params, atr_table, profiles = strategy.parameters
    answer = run(
        params, atr_table, profiles, times.as_unit("ns").asi8, step.value,
        grid["open"], grid["high"], grid["low"], grid["close"], has_bar, grid["p_up"], grid["atr_pct"],
        grid["regime"], edge_scale, np.full(len(symbols), float(cost)), grid["quote_volume"],
        returns, volumes, last_close, *Grids(rules).of(symbols),
        venue.fee_bps, venue.slippage_bps, venue.funding_bps_8h, venue.cash, then_open, then_has, then_time,
    )  # fmt: skip
    return Simulation(symbols, times, answer, strategy.risk)


def summary(simulation: Simulation, step: pd.Timedelta) -> dict[str, float]:
    """Net Sharpe (per bar, annualised), total return, max drawdown, trades, win rate, fees, funding."""
    equity = simulation.equity
    if equity.empty:
        return {"sharpe": 0.0, "total_return": 0.0, "max_drawdown": 0.0, "trades": 0.0}
    start = equity.iloc[0] if len(equity) else 1.0
    returns = equity.pct_change().fillna(equity.iloc[0] / start - 1)
    sd = returns.std(ddof=1)
    bars_per_year = pd.Timedelta(days=365.25) / step
    r = simulation.r_multiples
    return {
        "sharpe": float(returns.mean() / sd * np.sqrt(bars_per_year)) if sd > 0 else 0.0,
        "total_return": float(equity.iloc[-1] / start - 1),
        "max_drawdown": float((equity / equity.cummax() - 1).min()),
        "trades": float(len(r)),
        "win_rate": float((r > 0).mean()) if len(r) else 0.0,
        "mean_r": float(r.mean()) if len(r) else 0.0,
        "fees_paid": float(simulation.fees),
        "funding_paid": float(simulation.funding),
    }
