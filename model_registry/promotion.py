"""Shadow comparison and the promotion gate: a retrain ends with a recorded decision.

**Shadow** (the seeds' "shadow tester"): the challenger predicts beside the champion on
the newest closed candles that neither was trained on (the training flow holds the last
``shadow_hours`` out of the challenger's fit). Both are scored on the same rows: log
loss, AUC, accuracy, the two P(up) distributions (two-sample KS test), and a one-sided
paired t-test of the log-loss difference ("significantly worse"), on per-bar means because
the symbols of one bar move together.

**Gate**: on the same out-of-sample rows (the challenger's walk-forward OOF rows that the
champion's own walk-forward also predicted; the shadow rows when they share too few),
every challenger, with or without a champion, must clear absolute floors: log loss below
min(climatology, ln 2), AUC above 0.5, net Sharpe under the strategy that will trade it
above max(0, momentum fallback), at least ``min_trades`` trades and ``min_exposure`` of
the bars in the market (so "never trades" cannot pass at 0.00 vs 0.00), ECE within the
bound, and a calibration slope whose upper 95 % bound reaches ``min_slope`` (inverted or
over-confident P(up) fails however narrow its spread). Against a champion it must also be
*significantly* better: a one-sided paired t-test of the per-row log-loss difference,
clustered by bar, at level ``alpha`` (a challenger of equal skill passes ~``alpha`` of
the time), and not lower in net Sharpe. The shadow must not be significantly worse.
Every check is reported, passed or not.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from model_registry.ensemble import Ensemble
from tasks import metrics
from tasks.backtest import Costs, Policy
from tasks.evaluation import evaluate
from tasks.models.base import clip_proba
from tasks.models.stacker import PREFIX

Z_95 = 1.6448536269514722  # one-sided 95 % normal quantile
KEYS = ["symbol", "open_time", "fold", "target_up", "target_log_return", "climatology"]


@dataclass(frozen=True)
class GateConfig:
    """Thresholds of the promotion gate.

    Attributes:
        margin: log-loss gain per row over the champion that the paired test takes as its
            null (0: any significant gain).
        max_ece: floor of the ECE bound; the bound widens to twice the ECE a perfectly
            calibrated model shows by chance on that many rows (10 equal-count bins).
        alpha: significance level of "better than the champion" and "shadow worse".
        min_rows: fewest shared OOF rows for the comparison (else the shadow rows are used),
            and fewest shadow rows for a conclusive shadow test.
        min_trades: fewest trades the challenger's backtest must make.
        min_exposure: least share of bars with a position open.
        min_slope: the calibration slope's upper 95 % bound must reach this (⅓: logits
            three times too large; negative: inverted ranking).
    """

    margin: float = 0.0
    max_ece: float = 0.02
    alpha: float = 0.05
    min_rows: int = 100
    min_trades: int = 10
    min_exposure: float = 0.01
    min_slope: float = 0.5

    def ece_bound(self, rows: int, bins: int = 10) -> float:
        """``max(max_ece, 2 × E[ECE | calibrated, rows])`` (:func:`tasks.metrics.chance_ece`)."""
        from tasks.metrics import chance_ece

        return max(self.max_ece, chance_ece(rows, bins))


@dataclass
class Check:
    """One condition of the gate."""

    name: str
    passed: bool
    value: float | None
    threshold: float | None
    detail: str


@dataclass
class Decision:
    """The gate's verdict, its reasons and the figures behind them."""

    promoted: bool
    reason: str
    reference: str
    rows: int
    checks: list[Check] = field(default_factory=list)
    comparison: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """JSON-friendly form (``qt retrain --json``'s ``gate``)."""
        return {**asdict(self), "checks": [asdict(c) for c in self.checks]}


def shadow(
    challenger: Ensemble,
    champion: Ensemble | None,
    matrix: pd.DataFrame,
    start: pd.Timestamp,
    config: GateConfig,
) -> tuple[dict[str, Any], pd.DataFrame]:
    """Both ensembles' P(up) on the labelled rows from ``start`` that neither was trained on.

    Returns:
        The report (rows, window, each side's classification, KS test, paired log-loss
        test, ``significantly_worse``, ``conclusive``) and the scored table (OOF layout:
        ``p_challenger``, and ``p_champion`` when there is one).
    """
    from scipy import stats

    seen = pd.Timestamp(challenger.trained_until)
    if champion is not None:
        seen = max(seen, pd.Timestamp(champion.trained_until))
    t = matrix["open_time"]
    rows = matrix[(t >= start) & (t > seen) & matrix["target_up"].notna()]
    table = rows[["symbol", "open_time", "target_up", "target_log_return"]].assign(
        fold=0, climatology=challenger.base_rate
    )
    report: dict[str, Any] = {"rows": len(rows), "start": None, "end": None, "reference": "climatology"}
    report["trained_until"] = str(seen)  # the newest bar either model was trained on
    if rows.empty:
        report.update(conclusive=False, significantly_worse=False)
        return report, table
    report.update(start=str(rows["open_time"].min()), end=str(rows["open_time"].max()))
    history = matrix[t < rows["open_time"].min()]
    table["p_challenger"] = challenger.predict_rows(rows, history)[f"{PREFIX}stacker"].to_numpy()
    y = table["target_up"].to_numpy(dtype=np.float64)
    p_new = table["p_challenger"].to_numpy()
    if champion is not None:
        table["p_champion"] = champion.predict_rows(rows, history)[f"{PREFIX}stacker"].to_numpy()
        p_ref = table["p_champion"].to_numpy()
        report["reference"] = "champion"
        report["champion"] = metrics.classification(y, p_ref, champion.base_rate)
        ks = stats.ks_2samp(p_new, p_ref)
        report["ks_statistic"], report["ks_pvalue"] = float(ks.statistic), float(ks.pvalue)
    else:
        p_ref = np.full_like(p_new, challenger.base_rate)
    report["challenger"] = metrics.classification(y, p_new, challenger.base_rate)
    diff = _row_log_loss(y, p_new) - _row_log_loss(y, p_ref)
    mean, pvalue, bars = clustered_mean_test(diff, table["open_time"].to_numpy(), "greater")
    report.update(log_loss_diff=mean, bars=bars, worse_pvalue=pvalue)
    report["conclusive"] = len(rows) >= config.min_rows
    report["significantly_worse"] = bool(report["conclusive"] and report["worse_pvalue"] < config.alpha)
    return report, table


