"""Vectorised, cost-aware backtest from P(up) to positions to an equity curve.

Conventions (one bar = one candle of the interval):

- Row t of a symbol carries P(up) known at t's close and ``target_log_return`` r_t, the
  log return from t's close to the next close. A position chosen at t's close earns
  ``exp(r_t) - 1`` on the capital given to that symbol.
- Changing the position from a to b at t's close costs ``|b - a| * (fee + slippage)`` of
  that capital (taker fee by default; slippage in bps, or a multiple of ATR %).
- Perpetual futures pay funding: a position held across a funding time (every 8 h)
  pays ``position * rate`` (longs pay a positive rate, shorts receive it); the row's
  holding period is (t's close, next close], the span of its target.
- A position still open on the last row pays its exit fee there; where bars are missing
  between two rows it is closed before the gap and reopened after (both sides paid).
- Spot is long only (``Costs.long_only``): the policy and the momentum fallback go flat
  where they would short.
- The portfolio gives each symbol an equal share of capital, rebalanced every bar.

The policy is cost-aware: the expected edge of a long is ``(2p - 1) * E|r|`` (E|r| the
mean absolute bar return of the training window); it goes long when the edge beats the
round-trip cost times ``enter``, short when it is below minus that, and back to flat
only when the edge falls inside ``± exit`` times the cost — in between it keeps what it
holds (hysteresis), so it does not flip every bar. With costs far above any edge it
stays flat.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from core.settings import Settings
from tasks.strategy.policy import Policy, edge_scales, hold, momentum_positions

__all__ = ["Costs", "Policy", "backtest", "edge_scales", "hold", "momentum_positions", "policy_positions"]


@dataclass(frozen=True)
class Costs:
    """Trading costs of one market, as fractions of traded notional (bps / 10,000).

    Attributes:
        fee_bps: taker fee per side (Binance regular tier: spot 10, USD-M futures 5).
        slippage_bps: fixed slippage per side.
        slippage_atr: extra slippage per side as this multiple of ``atr_pct`` (0: off).
        funding_rate: per 8 h funding of perpetual futures (0.0001 = 0.01 %); 0 for spot.
        funding_hours: hours between funding times.
        maker_fee_bps: fee of resting (limit) orders per side (spot 10, futures 2).
        long_only: no shorting (spot: selling what one does not hold is not possible).
        market: ``spot`` or ``futures``, for reports.

    The defaults are Binance spot's regular tier: 10 bps per side, long only.
    """

    fee_bps: float = 10.0
    slippage_bps: float = 1.0
    slippage_atr: float = 0.0
    funding_rate: float = 0.0
    funding_hours: int = 8
    maker_fee_bps: float = 10.0
    long_only: bool = True
    market: str = "spot"

    @classmethod
    def from_settings(cls, settings: Settings, market: str) -> Costs:
        """The market's configured costs: its taker/maker fees, slippage, funding and shorting."""
        taker, maker = settings.fees_bps(market)
        futures = market == "futures"
        return cls(
            fee_bps=taker,
            slippage_bps=settings.slippage_bps,
            funding_rate=settings.funding_rate_8h if futures else 0.0,
            maker_fee_bps=maker,
            long_only=not futures,
            market=market,
        )

    def per_side(self, atr_pct: np.ndarray | None = None) -> np.ndarray | float:
        """Cost per unit of traded notional (array when ATR-proportional slippage is on)."""
        base = (self.fee_bps + self.slippage_bps) / 1e4
        if self.slippage_atr and atr_pct is not None:
            return base + self.slippage_atr * np.nan_to_num(np.asarray(atr_pct, dtype=np.float64)) / 100
        return base

    def tradable(self, policy: Policy) -> Policy:
        """``policy`` as this market lets it trade (no shorts where the market is long only)."""
        return replace(policy, allow_short=False) if self.long_only and policy.allow_short else policy


@dataclass(frozen=True)
class SymbolResult:
    """Per-bar arrays of one symbol's backtest."""

    position: np.ndarray
    gross: np.ndarray
    cost: np.ndarray
    funding: np.ndarray
    segment_start: np.ndarray | None = None

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
    segment_start: np.ndarray | None = None,
) -> SymbolResult:
    """Gross return, trading cost and funding of a position path (vectorised).

    ``funding_bar`` counts the funding times each bar's holding period crosses.
    ``segment_start`` marks rows after a gap in the rows (missing bars): a position is
    closed before a gap and reopened after it, paying both sides, because nothing is
    known of the bars in between. A position still open on the last row pays its exit.
    """
    pos = np.asarray(position, dtype=np.float64)
    gross = pos * np.expm1(np.asarray(log_return, dtype=np.float64))
    starts, ends = _segments(len(pos), segment_start)
    prev = np.where(starts, 0.0, np.concatenate([[0.0], pos[:-1]]))
    traded = np.abs(pos - prev) + np.where(ends, np.abs(pos), 0.0)
    cost = traded * costs.per_side(atr_pct)
    funding = np.zeros_like(gross)
    if costs.funding_rate and funding_bar is not None:
        funding = pos * costs.funding_rate * np.asarray(funding_bar, dtype=np.float64)
    return SymbolResult(pos, gross, np.asarray(cost, dtype=np.float64), funding, starts)


