"""The deployable ensemble: base models + stacker + the P(up) → action policy, as one object.

:func:`fit_ensemble` fits every base model on the newest data (training window, then the
latest validation window for early stopping) and takes the stacker fitted on all the
walk-forward's out-of-fold predictions. :meth:`Ensemble.predict` turns feature rows into
one prediction per symbol (its newest row): P(up), each model's P(up), confidence, and an
action from the policy the backtest uses (:meth:`Policy.events`: BUY/SELL where it would
open a long/short, else HOLD).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from core.errors import BadDataError
from tasks.backtest import Costs, Policy, edge_scales
from tasks.models import ModelConfig, ProbaModel, get_model
from tasks.models.base import TARGET
from tasks.models.stacker import PREFIX, StackerModel
from tasks.walkforward import WalkForward


@dataclass
class Ensemble:
    """Everything the live side and the API need to turn features into decisions.

    Attributes:
        interval: candle interval the models learned.
        models: base model name → fitted model.
        stacker: the logistic stacker (fitted on OOF predictions only).
        policy: the P(up) → position rule.
        costs: the costs the policy weighs edges against.
        abs_return: symbol → mean absolute bar return of the training data (edge scale).
        trained_until: last open time the ensemble saw (base models and stacker).
        metrics: the walk-forward figures this ensemble was chosen on.
        base_rate: share of up bars in the base models' training rows.
        market: spot or futures (a registered model per interval and market).
    """

    interval: str
    models: dict[str, ProbaModel]
    stacker: StackerModel
    policy: Policy
    costs: Costs
    abs_return: dict[str, float]
    trained_until: str
    metrics: dict[str, float] = field(default_factory=dict)
    base_rate: float = 0.5
    market: str = "spot"

    @property
    def history_rows(self) -> int:
        """Feature rows per symbol the newest row needs before it (sequence encoders)."""
        return max([m.context_rows for m in self.models.values()] + [0])

    @property
    def weights(self) -> dict[str, float]:
        """The stacker's weights."""
        return self.stacker.weights

    def predict_rows(self, frame: pd.DataFrame, history: pd.DataFrame | None = None) -> pd.DataFrame:
        """P(up) of every row of ``frame`` (``p_stacker``) and of each model (``p_<name>``).

        ``history``: earlier feature rows of the same symbols (for sequence encoders).
        """
        out = pd.DataFrame(index=frame.index)
        for name, model in self.models.items():
            out[f"{PREFIX}{name}"] = model.predict_proba(frame, context=history).to_numpy()
        out[f"{PREFIX}stacker"] = self.stacker.predict_proba(out).to_numpy()
        return out

    def predict(self, frame: pd.DataFrame) -> pd.DataFrame:
        """One prediction per symbol: its newest row of ``frame`` (earlier rows are history).

        Columns: ``symbol``, ``open_time``, ``p_up``, ``confidence``, ``action``,
        ``p_<model>`` per base model.

        Raises:
            BadDataError: no rows, or too little history for a sequence model (naming it).
        """
        if frame.empty:
            raise BadDataError("ensemble: no feature rows to predict")
        ordered = frame.sort_values(["symbol", "open_time"])
        latest = ordered.groupby("symbol").tail(1)
        history = ordered.drop(latest.index)
        per_model = pd.DataFrame(index=latest.index)
        for name, model in self.models.items():
            p = model.predict_proba(latest, context=history if model.context_rows else None)
            per_model[f"{PREFIX}{name}"] = p.to_numpy()
        p_up = self.stacker.predict_proba(per_model).to_numpy()
        scale = edge_scales(self.abs_return, latest["symbol"].astype(str).tolist())
        atr = latest["atr_pct"].to_numpy() if "atr_pct" in latest else None
        event = self.policy.events(p_up, scale, self.costs.per_side(atr))
        action = np.where(event == 1.0, "BUY", np.where(event == -1.0, "SELL", "HOLD"))
        out = pd.DataFrame(
            {
                "symbol": latest["symbol"].astype(str).to_numpy(),
                "open_time": latest["open_time"].to_numpy(),
                "p_up": p_up,
                "confidence": np.abs(2 * p_up - 1),
                "action": action,
            }
        )
        for col in per_model.columns:
            out[col] = per_model[col].to_numpy()
        return out


def fit_ensemble(
    matrix: pd.DataFrame,
    names: list[str],
    config: ModelConfig,
    plan: WalkForward,
    stacker: StackerModel,
    interval: str,
    costs: Costs,
    policy: Policy | None = None,
    metrics: dict[str, Any] | None = None,
) -> Ensemble:
    """Fit the base models on the newest data and bundle them with the OOF-fitted stacker.

    The last ``plan.valid_bars`` labelled bars are the validation window (early stopping,
    calibration); training rows end a purge before it.
    """
    end = matrix["open_time"].max() + plan.step
    valid_start = end - plan.step * plan.valid_bars
    train = matrix[matrix["open_time"] < valid_start - plan.step * plan.horizon]
    valid = matrix[matrix["open_time"] >= valid_start]
    if train.empty or valid.empty:
        raise BadDataError(
            f"ensemble: too little data before {end} for a {plan.valid_bars}-bar validation window"
        )
    models = {n: get_model(n, config).fit(train, valid) for n in names}
    trained_until = matrix.loc[matrix[TARGET].notna(), "open_time"].max()
    return assemble_ensemble(models, stacker, train, trained_until, interval, costs, policy, metrics)


def assemble_ensemble(
    models: dict[str, ProbaModel],
    stacker: StackerModel,
    train: pd.DataFrame,
    trained_until: pd.Timestamp,
    interval: str,
    costs: Costs,
    policy: Policy | None = None,
    metrics: dict[str, Any] | None = None,
    market: str = "spot",
) -> Ensemble:
    """Bundle fitted base models and the OOF-fitted stacker.

    ``train``: the base models' training rows (the edge scale and base rate come from
    them); ``trained_until``: the newest open time any base model saw (validation included).
    """
    abs_return = {str(s): float(g.abs().mean()) for s, g in train.groupby("symbol")["target_log_return"]}
    figures = {k: float(v) for k, v in (metrics or {}).items() if isinstance(v, int | float)}
    return Ensemble(
        interval=interval,
        models=models,
        stacker=stacker,
        policy=policy or Policy(),
        costs=costs,
        abs_return=abs_return,
        trained_until=str(trained_until),
        metrics=figures,
        base_rate=float(train[TARGET].mean()),
        market=market,
    )
