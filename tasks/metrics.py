"""Classification metrics of P(up), each beside climatology (the training window's base rate)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from tasks.models.base import binary_log_loss, clip_proba


def auc(y: np.ndarray, p: np.ndarray) -> float:
    """Area under the ROC curve (NaN when only one class is present)."""
    from sklearn.metrics import roc_auc_score

    y = np.asarray(y)
    return float(roc_auc_score(y, p)) if len(np.unique(y)) == 2 else float("nan")


def brier(y: np.ndarray, p: np.ndarray) -> float:
    """Mean squared error of the probabilities."""
    return float(np.mean((clip_proba(p) - np.asarray(y, dtype=np.float64)) ** 2))


def probability_bins(p: np.ndarray, bins: int = 10) -> np.ndarray:
    """Equal-count bins of probabilities (bin index per row, 0 … bins-1, by rank).

    P(up) of next-bar models sits in a narrow band around 0.5; equal-width bins would
    put almost every row in two bins and hide miscalibration, so bins hold equal counts.
    """
    q = np.asarray(p, dtype=np.float64)
    if len(q) == 0:
        return np.zeros(0, dtype=np.int64)
    rank = np.argsort(np.argsort(q, kind="stable"), kind="stable")
    return np.minimum(rank * bins // len(q), bins - 1).astype(np.int64)


def ece(y: np.ndarray, p: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error over equal-count probability bins (see :func:`probability_bins`)."""
    q = clip_proba(p)
    y = np.asarray(y, dtype=np.float64)
    which = probability_bins(q, bins)
    total = 0.0
    for b in np.unique(which):
        sel = which == b
        total += sel.mean() * abs(q[sel].mean() - y[sel].mean())
    return float(total)


def chance_ece(rows: int, bins: int = 10) -> float:
    """Twice the ECE a calibrated model shows by chance on ``rows`` rows (``bins`` equal-count bins).

    A bin's observed up rate misses its mean P(up) ≈ ½ by |N(0, ¼ / n)| on average,
    √(2/π)·√(¼/n) for n rows per bin.
    """
    per_bin = max(rows // bins, 1)
    return 2 * math.sqrt(2 / math.pi) * math.sqrt(0.25 / per_bin)


def classification(y: np.ndarray, p: np.ndarray, base_rate: float | np.ndarray) -> dict[str, float]:
    """AUC, log loss, Brier, accuracy and ECE of ``p``, with climatology's log loss and Brier.

    ``base_rate`` is the training window's share of up bars (one number, or one per row
    when rows come from folds with different training windows).
    """
    y = np.asarray(y, dtype=np.float64)
    clim = np.broadcast_to(np.asarray(base_rate, dtype=np.float64), y.shape)
    return {
        "auc": auc(y, p),
        "log_loss": binary_log_loss(y, np.asarray(p)),
        "log_loss_climatology": binary_log_loss(y, clim),
        "brier": brier(y, p),
        "brier_climatology": brier(y, clim),
        "accuracy": float(np.mean((np.asarray(p) > 0.5) == (y > 0.5))),
        "ece": ece(y, p),
    }


def of_rows(rows: pd.DataFrame, column: str) -> dict[str, float]:
    """:func:`classification` of a P(up) column of an OOF table (``target_up``, ``climatology``)."""
    return classification(
        rows["target_up"].to_numpy(), rows[column].to_numpy(), rows["climatology"].to_numpy(dtype=np.float64)
    )


def calibration_line(y: np.ndarray, p: np.ndarray, clusters: np.ndarray | None = None) -> dict[str, float]:
    """Calibration intercept and slope: the logistic fit ``P(y=1) = σ(a + b·logit(p))``.

    A calibrated model has ``a = 0, b = 1``; ``b < 1`` is over-confidence (``b = ⅓`` for
    logits three times too large), ``b < 0`` inverted ranking. Unlike ECE, the slope does
    not shrink with the spread of the predictions. Standard errors are cluster-robust
    (sandwich) when ``clusters`` is given — the rows of one bar share its market move —
    else the model-based ones. ``slope``/``slope_se`` are NaN when ``p`` is constant, and
    all four when the fit has no solution (a handful of rows the logit separates).
    """
    y = np.asarray(y, dtype=np.float64)
    q = clip_proba(np.asarray(p, dtype=np.float64))
    x = np.log(q / (1 - q))
    nan = {
        "intercept": float("nan"),
        "slope": float("nan"),
        "intercept_se": float("nan"),
        "slope_se": float("nan"),
    }
    if len(y) < 3 or np.std(x) < 1e-9 or len(np.unique(y)) < 2:
        return nan
    try:
        return _calibration_fit(y, x, clusters)
    except np.linalg.LinAlgError:
        return nan


def _calibration_fit(y: np.ndarray, x: np.ndarray, clusters: np.ndarray | None) -> dict[str, float]:
    """Newton–Raphson logistic fit of ``y`` on ``[1, x]``, with (clustered) standard errors."""
    design = np.column_stack([np.ones_like(x), x])
    beta = np.zeros(2)
    for _ in range(50):  # Newton–Raphson on the log-likelihood; converges in a handful of steps
        mu = 1 / (1 + np.exp(-(design @ beta)))
        hessian = design.T @ (design * (mu * (1 - mu))[:, None])
        move = np.linalg.solve(hessian, design.T @ (y - mu))
        beta = beta + move
        if np.max(np.abs(move)) < 1e-10:
            break
    mu = 1 / (1 + np.exp(-(design @ beta)))
    bread = np.linalg.inv(design.T @ (design * (mu * (1 - mu))[:, None]))
    if clusters is None:
        cov = bread
    else:
        scores = pd.DataFrame(design * (y - mu)[:, None]).groupby(np.asarray(clusters)).sum().to_numpy()
        cov = bread @ (scores.T @ scores) @ bread
    se = np.sqrt(np.diag(cov))
    return {
        "intercept": float(beta[0]),
        "slope": float(beta[1]),
        "intercept_se": float(se[0]),
        "slope_se": float(se[1]),
    }
