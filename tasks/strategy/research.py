"""Strategy research: position policies over OOF P(up), chosen by nested walk-forward.

Pure maths for ``bench/strategy.py``. A :class:`Candidate` is one way to trade a horizon's
stacked P(up): optional smoothing of P (a causal EMA per symbol), the cost-aware policy's
entry/exit thresholds (hysteresis), and optional volatility targeting (size at entry =
target vol / recent vol, capped at 1, held for the position's life), and optionally
maker-priced entries (:func:`maker_path`: a post-only limit at the decision bar's close that
fills only when the next bar trades through it). Positions earn the next bar's return
whatever the model's horizon; a horizon-h model's edge is measured against the h-bar move,
so its trades are meant to last about h bars. :func:`backtest_entries` is the backtest with
maker-priced entries where a limit order filled (exits stay taker).

:func:`nested_choice` picks, for each test fold, the candidate with the best net Sharpe
on the earlier folds only (flat when none beats 0), so the reported figures of the chosen
policy never helped choose it. :func:`universe_as_of` picks each period's symbols from
the candles before it (no survivorship from today's top-N).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from itertools import pairwise

import numpy as np
import pandas as pd

from tasks.backtest import (
    BacktestResult,
    Costs,
    Policy,
    funding_bars,
    gap_starts,
    run_symbol,
    summary,
    trade_returns,
)
from tasks.strategy.policy import edge_scales

#: The name :func:`nested_choice` gives "stay flat" (no candidate beat 0 on earlier folds).
FLAT = "flat"


@dataclass(frozen=True)
class Candidate:
    """One policy for one horizon's P(up).

    Attributes:
        horizon: the model's label horizon in bars.
        name: short label (``cost-aware``, ``smoothed``, ...).
        smooth: EMA span over P(up) per symbol (1: none).
        enter: open when the expected h-bar edge > enter × round-trip cost.
        exit: close when it falls below exit × round-trip cost.
        vol_target: size positions to the symbol's typical volatility (entry-time size).
        maker: enter with a post-only limit at the decision bar's close (:func:`maker_path`),
            paying the maker fee; exits stay market orders at the taker fee.
        through_bps: how far (bps of the limit) the next bar must trade through the limit
            for a maker entry to count as filled (a stand-in for queue position).
    """

    horizon: int
    name: str
    smooth: int = 1
    enter: float = 1.0
    exit: float = 0.25
    vol_target: bool = False
    maker: bool = False
    through_bps: float = 1.0

    @property
    def key(self) -> str:
        """``h<horizon> <name>``: the row label in tables and MLflow runs."""
        return f"h{self.horizon} {self.name}"


def candidates(horizons: Sequence[int]) -> list[Candidate]:
    """The researched grid: six policies per horizon (the first is today's default), twice.

    Each policy with market (taker) entries, followed by its twin with maker entries
    (``<name> maker``, the same thresholds).
    """
    out = []
    for h in horizons:
        span = max(2, min(h, 12))  # smoothing over about one holding period
        taker = [
            Candidate(h, "cost-aware"),
            Candidate(h, "eager", enter=0.5, exit=0.125),
            Candidate(h, "patient", enter=2.0, exit=0.5),
            Candidate(h, "smoothed", smooth=span),
            Candidate(h, "vol-target", vol_target=True),
            Candidate(h, "smoothed vol-target", smooth=span, vol_target=True),
        ]
        out += [twin for c in taker for twin in (c, replace(c, name=f"{c.name} maker", maker=True))]
    return out


def positions(
    rows: pd.DataFrame,
    p_up: pd.Series,
    candidate: Candidate,
    costs: Costs,
    abs_return: Mapping[str, float],
    typical_vol: Mapping[str, float],
) -> pd.Series:
    """``candidate``'s positions for every row (per symbol in time order), aligned with ``rows``.

    ``rows`` needs ``symbol``, ``open_time`` and ``realized_vol_24`` (for vol targeting),
    and for maker entries ``close`` (the limit) and ``next_low``/``next_high`` (the bar the
    order rests in, :func:`resting_bars`);
    ``abs_return``: each symbol's mean |h-bar return| before the first row;
    ``typical_vol``: each symbol's median ``realized_vol_24`` before the first row.

    The policy's thresholds are the same with maker entries (in units of the taker round
    trip), so a maker candidate wants the same positions as its taker twin and differs only
    in how (and whether) it gets them.
    """
    policy = costs.tradable(Policy(enter=candidate.enter, exit=candidate.exit))
    out = pd.Series(0.0, index=rows.index)
    ordered = rows.assign(_p=p_up).sort_values("open_time")
    for symbol, group in ordered.groupby("symbol"):
        p = group["_p"]
        if candidate.smooth > 1:
            p = p.ewm(span=candidate.smooth, adjust=False).mean()
        scale = edge_scales(dict(abs_return), [str(symbol)])[0]
        side = policy.positions(p.to_numpy(), scale, costs.per_side(None))
        if candidate.maker:
            side = maker_path(
                side,
                group["close"].to_numpy(dtype=np.float64),
                group["next_low"].to_numpy(dtype=np.float64),
                group["next_high"].to_numpy(dtype=np.float64),
                candidate.through_bps,
            )
        if candidate.vol_target:
            vol = group["realized_vol_24"].to_numpy(dtype=np.float64)
            target = typical_vol.get(str(symbol), float(np.nanmedian(vol)))
            side = side * entry_sizes(side, np.clip(target / np.where(vol > 0, vol, np.nan), 0.0, 1.0))
        out.loc[group.index] = side
    return out


def resting_bars(rows: pd.DataFrame, candles: Mapping[str, pd.DataFrame], step: pd.Timedelta) -> pd.DataFrame:
    """``next_high``/``next_low`` of each row: the candle opening one ``step`` after the row's.

    That is the bar a limit order placed at the row's close rests in; NaN where that candle
    is missing (the order cannot be known to fill). ``candles``: symbol → candles indexed by
    open time (the store's frames).
    """
    out = pd.DataFrame(np.nan, index=rows.index, columns=["next_high", "next_low"])
    at = pd.to_datetime(rows["open_time"], utc=True).dt.as_unit("ns") + step
    for symbol, index in rows.groupby("symbol").groups.items():
        frame = candles.get(str(symbol))
        if frame is None or frame.empty:
            continue
        bars = frame[["high", "low"]].set_axis(pd.DatetimeIndex(frame.index).as_unit("ns"))
        bars = bars[~bars.index.duplicated(keep="last")].reindex(pd.DatetimeIndex(at.loc[index]))
        out.loc[index, "next_high"] = bars["high"].to_numpy(dtype=np.float64)
        out.loc[index, "next_low"] = bars["low"].to_numpy(dtype=np.float64)
    return out


def maker_path(
    side: np.ndarray,
    limit: np.ndarray,
    next_low: np.ndarray,
    next_high: np.ndarray,
    through_bps: float = 1.0,
) -> np.ndarray:
    """The positions one symbol gets when it enters with post-only limit orders (row order = time).

    ``side``: the position the policy wants at each row's close (its taker path). Where it
    wants a position it does not hold, a limit order at ``limit`` (the row's close) rests in
    the next bar; it fills when that bar trades through the limit by ``through_bps`` (long:
    ``next_low <= limit × (1 − through)`` and below the limit; short: ``next_high`` above it
    by as much), at the limit price, so the filled row earns the row's close-to-close return
    like a market entry would. Unfilled, the row stays flat and the order is placed again at
    the next row while the policy still wants that side; once filled the position is held
    as the taker path holds it, and it is closed (at market) or flipped when the wanted side
    changes. Row t's fill reads only ``limit``, ``next_low``, ``next_high`` of row t (bar
    t+1), and ``side`` up to t. NaN bars (missing candle) do not fill.
    """
    side = np.asarray(side, dtype=np.float64)
    n = len(side)
    if n == 0:
        return side.copy()
    limit, low, high = (np.asarray(a, dtype=np.float64) for a in (limit, next_low, next_high))
    through = through_bps / 1e4
    with np.errstate(invalid="ignore"):
        long_fill = (low < limit) & (low <= limit * (1 - through))
        short_fill = (high > limit) & (high >= limit * (1 + through))
    fills = np.where(side > 0, long_fill, np.where(side < 0, short_fill, False))
    # Runs of one wanted position: held from the run's first fill to its end.
    new_run = np.concatenate([[True], side[1:] != side[:-1]])
    run_start = np.maximum.accumulate(np.where(new_run, np.arange(n), 0))
    last_fill = np.maximum.accumulate(np.where(fills, np.arange(n), -1))
    return np.where((side != 0) & (last_fill >= run_start), side, 0.0)


def openings(rows: pd.DataFrame, position: pd.Series) -> pd.Series:
    """True where a symbol's position opens or changes side/size against its previous row.

    For a maker candidate's own path these are exactly its limit fills.
    """
    ordered = rows[["symbol", "open_time"]].assign(_p=position).sort_values("open_time", kind="stable")
    previous = ordered.groupby("symbol")["_p"].shift(1).fillna(0.0)
    opened = (ordered["_p"] != 0) & (ordered["_p"] != previous)
    return opened.reindex(rows.index)


@dataclass
class EntryBacktest(BacktestResult):
    """A backtest with its portfolio cost per bar (fees and slippage, simple fractions of capital)."""

    cost: pd.Series = field(default_factory=lambda: pd.Series(dtype=np.float64))


def backtest_entries(
    frame: pd.DataFrame,
    positions: pd.Series,
    costs: Costs,
    step: pd.Timedelta,
    maker: pd.Series | None = None,
) -> EntryBacktest:
    """:func:`tasks.backtest.backtest`, with the entries on ``maker`` rows priced as maker fills.

    ``maker`` (aligned with ``frame``): rows where the position opened by a limit fill; the
    opened notional pays ``costs.maker_fee_bps`` (no slippage: a fill at the limit price)
    instead of the taker fee plus slippage. Everything else (exits, flips' closing legs,
    re-entries after a gap in the rows, funding) is priced as the backtest prices it;
    without ``maker`` the figures are the backtest's. Trades' returns (win rate, profit
    factor) carry their entry's own fee.
    """
    bars_per_year = pd.Timedelta(days=365.25) / step
    marked = frame.assign(_pos=positions, _maker=False if maker is None else maker.astype(bool))
    nets, costs_paid, weights, trades, per_symbol = {}, {}, {}, [], {}
    for symbol, rows in marked.sort_values("open_time").groupby("symbol", sort=True):
        atr = rows["atr_pct"].to_numpy() if "atr_pct" in rows else None
        starts = gap_starts(rows["open_time"], step).copy()
        result = run_symbol(
            rows["_pos"].to_numpy(),
            rows["target_log_return"].to_numpy(),
            costs,
            atr,
            funding_bars(rows["open_time"], step, costs.funding_hours) if costs.funding_rate else None,
            starts,
        )
        pos = result.position
        taker = np.broadcast_to(np.asarray(costs.per_side(atr), dtype=np.float64), pos.shape)
        starts[:1] = True
        prev = np.where(starts, 0.0, np.concatenate([[0.0], pos[:-1]]))
        entries = (pos != 0) & (pos != prev)
        filled = entries & rows["_maker"].to_numpy(dtype=bool)
        saving = np.where(filled, np.abs(pos) * (taker - costs.maker_fee_bps / 1e4), 0.0)
        result = replace(result, cost=result.cost - saving)
        symbol_trades = trade_returns(result, taker)
        if filled.any():  # trade_returns charged the taker fee on each entry: reprice maker entries
            size = np.abs(pos[entries])
            fix = (1 - size * costs.maker_fee_bps / 1e4) / (1 - size * taker[entries])
            symbol_trades = (1 + symbol_trades) * np.where(filled[entries], fix, 1.0) - 1
        index = pd.DatetimeIndex(rows["open_time"])
        nets[symbol] = pd.Series(result.net, index=index)
        costs_paid[symbol] = pd.Series(result.cost, index=index)
        weights[symbol] = pd.Series(pos, index=index)
        trades.append(symbol_trades)
        per_symbol[str(symbol)] = summary(result.net, pos, result.cost, bars_per_year, symbol_trades)
    net_matrix = pd.DataFrame(nets).sort_index()
    share = 1.0 / net_matrix.notna().sum(axis=1)
    net = net_matrix.mean(axis=1)
    cost = pd.DataFrame(costs_paid).sort_index().mean(axis=1)
    weight = pd.DataFrame(weights).sort_index()
    all_trades = np.concatenate(trades) if trades else np.zeros(0)
    metrics = summary(
        net.to_numpy(), weight.mul(share, axis=0).fillna(0.0).to_numpy(), cost.to_numpy(), bars_per_year,
        all_trades,
    )  # fmt: skip
    return EntryBacktest(net, (1 + net).cumprod(), weight, metrics, per_symbol, cost)


def maker_figures(
    rows: pd.DataFrame, taker: pd.Series, maker: pd.Series, step: pd.Timedelta
) -> dict[str, float]:
    """How a maker candidate's path compares with its taker twin's on the same ``rows``.

    ``orders``: rows where a limit order rested (the taker twin held a position the maker
    path did not yet hold, or the maker path filled there); ``fill_rate``: fills / orders;
    ``entries_filled``: fills / the taker twin's entries (each wanted position is filled at
    most once); ``missed_per_year``: the gross return the taker twin earned on the rows the
    maker path waited (its position times the bar's simple return, portfolio mean over
    symbols per bar, summed, per year) — the cost of the moves a resting order misses.
    """
    fills = openings(rows, maker) & (maker != 0)
    waiting = (taker != 0) & (maker == 0)
    entries = openings(rows, taker) & (taker != 0)
    orders = int(fills.sum() + waiting.sum())
    missed = (taker * np.expm1(rows["target_log_return"])).where(waiting, 0.0)
    per_bar = missed.groupby(rows["open_time"]).mean()
    years = len(per_bar) / (pd.Timedelta(days=365.25) / step)
    return {
        "orders": float(orders),
        "fills": float(fills.sum()),
        "fill_rate": float(fills.sum() / orders) if orders else 0.0,
        "entries_wanted": float(entries.sum()),
        "entries_filled": float(fills.sum() / entries.sum()) if entries.sum() else 0.0,
        "missed_per_year": float(per_bar.sum() / years) if years > 0 else 0.0,
    }


def entry_sizes(side: np.ndarray, size: np.ndarray) -> np.ndarray:
    """Per bar, the size chosen when the current position was opened (0 while flat).

    A position keeps its entry size until it closes or flips, so sizing adds no turnover
    of its own. NaN sizes (no volatility yet) count as 0.
    """
    side = np.asarray(side, dtype=np.float64)
    size = np.nan_to_num(np.asarray(size, dtype=np.float64))
    previous = np.concatenate([[0.0], side[:-1]])
    opened = (side != 0) & (side != previous)
    held = pd.Series(np.where(opened, size, np.nan)).ffill().fillna(0.0).to_numpy()
    return np.where(side != 0, held, 0.0)


def fold_sharpes(net: pd.Series, edges: Sequence[pd.Timestamp], bars_per_year: float) -> list[float]:
    """Annualised Sharpe of ``net`` (per-bar portfolio return) within each ``[edges[i], edges[i+1])``."""
    out = []
    for start, end in pairwise(edges):
        part = net[(net.index >= start) & (net.index < end)].to_numpy()
        sd = part.std(ddof=1) if len(part) > 1 else 0.0
        out.append(float(part.mean() / sd * np.sqrt(bars_per_year)) if sd > 0 else 0.0)
    return out


def nested_choice(per_fold: Mapping[str, Sequence[float]], first: int = 1) -> list[str]:
    """For each fold k ≥ ``first``: the candidate whose mean Sharpe over folds < k is best.

    ``per_fold``: candidate key → Sharpe per fold (the same folds for every candidate).
    :data:`FLAT` when no candidate's mean is above 0. Only folds before k are read, so
    changing fold k's (or a later fold's) figures cannot change fold k's choice.
    """
    folds = len(next(iter(per_fold.values()))) if per_fold else 0
    chosen = []
    for k in range(first, folds):
        means = {key: float(np.mean(s[:k])) for key, s in per_fold.items()}
        best = max(means, key=lambda key: means[key]) if means else FLAT
        chosen.append(best if means.get(best, 0.0) > 0.0 else FLAT)
    return chosen


def universe_as_of(
    candles: Mapping[str, pd.DataFrame], at: pd.Timestamp, top: int, days: float = 90
) -> list[str]:
    """The ``top`` symbols by quote volume over the ``days`` before ``at`` (candles before ``at`` only).

    Quote volume is ``quote_volume`` where stored, else ``volume × close``. A symbol with
    no candles in the window (not listed yet, or delisted) is not eligible.
    """
    since = at - pd.Timedelta(days=days)
    turnover = {}
    for symbol, frame in candles.items():
        window = frame[(frame.index >= since) & (frame.index < at)]
        if window.empty:
            continue
        quote = window.get("quote_volume")
        if quote is None or quote.isna().all():
            quote = window["volume"] * window["close"]
        turnover[symbol] = float(quote.sum())
    return sorted(sorted(turnover, key=lambda s: -turnover[s])[:top])
