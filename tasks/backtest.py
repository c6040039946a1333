"""Vectorised, cost-aware backtest from P(up) to positions to an equity curve.

Conventions (one bar = one candle of the interval):

- Row t of a symbol carries P(up) known at t's close and ``target_log_return`` r_t, the
  log return from t's close to the next close. A position chosen at t's close earns
  ``exp(r_t) - 1`` on the capital given to that symbol.
- Changing the position from a to b at t's close costs ``|b - a| * (fee + slippage)`` of
  that capital (taker fee by default; slippage in bps, or a multiple of ATR %).
- Perpetual futures pay funding: a position held across a funding time (every 8 h)
  pays ``position * rate`` (longs pay a positive rate, shorts receive it).
- The portfolio gives each symbol an equal share of capital, rebalanced every bar.

The policy is cost-aware: the expected edge of a long is ``(2p - 1) * E|r|`` (E|r| the
mean absolute bar return of the training window); it goes long when the edge beats the
round-trip cost times ``enter``, short when it is below minus that, and back to flat
only when the edge falls inside ``± exit`` times the cost — in between it keeps what it
holds (hysteresis), so it does not flip every bar. With costs far above any edge it
stays flat.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from core.settings import Settings
from tasks.strategy.policy import Policy, edge_scales, hold, momentum_positions

__all__ = ["Costs", "Policy", "backtest", "edge_scales", "hold", "momentum_positions", "policy_positions"]


@dataclass(frozen=True)
class Costs:
    """Trading costs as fractions of traded notional (bps / 10,000).

    Attributes:
        fee_bps: per side; 4 (Binance taker) by default, 2 for maker.
        slippage_bps: fixed slippage per side.
        slippage_atr: extra slippage per side as this multiple of ``atr_pct`` (0: off).
        funding_rate: per 8 h funding of perpetual futures (0.0001 = 0.01 %); 0 for spot.
        funding_hours: hours between funding times.
    """

    fee_bps: float = 4.0
    slippage_bps: float = 1.0
    slippage_atr: float = 0.0
    funding_rate: float = 0.0
    funding_hours: int = 8

    @classmethod
    def from_settings(cls, settings: Settings, market: str) -> Costs:
        """The configured costs: taker fee, slippage, and funding on futures only."""
        return cls(
            fee_bps=settings.taker_fee_bps,
            slippage_bps=settings.slippage_bps,
            funding_rate=settings.funding_rate_8h if market == "futures" else 0.0,
        )

    def per_side(self, atr_pct: np.ndarray | None = None) -> np.ndarray | float:
        """Cost per unit of traded notional (array when ATR-proportional slippage is on)."""
        base = (self.fee_bps + self.slippage_bps) / 1e4
        if self.slippage_atr and atr_pct is not None:
            return base + self.slippage_atr * np.nan_to_num(np.asarray(atr_pct, dtype=np.float64)) / 100
        return base


@dataclass(frozen=True)
class SymbolResult:
    """Per-bar arrays of one symbol's backtest."""

    position: np.ndarray
    gross: np.ndarray
    cost: np.ndarray
    funding: np.ndarray

    @property
    def net(self) -> np.ndarray:
        """Net simple return per bar on the symbol's capital."""
        return self.gross - self.cost - self.funding


def run_symbol(
    position: np.ndarray,
    log_return: np.ndarray,
    costs: Costs,
    atr_pct: np.ndarray | None = None,
    funding_bar: np.ndarray | None = None,
) -> SymbolResult:
    """Gross return, trading cost and funding of a position path (vectorised).

    ``funding_bar`` marks bars whose holding period crosses a funding time.
    """
    pos = np.asarray(position, dtype=np.float64)
    gross = pos * np.expm1(np.asarray(log_return, dtype=np.float64))
    traded = np.abs(np.diff(pos, prepend=0.0))
    cost = traded * costs.per_side(atr_pct)
    funding = np.zeros_like(gross)
    if costs.funding_rate and funding_bar is not None:
        funding = pos * costs.funding_rate * np.asarray(funding_bar, dtype=np.float64)
    return SymbolResult(pos, gross, np.asarray(cost, dtype=np.float64), funding)


