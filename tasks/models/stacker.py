"""The logistic meta-stacker: learns how to combine base models from their OOF P(up).

It replaces the original's hard-coded "60 % TFT + 40 % XGB + 15 % agreement bonus": a
logistic regression of the label on each base model's logit(P(up)). It must only ever be
fitted on out-of-fold predictions (see :mod:`tasks.walkforward`); its coefficients are
reported as ``stacker_weights``.

With a few quarters of OOF rows a free logistic regression overfits: on the 10-pair
walk-forward it gave one family −0.22 and lost to LightGBM alone. So its form is
constrained: weights are non-negative (a family cannot be bet against) and shrunk toward
the best single model on the rows it learns from,

    min  mean log loss(y, σ(X w)) + λ ‖w − e_best‖²,   w ≥ 0,

with λ, and whether to learn an intercept, chosen on the newest quarter of those rows
(still earlier than anything it will predict). λ = ∞ is the best single model itself, so
the stacker can only depart from it when the earlier rows say combining helps. A family
whose weight ends at 0 is reported in ``zero_weight``: it stays in the pipeline, with its
measured contribution of nothing.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Self

import numpy as np
import pandas as pd

from core.errors import BadDataError
from tasks.models.base import ModelConfig, ProbaModel, binary_log_loss, clip_proba, labels, logit

#: Column holding base model NAME's P(up) in stacker input frames.
PREFIX = "p_"
#: Weights below this count as zero in reports.
ZERO = 1e-6


def proba_columns(frame: pd.DataFrame) -> list[str]:
    """The base-model probability columns of a frame (``p_<name>``), in order."""
    return [c for c in frame.columns if c.startswith(PREFIX)]


class StackerModel(ProbaModel):
    """Non-negative logistic stacking on logit(P) of each base model, shrunk toward the best one.

    ``fit`` picks the shrinkage λ on ``valid`` from ``shrink_grid`` (``inf``: the best
    single model of ``train``) and the intercept from ``intercept`` (``(False, True)``:
    chosen on ``valid`` too), then refits on ``train`` and ``valid`` together. The inputs
    are the ``p_<name>`` columns.

    The intercept used to be off by a choice made on reported rows (an intercept learned
    on earlier quarters imports their drift; the base models are anchored to their own
    training windows' base rate already). Now the earlier rows decide, as for λ.
    """

    name = "stacker"
    defaults: ClassVar[dict[str, dict[str, Any]]] = {
        "fast": {"shrink_grid": (0.0, 1e-4, 1e-3, 1e-2, math.inf), "intercept": (False, True)},
        "full": {
            "shrink_grid": (0.0, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, math.inf),
            "intercept": (False, True),
        },
    }

    def __init__(self, config: ModelConfig | None = None) -> None:
        super().__init__(config)
        self.inputs: list[str] = []
        self.coef: np.ndarray = np.zeros(0)
        self.intercept = 0.0

    @property
    def weights(self) -> dict[str, float]:
        """Base model name → its coefficient on logit(P(up)); ``intercept`` too."""
        out = {c.removeprefix(PREFIX): float(w) for c, w in zip(self.inputs, self.coef, strict=True)}
        return {**out, "intercept": self.intercept}

    @property
    def zero_weight(self) -> list[str]:
        """Base models the stacker gives no weight (they did not help on its rows)."""
        return [c.removeprefix(PREFIX) for c, w in zip(self.inputs, self.coef, strict=True) if w < ZERO]

    def fit(self, train: pd.DataFrame, valid: pd.DataFrame) -> Self:
        """Choose λ and the intercept on ``valid``, then fit on both (rows must be OOF predictions)."""
        self.inputs = proba_columns(train)
        if not self.inputs:
            raise BadDataError(f"stacker: no {PREFIX}<model> columns in its training rows")
        y_tr, y_va = labels(train, self.name), labels(valid, self.name)
        params = self.params(self.defaults)
        x_tr, x_va = self._x(train), self._x(valid)
        intercepts = (
            params["intercept"] if isinstance(params["intercept"], tuple | list) else (params["intercept"],)
        )
        scores: dict[tuple[float, bool], float] = {}
        for lam in params["shrink_grid"]:
            for with_b in dict.fromkeys(bool(b) and math.isfinite(lam) for b in intercepts):
                coef, b = fit_shrunk(x_tr, y_tr, lam, with_b)
                scores[(lam, with_b)] = binary_log_loss(y_va, _sigmoid(x_va @ coef + b))
        # ties go to the simpler form: more shrinkage, no intercept
        best = min(scores, key=lambda k: (scores[k], -k[0], k[1]))
        x_all, y_all = np.vstack([x_tr, x_va]), np.concatenate([y_tr, y_va])
        self.coef, self.intercept = fit_shrunk(x_all, y_all, *best)
        self.report.update(
            shrinkage=best[0] if math.isfinite(best[0]) else "inf (best single model)",
            intercept=best[1],
            anchor=self.inputs[_best_column(x_all, y_all)].removeprefix(PREFIX),
            valid_log_loss=scores[best],
            weights=self.weights,
            zero_weight=self.zero_weight,
            rows=len(x_all),
        )
        return self

    def predict_proba(self, frame: pd.DataFrame, context: pd.DataFrame | None = None) -> pd.Series:
        """Stacked P(up) of each row."""
        if not self.inputs:
            raise RuntimeError("stacker: predict_proba before fit")
        z = self._x(frame) @ self.coef + self.intercept
        return pd.Series(clip_proba(_sigmoid(z)), index=frame.index, name=self.name)

    def _x(self, frame: pd.DataFrame) -> np.ndarray:
        missing = [c for c in self.inputs if c not in frame]
        if missing:
            raise BadDataError(f"stacker: input lacks {missing}")
        values = frame[self.inputs].to_numpy(dtype=np.float64)
        if np.isnan(values).any():
            raise BadDataError("stacker: a base model's P(up) is NaN")
        return logit(values)


def fit_shrunk(x: np.ndarray, y: np.ndarray, lam: float, intercept: bool = False) -> tuple[np.ndarray, float]:
    """Non-negative weights (and intercept) minimising log loss + λ‖w − e_best‖².

    ``x`` holds logit(P) per model; e_best is the indicator of the column with the lowest
    log loss on these rows. λ = ∞ returns e_best itself (and no intercept).
    """
    from scipy.optimize import minimize

    anchor = np.zeros(x.shape[1])
    anchor[_best_column(x, y)] = 1.0
    if math.isinf(lam):
        return anchor, 0.0
    n = len(y)

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = theta[:-1], theta[-1]
        z = x @ w + b
        loss = float(np.mean(np.logaddexp(0.0, z) - y * z)) + lam * float(np.sum((w - anchor) ** 2))
        resid = _sigmoid(z) - y
        grad_w = x.T @ resid / n + 2.0 * lam * (w - anchor)
        return loss, np.append(grad_w, resid.mean() if intercept else 0.0)

    bounds = [(0.0, None)] * x.shape[1] + [(None, None) if intercept else (0.0, 0.0)]
    start = np.append(anchor, 0.0)
    found = minimize(objective, start, jac=True, method="L-BFGS-B", bounds=bounds)
    return np.maximum(found.x[:-1], 0.0), float(found.x[-1])


def _best_column(x: np.ndarray, y: np.ndarray) -> int:
    """The model (column of logit P) with the lowest log loss on these rows."""
    return int(np.argmin([binary_log_loss(y, _sigmoid(x[:, j])) for j in range(x.shape[1])]))


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))
