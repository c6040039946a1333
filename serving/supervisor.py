"""The model supervisor: the traded model's live record against what it learned, checked hourly.

It joins the journal's signals with the outcomes the stored candles now show (a signal's
bar's next close against its close, the ``target_up`` the models learned) over the newest
``window_bars`` bars of the model being traded, per model and for the ensemble:

* rolling log loss (against the window's climatology), accuracy, ECE, the calibration
  slope of logit(P) with its cluster-robust standard error (bars as clusters), and the
  directional bias: the share of BUY calls (P(up) > 0.5) minus the realised up share;
* drift of every feature's distribution in the window against the ``reference_bars`` bars
  the model saw last before ``trained_until``: the population stability index (PSI) over
  the reference's deciles. A week is a narrow slice of slow features, so an ordinary week
  already has a third to a half of them above the textbook PSI bound of 0.25 (measured on
  the bundled sample, 2024-09 → 2025-06); a feature counts as drifted only when its PSI is
  also above the largest PSI of the reference's own windows of the same length — an
  unusual shift for that feature, not the usual width of a week.

The ensemble's figures are held to :class:`Limits`; when one is crossed the verdict is
DEFENSIVE, with the reasons: the live loop's risk engine takes it as its floor mode
(:attr:`tasks.strategy.risk.Book.floor_mode`) while the same model version trades, and
:mod:`flows.supervisor` starts the triggered-retrain deployment with the reason. Fewer than
``min_rows`` signals with a known outcome say nothing: the verdict is NORMAL and says why.
Every verdict is journalled (an event of kind ``supervisor``) and logged to MLflow
(experiment ``monitoring``, one run per UTC day, with its plots).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from core.candles import interval_ms
from core.settings import Settings
from serving.journal import models as db
from serving.journal.analytics import model_outcomes
from serving.journal.analytics import models as analytics_models
from serving.journal.journal import Journal
from tasks import metrics
from tasks.features import FeatureSpec, feature_matrix
from tasks.metrics import chance_ece
from tasks.models.base import binary_log_loss
from tasks.store import CandleStore
from tasks.strategy.risk import Mode

EVENT = "supervisor"


@dataclass(frozen=True)
class Limits:
    """What the ensemble's live record must stay within (over the newest ``window_bars``).

    Attributes:
        window_bars: bars of signals the checks look at (168: a week of 1h bars).
        min_rows: signals with a known outcome needed before any check counts.
        max_log_loss_excess: live log loss may exceed the window's climatology by this much.
        min_accuracy: share of right calls (P(up) > 0.5 and the bar went up, or neither).
        max_ece: expected calibration error; the bound used is the larger of this and twice
            the ECE a calibrated model shows by chance on as many rows (10 bins).
        min_slope: the calibration slope, plus two standard errors, must reach this
            (below: over-confident or inverted, beyond what the sample explains).
        max_bias: |share of BUY calls − realised up share|.
        psi_bound: a feature drifted when its PSI exceeds this (0.25: a large shift) and the
            largest PSI of the reference's own windows of the window's length.
        max_drifted_share: the share of features that may drift.
        reference_bars: the training window's newest bars drift is measured against (90 days
            of 1h bars: a dozen one-week windows to learn each feature's usual PSI from).
        retrain_cooldown_hours: at most one retrain request in this many hours.
    """

    window_bars: int = 168
    min_rows: int = 300
    max_log_loss_excess: float = 0.01
    min_accuracy: float = 0.45
    max_ece: float = 0.08
    min_slope: float = 0.5
    max_bias: float = 0.3
    psi_bound: float = 0.25
    max_drifted_share: float = 0.25
    reference_bars: int = 2160
    retrain_cooldown_hours: float = 24.0


@dataclass
class Verdict:
    """One supervision: the checks, the mode it asks for, and why."""

    time: str
    model_version: str | None
    interval: str
    market: str
    rows: int = 0
    window: tuple[str, str] | None = None
    mode: str = Mode.NORMAL.value
    reasons: list[str] = field(default_factory=list)
    checks: list[dict[str, Any]] = field(default_factory=list)
    models: list[dict[str, Any]] = field(default_factory=list)
    drift: dict[str, float] = field(default_factory=dict)
    drift_bounds: dict[str, float] = field(default_factory=dict)
    note: str | None = None
    retrain_run_id: str | None = None
    retrain_error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The verdict as plain JSON-able data."""
        return asdict(self)


