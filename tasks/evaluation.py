"""Out-of-sample evaluation of OOF P(up): classification beside climatology, and backtests.

Everything is computed on the same rows for every model and baseline: the rows the
stacker predicted (walk-forward folds after the first). Classification overall, per
symbol, per regime and per model; the cost-aware backtest of the stacker and of each
single model; buy-and-hold, the original's momentum fallback, always flat, climatology.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, cast

import numpy as np
import pandas as pd

from tasks import metrics
from tasks.backtest import BacktestResult, Costs, Policy, backtest, baseline_positions, policy_positions
from tasks.features.regime import Regime
from tasks.models.stacker import PREFIX

#: Columns of the feature matrix the evaluation needs beside the OOF table.
CONTEXT_COLUMNS = ["log_ret_1", "log_ret_24", "atr_pct", "regime"]


@dataclass
class Evaluation:
    """An evaluation report and the backtests behind it (for plots).

    Attributes:
        report: JSON-friendly figures (the ``qt evaluate`` document's body).
        rows: the evaluated rows (OOF table joined with the context columns).
        backtests: name → backtest (``stacker``, single models, baselines).
    """

    report: dict[str, Any]
    rows: pd.DataFrame
    backtests: dict[str, BacktestResult] = field(default_factory=dict)


def evaluate(
    oof: pd.DataFrame,
    matrix: pd.DataFrame,
    step: pd.Timedelta,
    costs: Costs,
    policy: Policy | None = None,
    model: str = "stacker",
    abs_return: dict[str, float] | None = None,
) -> Evaluation:
    """Classification and backtest figures of ``model``'s OOF P(up), with baselines.

    Args:
        oof: walk-forward OOF table (``p_<name>``, ``target_*``, ``climatology``, ``fold``).
        matrix: the feature matrix the OOF rows came from (for the momentum baseline,
            ATR slippage, regimes, and the training window's mean absolute return).
        step: the candle interval.
        costs: fees, slippage, funding.
        policy: the P(up) → position policy (default :class:`Policy`).
        model: whose P(up) is the product's (default the stacker).
        abs_return: symbol → edge scale (mean absolute bar return); default: measured on
            the matrix rows before the first OOF row. A registered ensemble passes its own,
            so its backtest trades as it would live.
    """
    policy = policy or Policy()
    col = f"{PREFIX}{model}"
    rows = oof[oof[col].notna()].merge(
        matrix[["symbol", "open_time", *CONTEXT_COLUMNS]], on=["symbol", "open_time"], how="left"
    )
    start = rows["open_time"].min()
    earlier = matrix[matrix["open_time"] < start]
    if abs_return is None:
        abs_return = {
            str(s): float(g.abs().mean()) for s, g in earlier.groupby("symbol")["target_log_return"]
        }
    y = rows["target_up"].to_numpy()
    clim = rows["climatology"].to_numpy(dtype=np.float64)
    names = [c.removeprefix(PREFIX) for c in rows.columns if c.startswith(PREFIX)]

    tests: dict[str, BacktestResult] = {}
    for name in names:
        pos = policy_positions(rows, rows[f"{PREFIX}{name}"], policy, costs, abs_return)
        tests[name] = backtest(rows, pos, costs, step)
    for name, pos in baseline_positions(rows, step, costs.long_only).items():
        tests[name] = backtest(rows, pos, costs, step)
    clim_scores = metrics.classification(y, clim, clim)
    report: dict[str, Any] = {
        "model": model,
        "rows": len(rows),
        "start": start.isoformat(),
        "end": rows["open_time"].max().isoformat(),
        "classification": metrics.of_rows(rows, col),
        "per_model": {n: metrics.of_rows(rows, f"{PREFIX}{n}") for n in names if n != model},
        "per_symbol": {str(s): metrics.of_rows(g, col) for s, g in rows.groupby("symbol")},
        "per_regime": {
            Regime(int(cast(float, r))).name.lower(): metrics.of_rows(g, col)
            for r, g in rows.dropna(subset=["regime"]).groupby("regime")
        },
        "backtest": tests[model].metrics,
        "backtest_per_symbol": tests[model].per_symbol,
        "single_models": {n: tests[n].metrics for n in names if n != model},
        "baselines": {
            "buy_and_hold": tests["buy_and_hold"].metrics,
            "momentum_fallback": tests["momentum_fallback"].metrics,
            "always_flat": tests["always_flat"].metrics,
            "climatology": clim_scores,
        },
        "costs": asdict(costs),
        "policy": asdict(costs.tradable(policy)),
        "market": costs.market,
    }
    return Evaluation(report, rows, tests)


def reliability(y: np.ndarray, p: np.ndarray, bins: int = 10) -> pd.DataFrame:
    """Per equal-count probability bin: mean predicted P(up), observed up rate, row count."""
    q = np.clip(np.asarray(p, dtype=np.float64), 0, 1)
    which = metrics.probability_bins(q, bins)
    frame = pd.DataFrame({"bin": which, "p": q, "y": np.asarray(y, dtype=np.float64)})
    out = frame.groupby("bin").agg(predicted=("p", "mean"), observed=("y", "mean"), rows=("y", "size"))
    return out.reset_index()
