"""Shadow comparison and the promotion gate: a retrain ends with a recorded decision.

**Shadow** (the seeds' "shadow tester"): the challenger predicts beside the champion on
the newest closed candles that neither was trained on (the training flow holds the last
``shadow_hours`` out of the challenger's fit). Both are scored on the same rows: log
loss, AUC, accuracy, the two P(up) distributions (two-sample KS test), and a one-sided
paired t-test of the log-loss difference ("significantly worse"), on per-bar means because
the symbols of one bar move together.

**Gate**: on the same out-of-sample rows (the challenger's walk-forward OOF rows that the
champion's own walk-forward also predicted; the shadow rows when they share too few),
the challenger becomes champion only if its log loss is lower by ``margin``, its
net-of-fee Sharpe under the same policy is not lower, its ECE is within the bound, and
the shadow is not significantly worse. With no champion it must beat climatology (log
loss) and the momentum fallback (Sharpe). Every check is reported, passed or not.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from model_registry.ensemble import Ensemble
from tasks import metrics
from tasks.backtest import Costs
from tasks.evaluation import evaluate
from tasks.models.base import clip_proba
from tasks.models.stacker import PREFIX

KEYS = ["symbol", "open_time", "fold", "target_up", "target_log_return", "climatology"]


@dataclass(frozen=True)
class GateConfig:
    """Thresholds of the promotion gate.

    Attributes:
        margin: how much lower the challenger's log loss must be than the champion's.
        max_ece: floor of the ECE bound; the bound widens to twice the ECE a perfectly
            calibrated model shows by chance on that many rows (10 equal-count bins).
        alpha: significance level of "shadow significantly worse".
        min_rows: fewest shared OOF rows for the comparison (else the shadow rows are used),
            and fewest shadow rows for a conclusive shadow test.
    """

    margin: float = 0.0002
    max_ece: float = 0.02
    alpha: float = 0.05
    min_rows: int = 100

    def ece_bound(self, rows: int, bins: int = 10) -> float:
        """``max(max_ece, 2 × E[ECE | calibrated, rows])`` with E|error| of a bin ≈ √(2/π)·√(¼/n)."""
        per_bin = max(rows // bins, 1)
        return max(self.max_ece, 2 * math.sqrt(2 / math.pi) * math.sqrt(0.25 / per_bin))


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
    diff = pd.Series(_row_log_loss(y, p_new) - _row_log_loss(y, p_ref), index=table.index)
    report["log_loss_diff"] = float(diff.mean())
    # Symbols move together within a bar, so rows of one bar are not independent draws:
    # the test runs on per-bar mean differences (clustered by open time).
    per_bar = diff.groupby(table["open_time"].to_numpy()).mean().to_numpy()
    report["bars"] = len(per_bar)
    pvalue = float(stats.ttest_1samp(per_bar, 0.0, alternative="greater").pvalue) if len(per_bar) > 1 else 1.0
    report["worse_pvalue"] = pvalue if np.isfinite(pvalue) else 1.0
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
) -> Decision:
    """The gate's decision for a challenger (``champion``: the champion's version, or None)."""
    rows, where = shared, "walk-forward OOF rows"
    if champion is not None and (len(shared) < config.min_rows or "p_champion" not in shared):
        rows, where = shadow_table, "shadow rows (too few OOF rows shared with the champion)"
    if champion is not None and "p_champion" not in rows:
        return Decision(False, f"not promoted: no rows the champion v{champion} also predicted", "none", 0)
    if len(rows) < 2 or "p_challenger" not in rows:
        return Decision(False, f"not promoted: no rows to compare on ({where})", "none", len(rows))
    report = evaluate(rows, matrix, step, costs, model="challenger").report
    mine = report["classification"]
    sharpe = report["backtest"]["sharpe"]
    bound = config.ece_bound(len(rows))
    checks = []
    if champion is not None:
        theirs = report["per_model"]["champion"]
        their_sharpe = report["single_models"]["champion"]["sharpe"]
        needed = theirs["log_loss"] - config.margin
        checks.append(
            Check(
                "log_loss", mine["log_loss"] <= needed, mine["log_loss"], needed,
                f"log loss {mine['log_loss']:.5f} vs champion {theirs['log_loss']:.5f} "
                f"(needs ≤ {needed:.5f})",
            )
        )  # fmt: skip
        checks.append(
            Check(
                "sharpe", sharpe >= their_sharpe, sharpe, their_sharpe,
                f"net Sharpe {sharpe:.2f} vs champion {their_sharpe:.2f}",
            )
        )  # fmt: skip
        reference = f"champion v{champion}"
    else:
        clim = mine["log_loss_climatology"]
        momentum = report["baselines"]["momentum_fallback"]["sharpe"]
        checks.append(
            Check(
                "log_loss_vs_climatology", mine["log_loss"] < clim, mine["log_loss"], clim,
                f"log loss {mine['log_loss']:.5f} vs climatology {clim:.5f}",
            )
        )  # fmt: skip
        checks.append(
            Check(
                "sharpe_vs_momentum", sharpe > momentum, sharpe, momentum,
                f"net Sharpe {sharpe:.2f} vs momentum fallback {momentum:.2f}",
            )
        )  # fmt: skip
        reference = "climatology and momentum fallback (no champion yet)"
    checks.append(
        Check("ece", mine["ece"] <= bound, mine["ece"], bound, f"ECE {mine['ece']:.4f} (bound {bound:.4f})")
    )
    worse = bool(shadow_report.get("significantly_worse"))
    if shadow_report.get("conclusive"):
        detail = (
            f"shadow vs {shadow_report['reference']} on {shadow_report['rows']} rows: log loss "
            f"{shadow_report['log_loss_diff']:+.5f}, p(worse) {shadow_report['worse_pvalue']:.3f}"
        )
    else:
        rows_seen = shadow_report["rows"]
        detail = f"shadow inconclusive ({rows_seen} rows < {config.min_rows}): not held against it"
    checks.append(Check("shadow", not worse, shadow_report.get("worse_pvalue"), config.alpha, detail))
    promoted = all(c.passed for c in checks)
    failed = [c.detail for c in checks if not c.passed]
    reason = (
        f"promoted over {reference} on {len(rows):,} {where}: " + "; ".join(c.detail for c in checks)
        if promoted
        else f"not promoted ({reference}, {len(rows):,} {where}): " + "; ".join(failed)
    )
    comparison = {
        "classification": mine,
        "backtest": report["backtest"],
        "baselines": report["baselines"],
        "champion": report["per_model"].get("champion"),
        "champion_backtest": report["single_models"].get("champion"),
        "start": report["start"],
        "end": report["end"],
    }
    return Decision(promoted, reason, reference, len(rows), checks, comparison)


def _row_log_loss(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    q = clip_proba(p)
    return np.asarray(-(y * np.log(q) + (1 - y) * np.log(1 - q)), dtype=np.float64)
