"""Purged, embargoed walk-forward: out-of-fold P(up) of every base model and the stacker.

Each fold cuts time into ``[train] purge [valid] purge+embargo [test]``: the training
rows' labels end before the validation window begins (purge = the label horizon), and
the validation rows' labels end ``embargo`` bars before the test window begins. Models
are fitted (and tuned) on train/valid only, then predict the test window. Every base
model predicts the same test rows, so their out-of-fold (OOF) predictions line up.

The stacker is itself walked forward over the OOF table: for test fold k it learns from
the OOF predictions of folds before k only, so its figures are out of sample too. The
deployable stacker is then fitted on every fold's OOF predictions.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

import numpy as np
import pandas as pd

from core import progress
from core.errors import BadConfigError, BadDataError
from tasks import metrics
from tasks.models import ModelConfig, ProbaModel, get_model
from tasks.models.base import TARGET
from tasks.models.stacker import PREFIX, StackerModel

ONE_HOUR = pd.Timedelta(hours=1)
OOF_KEYS = ["symbol", "open_time", "fold", "target_up", "target_log_return", "climatology"]


@dataclass(frozen=True)
class Fold:
    """One walk-forward fold; every window is half-open ``[start, end)`` in open time."""

    number: int
    train_start: pd.Timestamp | None
    train_end: pd.Timestamp
    valid_start: pd.Timestamp
    valid_end: pd.Timestamp
    test_start: pd.Timestamp
    test_end: pd.Timestamp

    def describe(self) -> dict[str, str | None]:
        """ISO strings of the window edges (JSON-friendly)."""
        return {k: (v.isoformat() if isinstance(v, pd.Timestamp) else v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class WalkForward:
    """Purged, embargoed walk-forward splits over ``[test_start, test_end)``.

    Attributes:
        test_start: first open time of the first test window.
        test_end: end (exclusive) of the last test window.
        folds: number of equal test windows.
        step: the candle interval.
        valid_bars: length of each validation window (inside the training period).
        horizon: the label horizon in bars (the purge).
        embargo: extra bars left out between validation and test.
        window: ``expanding`` (train from the first row) or ``rolling``.
        train_bars: training window length for ``rolling``.
    """

    test_start: pd.Timestamp
    test_end: pd.Timestamp
    folds: int = 4
    step: pd.Timedelta = ONE_HOUR
    valid_bars: int = 24 * 30
    horizon: int = 1
    embargo: int = 24
    window: Literal["expanding", "rolling"] = "expanding"
    train_bars: int | None = None

    @classmethod
    def before(
        cls,
        end: pd.Timestamp,
        test_days: float,
        folds: int,
        step: pd.Timedelta = ONE_HOUR,
        valid_days: float = 30,
        embargo: int = 24,
        window: Literal["expanding", "rolling"] = "expanding",
        train_days: float | None = None,
    ) -> WalkForward:
        """``folds`` test windows covering the ``test_days`` before ``end`` (lengths in days)."""
        return cls(
            test_start=(end - pd.Timedelta(days=test_days)).ceil(step),
            test_end=end,
            folds=folds,
            step=step,
            valid_bars=int(pd.Timedelta(days=valid_days) / step),
            embargo=embargo,
            window=window,
            train_bars=int(pd.Timedelta(days=train_days) / step) if train_days else None,
        )

    def __post_init__(self) -> None:
        if self.folds < 1 or self.valid_bars < 1 or self.horizon < 1 or self.embargo < 0:
            raise BadConfigError("walk-forward needs folds, valid_bars, horizon >= 1 and embargo >= 0")
        if self.test_end <= self.test_start:
            raise BadConfigError(f"walk-forward test window is empty: {self.test_start} → {self.test_end}")
        if self.window == "rolling" and not self.train_bars:
            raise BadConfigError("a rolling walk-forward needs train_bars")

    def splits(self) -> list[Fold]:
        """The folds, oldest first (test windows aligned to the candle interval)."""
        span = (self.test_end - self.test_start) / self.folds
        edges = [(self.test_start + span * k).floor(self.step) for k in range(self.folds)] + [self.test_end]
        return [self.fold(k, edges[k], edges[k + 1]) for k in range(self.folds)]

    def fold(self, number: int, test_start: pd.Timestamp, test_end: pd.Timestamp) -> Fold:
        """The fold whose test window is ``[test_start, test_end)``, purged and embargoed.

        The training flow also uses it past the last walk-forward fold: the shadow
        window, whose fold's models become the deployable ensemble's base models.
        """
        valid_end = test_start - self.step * (self.horizon + self.embargo)
        valid_start = valid_end - self.step * self.valid_bars
        train_end = valid_start - self.step * self.horizon
        rolling = self.window == "rolling" and self.train_bars is not None
        train_start = train_end - self.step * (self.train_bars or 0) if rolling else None
        return Fold(number, train_start, train_end, valid_start, valid_end, test_start, test_end)

    def split(self, matrix: pd.DataFrame, fold: Fold) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
        """Train, validation and test rows of ``matrix`` for ``fold`` (each checked non-empty)."""
        t = matrix["open_time"]
        lower = t >= fold.train_start if fold.train_start is not None else pd.Series(True, index=t.index)
        parts = (
            matrix[lower & (t < fold.train_end)],
            matrix[(t >= fold.valid_start) & (t < fold.valid_end)],
            matrix[(t >= fold.test_start) & (t < fold.test_end)],
        )
        for name, part in zip(("train", "valid", "test"), parts, strict=True):
            if part.empty:
                raise BadDataError(self._too_little(matrix, fold, name))
        return parts

    def _too_little(self, matrix: pd.DataFrame, fold: Fold, part: str) -> str:
        """Say how much history the plan needs and how much the data has."""
        first, last = matrix["open_time"].min(), matrix["open_time"].max()
        needed = (self.test_end - self.splits()[0].train_end) / pd.Timedelta(days=1)
        have = (last - first) / pd.Timedelta(days=1) if len(matrix) else 0.0
        span = f"{first:%Y-%m-%d %H:%M} → {last:%Y-%m-%d %H:%M}" if len(matrix) else "no rows"
        return (
            f"walk-forward fold {fold.number} has no {part} rows: the plan needs more than "
            f"{needed:.0f} days of labelled feature rows before {self.test_end:%Y-%m-%d %H:%M} "
            f"(test windows, validation, purge and embargo, then training), the data has "
            f"{have:.0f} days ({span}, after the features' warm-up); ingest earlier candles "
            "or lower --test-days / --folds"
        )


@dataclass
class WalkForwardResult:
    """What a walk-forward produced.

    Attributes:
        oof: OOF P(up) per row (``p_<model>``; ``p_stacker`` from the second fold on).
        folds: the folds.
        reports: model → one fit report per fold.
        stacker: the stacker fitted on every fold's OOF rows (None with one fold).
        stacker_by_fold: fold → weights of the stacker that predicted it.
    """

    oof: pd.DataFrame
    folds: list[Fold]
    reports: dict[str, list[dict[str, Any]]]
    stacker: StackerModel | None
    stacker_by_fold: dict[int, dict[str, float]]

    def stacked_rows(self) -> pd.DataFrame:
        """The rows every model and the stacker predicted (the fair comparison set)."""
        return self.oof[self.oof[f"{PREFIX}stacker"].notna()] if self.stacker is not None else self.oof

    def summary(self) -> dict[str, Any]:
        """Metrics per model over the stacker's rows, and per fold, beside climatology."""
        rows = self.stacked_rows()
        names = [c.removeprefix(PREFIX) for c in self.oof.columns if c.startswith(PREFIX)]
        out: dict[str, Any] = {"rows": len(rows), "models": {}, "folds": [f.describe() for f in self.folds]}
        for name in names:
            col = f"{PREFIX}{name}"
            overall = metrics.of_rows(rows, col)
            per_fold = [
                {"fold": int(str(k)), **metrics.of_rows(g, col)}
                for k, g in self.oof[self.oof[col].notna()].groupby("fold")
            ]
            out["models"][name] = {**overall, "per_fold": per_fold}
        if self.stacker is not None:
            out["stacker_weights"] = self.stacker.weights
            out["stacker_zero_weight"] = self.stacker.zero_weight
            out["stacker_form"] = {
                k: self.stacker.report.get(k) for k in ("shrinkage", "intercept", "anchor")
            }
        return out


