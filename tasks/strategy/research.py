"""Strategy research: position policies over OOF P(up), chosen by nested walk-forward.

Pure maths for ``bench/strategy.py``. A :class:`Candidate` is one way to trade a horizon's
stacked P(up): optional smoothing of P (a causal EMA per symbol), the cost-aware policy's
entry/exit thresholds (hysteresis), and optional volatility targeting (size at entry =
target vol / recent vol, capped at 1, held for the position's life). Positions earn the
next bar's return whatever the model's horizon; a horizon-h model's edge is measured
against the h-bar move, so its trades are meant to last about h bars.

:func:`nested_choice` picks, for each test fold, the candidate with the best net Sharpe
on the earlier folds only (flat when none beats 0), so the reported figures of the chosen
policy never helped choose it. :func:`universe_as_of` picks each period's symbols from
the candles before it (no survivorship from today's top-N).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise

import numpy as np
import pandas as pd

from tasks.backtest import Costs, Policy
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
    """

    horizon: int
    name: str
    smooth: int = 1
    enter: float = 1.0
    exit: float = 0.25
    vol_target: bool = False

    @property
    def key(self) -> str:
        """``h<horizon> <name>``: the row label in tables and MLflow runs."""
        return f"h{self.horizon} {self.name}"


def candidates(horizons: Sequence[int]) -> list[Candidate]:
    """The researched grid: six policies per horizon (the first is today's default)."""
    out = []
    for h in horizons:
        span = max(2, min(h, 12))  # smoothing over about one holding period
        out += [
            Candidate(h, "cost-aware"),
            Candidate(h, "eager", enter=0.5, exit=0.125),
            Candidate(h, "patient", enter=2.0, exit=0.5),
            Candidate(h, "smoothed", smooth=span),
            Candidate(h, "vol-target", vol_target=True),
            Candidate(h, "smoothed vol-target", smooth=span, vol_target=True),
        ]
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

    ``rows`` needs ``symbol``, ``open_time`` and ``realized_vol_24`` (for vol targeting);
    ``abs_return``: each symbol's mean |h-bar return| before the first row;
    ``typical_vol``: each symbol's median ``realized_vol_24`` before the first row.
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
        if candidate.vol_target:
            vol = group["realized_vol_24"].to_numpy(dtype=np.float64)
            target = typical_vol.get(str(symbol), float(np.nanmedian(vol)))
            side = side * entry_sizes(side, np.clip(target / np.where(vol > 0, vol, np.nan), 0.0, 1.0))
        out.loc[group.index] = side
    return out


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