def _segments(n: int, segment_start: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """(first row, last row) flags of each run of contiguous rows."""
    starts = (
        np.zeros(n, dtype=bool) if segment_start is None else np.asarray(segment_start, dtype=bool).copy()
    )
    if n:
        starts[0] = True
    ends = np.concatenate([starts[1:], [True]]) if n else starts
    return starts, ends


def gap_starts(open_time: pd.Series, step: pd.Timedelta) -> np.ndarray:
    """True on each row whose previous row is more than one interval earlier (bars missing)."""
    t = pd.to_datetime(open_time, utc=True)
    return (t.diff() > step).to_numpy()


def funding_bars(open_time: pd.Series, step: pd.Timedelta, hours: int = 8) -> np.ndarray:
    """How many funding times (00, 08, 16 UTC) each bar's holding period crosses.

    A row's position is opened at its bar's close (open + step) and held to the next
    close (open + 2·step), the span of its target; Binance charges funding to positions
    held at a funding time, so the funding times in (open + step, open + 2·step] count.
    """
    period = pd.Timedelta(hours=hours).value
    t = pd.to_datetime(open_time, utc=True).dt.as_unit("ns").astype("int64").to_numpy()
    entered, left = t + step.value, t + 2 * step.value
    return (np.floor_divide(left, period) - np.floor_divide(entered, period)).astype(np.float64)


def trade_returns(result: SymbolResult, per_side: np.ndarray | float) -> np.ndarray:
    """Compounded net return of each trade (a run of one non-zero position).

    A trade carries its own entry and exit costs (a flip from long to short closes one
    trade and opens the next, each paying its side; a gap in the rows ends a trade); one
    still open on the last row pays its exit there.
    """
    pos = result.position
    n = len(pos)
    if not (pos != 0).any():
        return np.zeros(0)
    c = np.broadcast_to(np.asarray(per_side, dtype=np.float64), (n,))
    starts, ends = _segments(n, result.segment_start)
    prev = np.where(starts, 0.0, np.concatenate([[0.0], pos[:-1]]))
    active = pos != 0
    entries = active & (pos != prev)
    trade_id = np.cumsum(entries)
    following = np.concatenate([pos[1:], [0.0]])
    exits = active & (ends | (following != pos))
    log_growth = pd.Series(np.log1p(result.gross - result.funding)[active]).groupby(trade_id[active]).sum()
    log_growth = log_growth.add(
        pd.Series(np.log1p(-np.abs(pos[entries]) * c[entries]), index=trade_id[entries]), fill_value=0.0
    )
    log_growth = log_growth.add(
        pd.Series(np.log1p(-np.abs(pos[exits]) * c[exits]), index=trade_id[exits]), fill_value=0.0
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
            gap_starts(rows["open_time"], step),
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
    policy = costs.tradable(policy)
    out = pd.Series(0.0, index=frame.index)
    ordered = frame.assign(_p=p_up).sort_values("open_time")
    for symbol, rows in ordered.groupby("symbol"):
        atr = rows["atr_pct"].to_numpy() if "atr_pct" in rows else None
        scale = edge_scales(abs_return, [str(symbol)])[0]
        out.loc[rows.index] = policy.positions(rows["_p"].to_numpy(), scale, costs.per_side(atr))
    return out


def baseline_positions(
    frame: pd.DataFrame, step: pd.Timedelta, long_only: bool = False
) -> dict[str, pd.Series]:
    """Positions of the baselines on the same rows: buy-and-hold, momentum fallback, flat.

    The momentum fallback reads the 24 h change: ``log_ret_24`` at 1h; at other intervals
    the sum of the last 24 h of ``log_ret_1`` within the rows (flat until a day has passed).
    ``long_only``: its SELL goes flat instead of short (spot).
    """
    bars = int(pd.Timedelta(hours=24) / step)
    momentum = pd.Series(0.0, index=frame.index)
    for _, rows in frame.sort_values("open_time").groupby("symbol"):
        if bars == 24 and "log_ret_24" in rows:
            day = rows["log_ret_24"]
        else:
            day = rows["log_ret_1"].rolling(bars, min_periods=bars).sum()
        path = momentum_positions(day.to_numpy())
        momentum.loc[rows.index] = np.maximum(path, 0.0) if long_only else path
    return {
        "buy_and_hold": pd.Series(1.0, index=frame.index),
        "momentum_fallback": momentum,
        "always_flat": pd.Series(0.0, index=frame.index),
    }