def walk_forward(
    matrix: pd.DataFrame,
    names: Sequence[str],
    config: ModelConfig,
    plan: WalkForward,
) -> WalkForwardResult:
    """Fit every base model on each fold, collect OOF P(up), then walk the stacker forward.

    Runs in this process, one fit after another; the training flow runs the same
    :func:`fit_fold` calls as concurrent Prefect tasks and then :func:`collect`.
    """
    folds = plan.splits()
    total = len(folds) * len(names)
    fits: list[FoldFit] = []
    tests: list[pd.DataFrame] = []
    for fold in folds:
        train, valid, test = plan.split(matrix, fold)
        tests.append(oof_keys(fold, train, test))
        context = fold_context(matrix, fold)
        for name in names:
            fits.append(fit_fold(name, config, fold, train, valid, test, context))
            progress.report("walk-forward", len(fits), total)
    return collect(folds, tests, fits, names, config, plan)


@dataclass
class FoldFit:
    """One base model fitted for one fold, and its P(up) on the fold's test rows."""

    name: str
    fold: int
    model: ProbaModel
    p: np.ndarray | None
    report: dict[str, Any]


def fold_context(matrix: pd.DataFrame, fold: Fold) -> pd.DataFrame:
    """Rows before the test window a sequence model may read as history (valid onwards)."""
    t = matrix["open_time"]
    return matrix[(t < fold.test_start) & (t >= fold.valid_start)]