def shared_rows(challenger_oof: pd.DataFrame, champion_oof: pd.DataFrame | None) -> pd.DataFrame:
    """The challenger's stacked OOF rows, with the champion's OOF P(up) where it has one.

    Columns: the OOF keys, ``p_challenger`` and (with a champion table) ``p_champion``,
    inner-joined on symbol and open time: the rows both predicted out of sample.
    """
    mine = challenger_oof[challenger_oof[f"{PREFIX}stacker"].notna()]
    table = mine[KEYS].assign(p_challenger=mine[f"{PREFIX}stacker"].to_numpy())
    if champion_oof is None:
        return table
    theirs = champion_oof[champion_oof[f"{PREFIX}stacker"].notna()]
    theirs = theirs[["symbol", "open_time", f"{PREFIX}stacker"]].rename(
        columns={f"{PREFIX}stacker": "p_champion"}
    )
    theirs = theirs.assign(symbol=theirs["symbol"].astype(str))
    table = table.assign(symbol=table["symbol"].astype(str))
    return table.merge(theirs, on=["symbol", "open_time"], how="inner")


def decide(
    shared: pd.DataFrame,
    shadow_report: dict[str, Any],
    shadow_table: pd.DataFrame,
    matrix: pd.DataFrame,
    step: pd.Timedelta,
    costs: Costs,
    config: GateConfig,
    champion: str | None,
    policy: Policy | None = None,
    abs_return: dict[str, float] | None = None,
) -> Decision:
    """The gate's decision for a challenger (``champion``: the champion's version, or None).

    ``policy``/``abs_return``: the strategy that will trade the challenger (its registered
    policy and edge scales), so the Sharpe and activity floors judge what would trade.
    """
    rows, where = shared, "walk-forward OOF rows"
    if champion is not None and (len(shared) < config.min_rows or "p_champion" not in shared):
        rows, where = shadow_table, "shadow rows (too few OOF rows shared with the champion)"
    if champion is not None and "p_champion" not in rows:
        return Decision(False, f"not promoted: no rows the champion v{champion} also predicted", "none", 0)
    if len(rows) < 2 or "p_challenger" not in rows:
        return Decision(False, f"not promoted: no rows to compare on ({where})", "none", len(rows))
    report = evaluate(rows, matrix, step, costs, policy, model="challenger", abs_return=abs_return).report
    checks = _floors(rows, report, config)
    if champion is not None:
        checks += _versus_champion(rows, report, config)
        reference = f"champion v{champion}"
    else:
        reference = "climatology and momentum fallback (no champion yet)"
    checks.append(_shadow_check(shadow_report, config))
    promoted = all(c.passed for c in checks)
    failed = [c.detail for c in checks if not c.passed]
    reason = (
        f"promoted over {reference} on {len(rows):,} {where}: " + "; ".join(c.detail for c in checks)
        if promoted
        else f"not promoted ({reference}, {len(rows):,} {where}): " + "; ".join(failed)
    )
    comparison = {
        "classification": report["classification"],
        "backtest": report["backtest"],
        "baselines": report["baselines"],
        "champion": report["per_model"].get("champion"),
        "champion_backtest": report["single_models"].get("champion"),
        "costs": report["costs"],
        "policy": report["policy"],
        "start": report["start"],
        "end": report["end"],
    }
    return Decision(promoted, reason, reference, len(rows), checks, comparison)


