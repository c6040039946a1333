"""The supervisor's verdicts in MLflow: experiment ``monitoring``, one run per UTC day, with its plots."""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import pandas as pd

from core.settings import Settings
from serving.supervisor import Verdict
from tasks.strategy.risk import Mode

EXPERIMENT = "monitoring"


def log_monitoring(settings: Settings, verdict: Verdict, outcomes: pd.DataFrame) -> str:
    """Log the verdict to MLflow: experiment ``monitoring``, one run per UTC day; returns its id.

    Each check is a metric (step: minutes into the day), per-model figures are
    ``<model>.<figure>``; the newest reliability diagram and drift chart replace the day's
    plots, and every verdict is kept as ``checks/<HHMM>.json``.
    """
    import mlflow

    from tasks import plots
    from tasks.evaluation import reliability
    from tasks.tracking import experiment_id, use_store

    use_store(settings)
    when = pd.Timestamp(verdict.time)
    day = when.strftime("%Y-%m-%d")
    experiment = experiment_id(settings, EXPERIMENT)
    tags = {"monitor.day": day, "monitor.interval": verdict.interval, "monitor.market": verdict.market}
    query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    found = mlflow.search_runs([experiment], filter_string=query, max_results=1, output_format="list")
    step = int(when.hour * 60 + when.minute)
    with mlflow.start_run(
        run_id=found[0].info.run_id if found else None,
        experiment_id=experiment,
        run_name=None if found else f"monitor {day} {verdict.interval} {verdict.market}",
        tags=None if found else tags,
    ) as run:
        values = {f"check.{c['check']}": c["value"] for c in verdict.checks}
        values |= {f"{m['model']}.{k}": v for m in verdict.models for k, v in m.items() if k != "model"}
        values |= {"rows": verdict.rows, "defensive": float(verdict.mode != Mode.NORMAL.value)}
        finite = {k: float(v) for k, v in values.items() if isinstance(v, int | float) and math.isfinite(v)}
        mlflow.log_metrics(finite, step=step, timestamp=int(when.timestamp() * 1000))
        mlflow.set_tags({"model_version": str(verdict.model_version), "mode": verdict.mode})
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            (folder / f"{when.strftime('%H%M')}.json").write_text(json.dumps(verdict.as_dict(), default=str))
            mlflow.log_artifact(str(folder / f"{when.strftime('%H%M')}.json"), "checks")
            if len(outcomes):
                curves = {str(m): reliability(r["up"].to_numpy(), r["p_up"].to_numpy())
                          for m, r in outcomes.groupby("model")}  # fmt: skip
                title = "Live reliability (newest window)"
                figure = plots.reliability_diagram(curves, folder / "live_reliability.png", title=title)
                mlflow.log_artifact(str(figure))
            if verdict.drift:
                title = "Feature drift: PSI, window vs training"
                mlflow.log_artifact(str(plots.bar_chart(verdict.drift, folder / "feature_drift.png", title)))
        return str(run.info.run_id)