def oof_keys(fold: Fold, train: pd.DataFrame, test: pd.DataFrame) -> pd.DataFrame:
    """The OOF table's key columns of one fold's test rows (climatology = train base rate)."""
    return test[["symbol", "open_time", "target_up", "target_log_return"]].assign(
        fold=fold.number, climatology=float(train[TARGET].mean())
    )


def fit_fold(
    name: str,
    config: ModelConfig,
    fold: Fold,
    train: pd.DataFrame,
    valid: pd.DataFrame,
    test: pd.DataFrame | None = None,
    context: pd.DataFrame | None = None,
) -> FoldFit:
    """Fit ``name`` on the fold's train/valid rows (seed + fold number); predict ``test``."""
    started, started_ms = time.perf_counter(), int(time.time() * 1000)
    model = get_model(name, replace(config, seed=config.seed + fold.number)).fit(train, valid)
    p = None
    if test is not None:
        p = model.predict_proba(test, context=context if model.context_rows else None).to_numpy()
    seconds = time.perf_counter() - started
    span = {"started_ms": started_ms, "ended_ms": started_ms + int(seconds * 1000)}
    report = {"fold": fold.number, "seconds": seconds, **span, **_jsonable(model.report)}
    return FoldFit(name, fold.number, model, p, report)


def collect(
    folds: list[Fold],
    tests: list[pd.DataFrame],
    fits: list[FoldFit],
    names: Sequence[str],
    config: ModelConfig,
    plan: WalkForward,
) -> WalkForwardResult:
    """The OOF table from every fold's fits, and the stacker walked forward over it."""
    by_key = {(f.name, f.fold): f for f in fits}
    frames = []
    for fold, keys in zip(folds, tests, strict=True):
        out = keys.copy()
        for name in names:
            out[f"{PREFIX}{name}"] = by_key[(name, fold.number)].p
        frames.append(out)
    reports = {name: [by_key[(name, fold.number)].report for fold in folds] for name in names}
    oof = pd.concat(frames, ignore_index=True)[OOF_KEYS + [f"{PREFIX}{n}" for n in names]]
    stacked, by_fold, final = stack_out_of_fold(oof, config, purge=plan.step * (plan.horizon - 1))
    oof[f"{PREFIX}stacker"] = stacked
    return WalkForwardResult(oof, folds, reports, final, by_fold)


def stack_out_of_fold(
    oof: pd.DataFrame, config: ModelConfig, purge: pd.Timedelta | None = None
) -> tuple[pd.Series, dict[int, dict[str, float]], StackerModel | None]:
    """The stacker's OOF P(up) (fold k learns from folds < k) and the one fitted on all folds.

    Each stacker chooses its regularisation on the latest quarter (by time) of the rows
    it learns from. Fold 0 has no earlier OOF rows, so its stacked P(up) is NaN. With a
    label horizon of h bars, ``purge`` = (h - 1) bars drops the earlier rows whose labels
    reach into fold k.
    """
    stacked = pd.Series(np.nan, index=oof.index)
    by_fold: dict[int, dict[str, float]] = {}
    folds = sorted(oof["fold"].unique())
    if len(folds) < 2:
        return stacked, by_fold, None
    for k in folds[1:]:
        rows = oof["fold"] == k
        cutoff = oof.loc[rows, "open_time"].min() - (purge or pd.Timedelta(0))
        model = _fit_stacker(oof[(oof["fold"] < k) & (oof["open_time"] < cutoff)], config)
        stacked[rows] = model.predict_proba(oof[rows]).to_numpy()
        by_fold[int(k)] = model.weights
    return stacked, by_fold, _fit_stacker(oof, config)


def _fit_stacker(rows: pd.DataFrame, config: ModelConfig) -> StackerModel:
    cut = rows["open_time"].quantile(0.75)
    train, valid = rows[rows["open_time"] <= cut], rows[rows["open_time"] > cut]
    model = StackerModel(config)
    model.fit(train[[c for c in rows.columns if c.startswith(PREFIX) or c == TARGET]], valid)
    return model


def _jsonable(report: dict[str, Any]) -> dict[str, Any]:
    """Report values as plain JSON types (numpy scalars become Python numbers)."""
    out: dict[str, Any] = {}
    for k, v in report.items():
        if isinstance(v, dict):
            out[k] = _jsonable(v)
        elif isinstance(v, np.generic):
            out[k] = v.item()
        else:
            out[k] = v
    return out