def _floors(rows: pd.DataFrame, report: dict[str, Any], config: GateConfig) -> list[Check]:
    """What any challenger must show, champion or not: skill, money, activity, calibration."""
    mine = report["classification"]
    backtest, momentum = report["backtest"], report["baselines"]["momentum_fallback"]
    ll_floor = min(mine["log_loss_climatology"], math.log(2))
    sharpe_floor = max(0.0, momentum["sharpe"])
    trades, exposure = backtest["trades"], backtest["exposure"]
    bound = config.ece_bound(len(rows))
    y = rows["target_up"].to_numpy(dtype=np.float64)
    line = metrics.calibration_line(y, rows["p_challenger"].to_numpy(), rows["open_time"].to_numpy())
    slope_high = line["slope"] + Z_95 * line["slope_se"]
    constant = not np.isfinite(slope_high)
    return [
        Check(
            "log_loss_floor", mine["log_loss"] < ll_floor, mine["log_loss"], ll_floor,
            f"log loss {mine['log_loss']:.5f} vs min(climatology {mine['log_loss_climatology']:.5f}, ln 2)",
        ),
        Check("auc_floor", mine["auc"] > 0.5, mine["auc"], 0.5, f"AUC {mine['auc']:.4f} (needs > 0.5)"),
        Check(
            "sharpe_floor", backtest["sharpe"] > sharpe_floor, backtest["sharpe"], sharpe_floor,
            f"net Sharpe {backtest['sharpe']:.2f} vs max(0, momentum fallback {momentum['sharpe']:.2f})",
        ),
        Check(
            "activity", trades >= config.min_trades and exposure >= config.min_exposure, trades,
            float(config.min_trades),
            f"{trades:.0f} trades, exposure {exposure:.1%} (needs ≥ {config.min_trades} trades and "
            f"≥ {config.min_exposure:.1%})",
        ),
        Check("ece", mine["ece"] <= bound, mine["ece"], bound, f"ECE {mine['ece']:.4f} (bound {bound:.4f})"),
        Check(
            "calibration_slope", constant or slope_high >= config.min_slope, line["slope"], config.min_slope,
            "calibration slope undefined (constant predictions)" if constant else
            f"calibration slope {line['slope']:.2f} ± {Z_95 * line['slope_se']:.2f}, intercept "
            f"{line['intercept']:+.3f} (slope's upper 95% bound needs ≥ {config.min_slope:.2f})",
        ),
    ]  # fmt: skip


def _versus_champion(rows: pd.DataFrame, report: dict[str, Any], config: GateConfig) -> list[Check]:
    """Better than the champion on the same rows: a paired, bar-clustered log-loss test and Sharpe."""
    y = rows["target_up"].to_numpy(dtype=np.float64)
    diff = _row_log_loss(y, rows["p_challenger"].to_numpy()) - _row_log_loss(y, rows["p_champion"].to_numpy())
    mean, pvalue, bars = clustered_mean_test(diff, rows["open_time"].to_numpy(), "less", -config.margin)
    sharpe, theirs = report["backtest"]["sharpe"], report["single_models"]["champion"]["sharpe"]
    return [
        Check(
            "log_loss_vs_champion", pvalue < config.alpha, pvalue, config.alpha,
            f"log loss {report['classification']['log_loss']:.5f} vs champion "
            f"{report['per_model']['champion']['log_loss']:.5f}: mean gain {-mean:+.5f} per row, "
            f"p = {pvalue:.3f} over {bars} bars (needs < {config.alpha})",
        ),
        Check(
            "sharpe_vs_champion", sharpe >= theirs, sharpe, theirs,
            f"net Sharpe {sharpe:.2f} vs champion {theirs:.2f}",
        ),
    ]  # fmt: skip


def _shadow_check(shadow_report: dict[str, Any], config: GateConfig) -> Check:
    worse = bool(shadow_report.get("significantly_worse"))
    if shadow_report.get("conclusive"):
        detail = (
            f"shadow vs {shadow_report['reference']} on {shadow_report['rows']} rows: log loss "
            f"{shadow_report['log_loss_diff']:+.5f}, p(worse) {shadow_report['worse_pvalue']:.3f}"
        )
    else:
        rows_seen = shadow_report["rows"]
        detail = f"shadow inconclusive ({rows_seen} rows < {config.min_rows}): not held against it"
    return Check("shadow", not worse, shadow_report.get("worse_pvalue"), config.alpha, detail)


def clustered_mean_test(
    values: np.ndarray, clusters: np.ndarray, alternative: str, null: float = 0.0
) -> tuple[float, float, int]:
    """One-sided t-test of the mean of per-row ``values``, with rows clustered (one bar's rows).

    The symbols of one bar move together, so its rows are not independent draws: the test
    runs on per-cluster means. Returns (mean over rows, p-value, clusters); p = 1 with
    fewer than two clusters.
    """
    from scipy import stats

    series = pd.Series(np.asarray(values, dtype=np.float64))
    per_bar = series.groupby(np.asarray(clusters)).mean().to_numpy()
    if len(per_bar) < 2 or np.std(per_bar) == 0:
        return float(series.mean()), 1.0, len(per_bar)
    pvalue = float(stats.ttest_1samp(per_bar, null, alternative=alternative).pvalue)
    return float(series.mean()), pvalue if np.isfinite(pvalue) else 1.0, len(per_bar)


def _row_log_loss(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    q = clip_proba(p)
    return np.asarray(-(y * np.log(q) + (1 - y) * np.log(1 - q)), dtype=np.float64)