def funding_bars(open_time: pd.Series, step: pd.Timedelta, hours: int = 8) -> np.ndarray:
    """1 where the bar's close (open + step) is a funding time (00, 08, 16 UTC), else 0."""
    close = pd.to_datetime(open_time, utc=True) + step
    on_time = (close.dt.hour % hours == 0) & (close.dt.minute == 0)
    return on_time.to_numpy(dtype=np.float64)


def trade_returns(result: SymbolResult, per_side: np.ndarray | float) -> np.ndarray:
    """Compounded net return of each trade (a run of one non-zero position).

    A trade carries its own entry and exit costs (a flip from long to short closes one
    trade and opens the next, each paying its side); one still open at the end has paid
    no exit yet.
    """
    pos = result.position
    n = len(pos)
    if not (pos != 0).any():
        return np.zeros(0)
    c = np.broadcast_to(np.asarray(per_side, dtype=np.float64), (n,))
    prev = np.concatenate([[0.0], pos[:-1]])
    changed = pos != prev
    trade_id = np.cumsum(changed)
    active = pos != 0
    log_growth = pd.Series(np.log1p(result.gross - result.funding)[active]).groupby(trade_id[active]).sum()
    entries = changed & active
    log_growth = log_growth.add(
        pd.Series(np.log1p(-np.abs(pos[entries]) * c[entries]), index=trade_id[entries]), fill_value=0.0
    )
    exits = changed & (prev != 0)
    log_growth = log_growth.add(
        pd.Series(np.log1p(-np.abs(prev[exits]) * c[exits]), index=trade_id[exits] - 1), fill_value=0.0
    )
    return np.asarray(np.expm1(log_growth.to_numpy()), dtype=np.float64)


def summary(
    net: np.ndarray,
    position: np.ndarray,
    cost: np.ndarray,
    bars_per_year: float,
    trades: np.ndarray,
) -> dict[str, float]:
    """Sharpe, Sortino, max drawdown, total return, win rate, profit factor, turnover, fees, exposure.

    ``net``/``cost`` are the portfolio's per-bar net return and cost; ``position`` is a
    (bars × symbols) matrix of weights; ``trades`` the trades' returns.
    """
    net = np.asarray(net, dtype=np.float64)
    equity = np.cumprod(1 + net)
    peak = np.maximum.accumulate(np.concatenate([[1.0], equity]))[1:]
    sd = net.std(ddof=1) if len(net) > 1 else 0.0
    downside = np.sqrt(np.mean(np.minimum(net, 0.0) ** 2)) if len(net) else 0.0
    gains, losses = trades[trades > 0].sum(), -trades[trades < 0].sum()
    pos = np.asarray(position, dtype=np.float64)
    pos = pos[:, None] if pos.ndim == 1 else pos  # bars × symbols
    turnover = np.abs(np.diff(pos, axis=0, prepend=0.0)).sum(axis=1)
    return {
        "sharpe": float(net.mean() / sd * np.sqrt(bars_per_year)) if sd > 0 else 0.0,
        "sortino": float(net.mean() / downside * np.sqrt(bars_per_year)) if downside > 0 else 0.0,
        "max_drawdown": float((equity / peak - 1).min()) if len(net) else 0.0,
        "total_return": float(equity[-1] - 1) if len(net) else 0.0,
        "win_rate": float((trades > 0).mean()) if len(trades) else 0.0,
        "profit_factor": float(gains / losses) if losses > 0 else (float("inf") if gains > 0 else 0.0),
        "turnover": float(turnover.sum()),
        "fees_paid": float((np.asarray(cost) * np.concatenate([[1.0], equity[:-1]])).sum()),
        "exposure": float((np.abs(pos) > 0).any(axis=1).mean()) if len(pos) else 0.0,
        "trades": float(len(trades)),
    }


@dataclass
class BacktestResult:
    """A portfolio backtest: per-bar series, the position matrix, and the figures.

    Attributes:
        net: portfolio net return per bar (index: open time).
        equity: equity curve starting from 1.
        positions: open time × symbol positions (per symbol's capital share).
        metrics: :func:`summary` of the portfolio.
        per_symbol: :func:`summary` of each symbol on its own capital.
    """

    net: pd.Series
    equity: pd.Series
    positions: pd.DataFrame
    metrics: dict[str, float]
    per_symbol: dict[str, dict[str, float]]