def psi(reference: np.ndarray, recent: np.ndarray, bins: int = 10) -> float:
    """Population stability index of ``recent`` against ``reference`` on the reference's quantiles.

    Σ (r − q) ln(r / q) over the bins (r, q the recent and reference shares, floored at 1e-4).
    NaN when either side is empty or the reference is constant.
    """
    return _psi(_profile(np.asarray(reference, dtype=np.float64), bins), np.asarray(recent, dtype=np.float64))


def _profile(reference: np.ndarray, bins: int = 10) -> tuple[np.ndarray, np.ndarray] | None:
    """The reference's decile edges and its share in each bin (None: empty or constant)."""
    ref = reference[np.isfinite(reference)]
    if not len(ref) or np.ptp(ref) == 0:
        return None
    edges = np.unique(np.quantile(ref, np.linspace(0, 1, bins + 1)[1:-1]))
    shares = np.bincount(np.searchsorted(edges, ref, side="right"), minlength=len(edges) + 1) / len(ref)
    return edges, np.maximum(shares, 1e-4)


def _psi(profile: tuple[np.ndarray, np.ndarray] | None, recent: np.ndarray) -> float:
    new = recent[np.isfinite(recent)]
    if profile is None or not len(new):
        return float("nan")
    edges, q = profile
    r = np.maximum(
        np.bincount(np.searchsorted(edges, new, side="right"), minlength=len(edges) + 1) / len(new), 1e-4
    )
    return float(np.sum((r - q) * np.log(r / q)))


def _features(reference: pd.DataFrame, recent: pd.DataFrame) -> list[str]:
    return [
        str(c) for c in reference.columns
        if c not in ("symbol", "open_time") and not str(c).startswith("target_") and c in recent
        and pd.api.types.is_numeric_dtype(reference[c])
    ]  # fmt: skip


def drift(
    reference: pd.DataFrame, recent: pd.DataFrame, profiles: dict[str, Any] | None = None
) -> dict[str, float]:
    """PSI per feature column both frames share (targets, keys and constant columns left out).

    ``profiles``: the reference's :func:`_profile` per column, when already computed.
    """
    out = {}
    for column in _features(reference, recent):
        profile = (
            profiles[column] if profiles is not None else _profile(reference[column].to_numpy(np.float64))
        )
        value = _psi(profile, recent[column].to_numpy(np.float64))
        if math.isfinite(value):
            out[column] = round(value, 6)
    return out


def model_figures(outcomes: pd.DataFrame) -> list[dict[str, Any]]:
    """Per model: the dashboard's live figures, the window's climatology, calibration line and bias.

    The figures are :func:`serving.journal.analytics.models`'; the calibration line is
    fitted with bars as clusters, the bias is the BUY share minus the realised up share.
    """
    groups = dict(tuple(outcomes.groupby("model")))
    out = []
    for figures in analytics_models(outcomes):
        rows = groups[figures["model"]]
        y = rows["up"].to_numpy(dtype=np.float64)
        share = min(max(figures["up_share"], 1e-6), 1 - 1e-6)
        line = metrics.calibration_line(
            y, rows["p_up"].to_numpy(dtype=np.float64), clusters=rows["time"].to_numpy()
        )
        out.append(
            {**figures, "log_loss_climatology": binary_log_loss(y, np.full_like(y, share)),
             "calibration_slope": line["slope"], "calibration_slope_se": line["slope_se"],
             "calibration_intercept": line["intercept"], "bias": figures["buy_share"] - figures["up_share"]}
        )  # fmt: skip
    return out


def usual_drift(reference: pd.DataFrame, bars: int, limits: Limits) -> dict[str, float]:
    """Per feature, the largest PSI of the reference's own non-overlapping windows of ``bars`` bars."""
    times = np.sort(reference["open_time"].unique())
    out: dict[str, float] = {}
    for end in range(len(times), bars - 1, -bars):
        window = reference[
            (reference["open_time"] >= times[end - bars]) & (reference["open_time"] <= times[end - 1])
        ]
        for column, value in drift(reference, window).items():
            out[column] = max(out.get(column, 0.0), value)
    return {c: max(v, limits.psi_bound) for c, v in out.items()}


