"""``qt evaluate``: a registered ensemble on stored data, with baselines on the same rows."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from core.errors import BadConfigError, BadDataError
from model_registry.ensemble import Ensemble
from tasks.backtest import Costs
from tasks.evaluation import evaluate
from tasks.models.stacker import PREFIX


def evaluate_ensemble(
    ensemble: Ensemble,
    matrix: pd.DataFrame,
    step: pd.Timedelta,
    costs: Costs,
    start: pd.Timestamp | None = None,
    end: pd.Timestamp | None = None,
    gated_until: pd.Timestamp | None = None,
) -> dict[str, Any]:
    """Classification and backtest of ``ensemble`` on the labelled rows in ``[start, end]``.

    Default ``start``: the first bar after both the data the ensemble was trained on and
    the rows its promotion gate judged it on (``gated_until``, the shadow window's last
    bar), so the figures are out of sample and were not used to choose the model; an
    earlier start is allowed and reported (``in_sample``, ``gate_rows``). The backtest
    trades the ensemble's own policy and edge scale, as the live loop does.

    Raises:
        BadConfigError: the range holds no labelled rows.
    """
    trained_until = pd.Timestamp(ensemble.trained_until)
    seen = max(trained_until, gated_until) if gated_until is not None else trained_until
    first = start if start is not None else seen + step
    t = matrix["open_time"]
    chosen = matrix[(t >= first) & ((t <= end) if end is not None else True)]
    if chosen.empty:
        raise BadConfigError(
            f"no labelled rows in {first} → {end or 'newest'} (model trained until {trained_until}"
            + (f", gated on rows until {gated_until}" if gated_until is not None else "")
            + "); "
            "ingest newer candles or choose --start/--end"
        )
    history = matrix[t < first]
    table = chosen[["symbol", "open_time", "target_up", "target_log_return"]].assign(
        fold=0, climatology=ensemble.base_rate
    )
    table = table.join(ensemble.predict_rows(chosen, history))
    if table.filter(like=PREFIX).isna().any().any():
        raise BadDataError("a model gave no P(up) for some rows")
    report = evaluate(table, matrix, step, costs, ensemble.policy, abs_return=ensemble.abs_return).report
    report["per_model"] = {
        n: {"auc": v["auc"], "log_loss": v["log_loss"]} for n, v in report["per_model"].items()
    }
    report["stacker_weights"] = ensemble.weights
    report["in_sample"] = bool(first <= trained_until)
    report["trained_until"] = str(trained_until)
    report["gate_rows"] = bool(gated_until is not None and first <= gated_until)
    report["gated_until"] = str(gated_until) if gated_until is not None else None
    return _finite(report)


def _finite(value: Any) -> Any:
    """Replace inf/NaN by None so the JSON stays valid (profit factor with no losses, ...)."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value