def backtest(
    frame: pd.DataFrame,
    positions: pd.Series,
    costs: Costs,
    step: pd.Timedelta,
) -> BacktestResult:
    """Equal-weight portfolio of per-symbol position paths (``positions`` aligned with ``frame``).

    ``frame`` needs ``symbol``, ``open_time``, ``target_log_return`` (and ``atr_pct`` when
    slippage is ATR-proportional). Each symbol's rows are taken in time order.
    """
    bars_per_year = pd.Timedelta(days=365.25) / step
    nets, costs_paid, weights, trades, per_symbol = {}, {}, {}, [], {}
    for symbol, rows in frame.assign(_pos=positions).sort_values("open_time").groupby("symbol", sort=True):
        atr = rows["atr_pct"].to_numpy() if "atr_pct" in rows else None
        result = run_symbol(
            rows["_pos"].to_numpy(),
            rows["target_log_return"].to_numpy(),
            costs,
            atr,
            funding_bars(rows["open_time"], step, costs.funding_hours) if costs.funding_rate else None,
        )
        index = pd.DatetimeIndex(rows["open_time"])
        nets[symbol] = pd.Series(result.net, index=index)
        costs_paid[symbol] = pd.Series(result.cost, index=index)
        weights[symbol] = pd.Series(result.position, index=index)
        symbol_trades = trade_returns(result, costs.per_side(atr))
        trades.append(symbol_trades)
        per_symbol[str(symbol)] = summary(
            result.net, result.position, result.cost, bars_per_year, symbol_trades
        )
    net_matrix = pd.DataFrame(nets).sort_index()
    share = 1.0 / net_matrix.notna().sum(axis=1)
    net = net_matrix.mean(axis=1)
    cost = pd.DataFrame(costs_paid).sort_index().mean(axis=1)
    pos = pd.DataFrame(weights).sort_index()
    all_trades = np.concatenate(trades) if trades else np.zeros(0)
    metrics = summary(net.to_numpy(), pos.mul(share, axis=0).fillna(0.0).to_numpy(), cost.to_numpy(),
                      bars_per_year, all_trades)  # fmt: skip
    return BacktestResult(net, (1 + net).cumprod(), pos, metrics, per_symbol)


def policy_positions(
    frame: pd.DataFrame, p_up: pd.Series, policy: Policy, costs: Costs, abs_return: dict[str, float]
) -> pd.Series:
    """The policy's positions for every row (per symbol, in time order), aligned with ``frame``.

    ``abs_return``: each symbol's mean absolute bar return over the training window
    (the size of the edge a correct call earns); symbols without one use the mean.
    """
    out = pd.Series(0.0, index=frame.index)
    ordered = frame.assign(_p=p_up).sort_values("open_time")
    for symbol, rows in ordered.groupby("symbol"):
        atr = rows["atr_pct"].to_numpy() if "atr_pct" in rows else None
        scale = edge_scales(abs_return, [str(symbol)])[0]
        out.loc[rows.index] = policy.positions(rows["_p"].to_numpy(), scale, costs.per_side(atr))
    return out


def baseline_positions(frame: pd.DataFrame, step: pd.Timedelta) -> dict[str, pd.Series]:
    """Positions of the baselines on the same rows: buy-and-hold, momentum fallback, flat.

    The momentum fallback reads the 24 h change: ``log_ret_24`` at 1h; at other intervals
    the sum of the last 24 h of ``log_ret_1`` within the rows (flat until a day has passed).
    """
    bars = int(pd.Timedelta(hours=24) / step)
    momentum = pd.Series(0.0, index=frame.index)
    for _, rows in frame.sort_values("open_time").groupby("symbol"):
        if bars == 24 and "log_ret_24" in rows:
            day = rows["log_ret_24"]
        else:
            day = rows["log_ret_1"].rolling(bars, min_periods=bars).sum()
        momentum.loc[rows.index] = momentum_positions(day.to_numpy())
    return {
        "buy_and_hold": pd.Series(1.0, index=frame.index),
        "momentum_fallback": momentum,
        "always_flat": pd.Series(0.0, index=frame.index),
    }