def checks(
    figures: dict[str, Any], drifted: dict[str, float], limits: Limits, bounds: dict[str, float] | None = None
) -> list[dict[str, Any]]:
    """The ensemble's figures against ``limits``: one row per check (name, value, bound, passed).

    ``bounds``: each feature's PSI bound (default: ``limits.psi_bound`` for all).
    """
    slope, se = figures["calibration_slope"], figures["calibration_slope_se"]
    slope_upper = slope + 2 * se if math.isfinite(slope) and math.isfinite(se) else float("nan")
    bounds = bounds or {}
    over = [v > bounds.get(c, limits.psi_bound) for c, v in drifted.items()]
    share = float(np.mean(over)) if over else float("nan")
    rows = [
        ("log_loss", figures["log_loss"], figures["log_loss_climatology"] + limits.max_log_loss_excess, "<="),
        ("accuracy", figures["accuracy"], limits.min_accuracy, ">="),
        ("ece", figures["ece"], max(limits.max_ece, chance_ece(int(figures["rows"]))), "<="),
        ("calibration_slope_upper", slope_upper, limits.min_slope, ">="),
        ("bias", abs(figures["bias"]), limits.max_bias, "<="),
        ("drifted_share", share, limits.max_drifted_share, "<="),
    ]
    out = []
    for name, value, bound, sense in rows:
        known = math.isfinite(value)
        passed = not known or (value <= bound if sense == "<=" else value >= bound)
        out.append({"check": name, "value": value, "bound": bound, "sense": sense, "passed": passed})
    return out


def _reason(check: dict[str, Any]) -> str:
    words = {
        "log_loss": "live log loss {v:.4f} above climatology + margin {b:.4f}",
        "accuracy": "live accuracy {v:.3f} below {b:.3f}",
        "ece": "live ECE {v:.3f} above {b:.3f}",
        "calibration_slope_upper": "calibration slope +2 SE {v:.2f} below {b:.2f}: over-confident or inverse",
        "bias": "directional bias |BUY share − up share| {v:.2f} above {b:.2f}",
        "drifted_share": "{v:.0%} of features drifted (PSI above 0.25 and its usual), more than {b:.0%}",
    }
    return words[check["check"]].format(v=check["value"], b=check["bound"])


def traded_version(journal: Journal) -> str | None:
    """The model version of the newest traded signal (shadow predictions left out)."""
    from sqlalchemy import select

    def ask(session: Any) -> str | None:
        query = (
            select(db.Signal.model_version)
            .where(db.Signal.model_version.not_like("% (challenger)"))
            .order_by(db.Signal.time.desc(), db.Signal.id.desc())
            .limit(1)
        )
        return session.scalar(query)

    return journal.read(ask)


