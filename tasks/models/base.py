"""What every model family shares: the interface, its settings, and P(up) plumbing.

A family is a :class:`ProbaModel`: ``fit(train, valid) -> self`` on feature-matrix
frames (``symbol``, ``open_time``, features, ``target_*``) and ``predict_proba(frame)``
giving P(up) for the next bar as a Series aligned with ``frame``'s index.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Self

import numpy as np
import pandas as pd

from core.errors import BadDataError

Profile = Literal["fast", "full"]
TARGET = "target_up"
RETURN_TARGET = "target_log_return"
#: Probabilities are kept this far from 0 and 1 so log loss and logits stay finite.
EPS = 1e-6


@dataclass(frozen=True)
class ModelConfig:
    """Settings every family reads (each takes what applies to it).

    Attributes:
        profile: ``fast`` (small nets, few epochs: minutes on 2 cores) or ``full``.
        seed: one seed for every random choice (sampling, initialisation, Optuna).
        device: ``auto`` (a GPU when torch sees one, else CPU), ``cpu`` or ``gpu``.
        trials: Optuna trials per fit for the tuned families (0: profile defaults).
        study_dir: where Optuna keeps its studies (SQLite); None keeps them in memory.
        n_jobs: threads for the boosting libraries and torch.
        progress: show training progress bars.
        params: per-family overrides of the profile defaults (``{"tft": {"hidden_size": 8}}``).
    """

    profile: Profile = "fast"
    seed: int = 42
    device: Literal["auto", "cpu", "gpu"] = "auto"
    trials: int = 0
    study_dir: Path | None = None
    n_jobs: int = field(default_factory=lambda: max(1, min(os.cpu_count() or 1, 2)))
    progress: bool = False
    params: dict[str, dict[str, Any]] = field(default_factory=dict)


class ProbaModel(ABC):
    """A model family: learns P(up) of the next bar from feature-matrix rows.

    Attributes:
        name: the registry name.
        context_rows: rows of history each symbol needs *before* a row to predict it
            (0 for tabular models; the encoder length for sequence models).
        report: what fitting learned that people should see (validation log loss,
            chosen parameters, ...), all JSON-friendly.
    """

    name: ClassVar[str]
    context_rows: int = 0

    def __init__(self, config: ModelConfig | None = None) -> None:
        self.config = config or ModelConfig()
        self.report: dict[str, Any] = {}

    def params(self, defaults: dict[str, dict[str, Any]]) -> dict[str, Any]:
        """The profile's defaults for this family, with ``config.params`` overrides."""
        return {**defaults[self.config.profile], **self.config.params.get(self.name, {})}

    @abstractmethod
    def fit(self, train: pd.DataFrame, valid: pd.DataFrame) -> Self:
        """Learn from ``train``; ``valid`` (later rows) drives early stopping and calibration."""

    @abstractmethod
    def predict_proba(self, frame: pd.DataFrame, context: pd.DataFrame | None = None) -> pd.Series:
        """P(up) of each row of ``frame`` (same index), strictly inside (0, 1).

        ``context``: earlier rows of the same symbols that sequence models may read as
        history (ignored by tabular models).
        """


def clip_proba(p: np.ndarray | pd.Series) -> np.ndarray:
    """Probabilities clipped to [EPS, 1 - EPS] as float64."""
    return np.clip(np.asarray(p, dtype=np.float64), EPS, 1 - EPS)


def logit(p: np.ndarray | pd.Series) -> np.ndarray:
    """log(p / (1 - p)) of clipped probabilities."""
    q = clip_proba(p)
    return np.log(q / (1 - q))


def labels(frame: pd.DataFrame, who: str) -> np.ndarray:
    """``target_up`` as 0/1 integers, checked (no NaN, both classes present).

    Raises:
        BadDataError: the column is missing, has unknown rows, or has one class only.
    """
    if TARGET not in frame:
        raise BadDataError(f"{who}: training rows need the {TARGET!r} column")
    y = frame[TARGET]
    if y.isna().any():
        bad = frame.loc[y.isna()].iloc[0]
        raise BadDataError(
            f"{who}: {int(y.isna().sum())} training rows have no {TARGET} "
            f"(first: {bad.get('symbol')} {bad.get('open_time')}); drop unlabeled rows first"
        )
    values = y.to_numpy(dtype=np.int64)
    if len(np.unique(values)) < 2:
        raise BadDataError(f"{who}: {TARGET} has a single class in {len(values)} rows")
    return values


def check_features(frame: pd.DataFrame, columns: list[str], who: str) -> None:
    """Raise a BadDataError naming the first feature column ``frame`` lacks."""
    missing = [c for c in columns if c not in frame]
    if missing:
        raise BadDataError(f"{who}: input lacks feature columns {missing[:5]} ({len(missing)} missing)")


def split_valid(valid: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Earlier half of the validation rows (early stopping, tuning) and later half (calibration).

    Split by time, so calibration rows are never older than stopping rows. With fewer
    than 400 rows both halves are the whole window.
    """
    if len(valid) < 400:
        return valid, valid
    cut = valid["open_time"].quantile(0.5)
    early, late = valid[valid["open_time"] <= cut], valid[valid["open_time"] > cut]
    return (early, late) if len(early) and len(late) else (valid, valid)


@dataclass(frozen=True)
class Platt:
    """Platt scaling: P = sigmoid(a * logit(p) + b), fitted on later (validation) rows."""

    a: float = 1.0
    b: float = 0.0

    @classmethod
    def fit(cls, p: np.ndarray, y: np.ndarray, seed: int = 0) -> Platt:
        """Fit by (lightly regularised) logistic regression of ``y`` on logit(``p``)."""
        from sklearn.linear_model import LogisticRegression

        lr = LogisticRegression(C=100.0, random_state=seed).fit(logit(p).reshape(-1, 1), y)
        return cls(a=float(lr.coef_[0, 0]), b=float(lr.intercept_[0]))

    def __call__(self, p: np.ndarray) -> np.ndarray:
        """Calibrated probabilities of raw ones."""
        return clip_proba(1.0 / (1.0 + np.exp(-(self.a * logit(p) + self.b))))


def binary_log_loss(y: np.ndarray, p: np.ndarray) -> float:
    """Mean binary cross-entropy of clipped probabilities."""
    q = clip_proba(p)
    return float(-np.mean(y * np.log(q) + (1 - y) * np.log(1 - q)))