def supervise(
    settings: Settings, journal: Journal, interval: str, market: str, limits: Limits | None = None
) -> tuple[Verdict, pd.DataFrame]:
    """Check the traded model's newest ``window_bars`` of live signals (see the module's text).

    Returns the verdict and the window's signals with their outcomes (model, symbol, time,
    p_up, up, version).
    """
    from model_registry.registry import load_ensemble

    limits = limits or Limits()
    store = CandleStore(settings.store_dir)
    step = pd.Timedelta(milliseconds=interval_ms(interval))
    verdict = Verdict(pd.Timestamp.now(tz="UTC").isoformat(), traded_version(journal), interval, market)
    none = pd.DataFrame(columns=["model", "symbol", "time", "p_up", "up", "version"])
    if verdict.model_version is None:
        verdict.note = "no live signals in the journal yet: nothing to supervise"
        return verdict, none
    symbols = store.symbols(interval, market)
    closes = {s: store.read(s, interval, market)["close"] for s in symbols}
    outcomes = model_outcomes(journal, closes, step)
    outcomes = outcomes[outcomes["version"] == verdict.model_version]
    if outcomes.empty:
        verdict.note = f"v{verdict.model_version}: no signal has a known outcome yet"
        return verdict, none
    newest = outcomes["time"].max()
    outcomes = outcomes[outcomes["time"] > newest - limits.window_bars * step]
    verdict.window = (outcomes["time"].min().isoformat(), newest.isoformat())
    verdict.models = model_figures(outcomes)
    ensemble = next(m for m in verdict.models if m["model"] == "ensemble")
    verdict.rows = int(ensemble["rows"])
    loaded = load_ensemble(settings, interval, verdict.model_version, market=market)[0]
    traded = sorted(outcomes["symbol"].unique())
    verdict.drift, verdict.drift_bounds = feature_drift(
        store,
        interval,
        market,
        traded,
        pd.Timestamp(loaded.trained_until),
        outcomes["time"].min(),
        newest,
        limits,
    )
    verdict.checks = checks(ensemble, verdict.drift, limits, verdict.drift_bounds)
    if verdict.rows < limits.min_rows:
        verdict.note = (
            f"{verdict.rows} signals with a known outcome, fewer than {limits.min_rows}: no verdict"
        )
        return verdict, outcomes
    verdict.reasons = [_reason(c) for c in verdict.checks if not c["passed"]]
    if verdict.reasons:
        verdict.mode = Mode.DEFENSIVE.value
    return verdict, outcomes


def feature_drift(
    store: Any, interval: str, market: str, symbols: list[str], trained_until: pd.Timestamp,
    start: pd.Timestamp, end: pd.Timestamp, limits: Limits,
) -> tuple[dict[str, float], dict[str, float]]:  # fmt: skip
    """PSI per feature of ``symbols``' rows in [start, end] against the training window's newest bars.

    Returns the PSI and each feature's bound (:func:`usual_drift` over windows as long as this one).
    """
    spec = FeatureSpec()
    step = pd.Timedelta(milliseconds=interval_ms(interval))
    reference_start = trained_until - (limits.reference_bars - 1) * step
    first = min(reference_start, start) - (spec.min_history + 2) * step
    wanted = list(dict.fromkeys([*symbols, *([spec.cross_asset_symbol] if spec.cross_asset_symbol else [])]))
    stored = [s for s in wanted if store.time_range(s, interval, market) is not None]
    candles = {s: store.read(s, interval, market, start=first) for s in stored}
    rows = [s for s in symbols if s in candles]
    frame = feature_matrix(
        candles,
        interval_ms(interval),
        spec,
        include_unlabeled=True,
        start=reference_start,
        end=end,
        symbols=rows,
    )
    reference = frame[frame["open_time"] <= trained_until]
    recent = frame[frame["open_time"] >= start]
    bars = max(int(recent["open_time"].nunique()), 24)
    return drift(reference, recent), usual_drift(reference, bars, limits)


def journal_verdict(journal: Journal, verdict: Verdict) -> None:
    """The verdict as a ``supervisor`` event (the live loop and the API read the newest)."""
    with journal.transaction() as session:
        session.add(db.Event(kind=EVENT, detail=json.loads(json.dumps(verdict.as_dict(), default=str))))


def latest(journal: Journal) -> dict[str, Any] | None:
    """The newest verdict's detail, with its time; None before the first."""
    events = journal.recent_events(1, EVENT)
    return {**events[0].detail, "event_time": events[0].time.isoformat()} if events else None


def floor_mode(journal: Journal, version: str | None) -> Mode:
    """The mode the newest verdict asks for while ``version`` trades (another version: NORMAL)."""
    found = latest(journal)
    if found is None or version is None or found.get("model_version") != version:
        return Mode.NORMAL
    return Mode(found.get("mode", Mode.NORMAL.value))


def retrain_due(journal: Journal, limits: Limits, now: pd.Timestamp) -> bool:
    """No retrain was requested in the last ``retrain_cooldown_hours``."""
    for event in journal.recent_events(200, EVENT):
        when = pd.Timestamp(event.time)
        when = when.tz_localize("UTC") if when.tzinfo is None else when
        if now - when >= pd.Timedelta(hours=limits.retrain_cooldown_hours):
            break
        if event.detail.get("retrain_run_id"):
            return False
    return True
