"""The training flow, one Prefect flow as the design card reads.

ingest → validate → features → fits → stack → evaluate → register challenger → shadow
→ promote. The base models are fitted as concurrent tasks, one per (family, fold), on the
flow's task runner (:mod:`flows.runners`: Prefect's process pool, or a Dask cluster with
``QT_TASK_RUNNER=dask``; each fit seeds itself, so results do not depend on scheduling).
The folds are a purged, embargoed walk-forward over the ``test_days`` before the shadow
window; one more fold, whose test window is the shadow window (the newest
``shadow_hours`` of closed candles), fits the deployable base models, so the shadow rows
are the challenger's first unseen rows. The stacker learns from the walk-forward's
out-of-fold predictions only.

The end is a decision: the challenger is registered, compared with the champion on the
same out-of-sample rows and in shadow, and promoted only through the gate
(:mod:`model_registry.promotion`). Everything lands in one MLflow parent run with a child
run per family and for the stacker. The steps are in :mod:`flows.training_tasks`; the
parameters, checked, and the window arithmetic in :class:`Retrain`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from prefect import flow

from core.candles import check_market, interval_ms
from core.errors import BadConfigError
from core.settings import Settings, load_settings
from core.timeutil import parse_utc
from flows.runners import cpu_runner, describe, threads_per_fit
from flows.training_tasks import (
    TARGETS,
    champion_of,
    evaluate_task,
    features_task,
    fit_models,
    promote_task,
    register_task,
    retrain_slot,
    shadow_task,
    stack_task,
    summary_metrics,
    true_labels,
    validate_task,
    with_label_noise,
)
from model_registry.ensemble import assemble_ensemble
from model_registry.promotion import GateConfig, shared_rows
from tasks.backtest import Costs
from tasks.evaluation import Evaluation
from tasks.models import ModelConfig, parse_models
from tasks.models.base import TARGET
from tasks.tracking import FitSpan, experiment_name, open_flow_run
from tasks.walkforward import Fold, WalkForward


@dataclass
class Retrain:
    """One retrain's parameters, checked before any download or fit, and its window arithmetic."""

    settings: Settings
    parameters: dict[str, Any]  # the flow's parameters as given
    names: list[str]  # base families
    step: pd.Timedelta  # one candle
    cut: pd.Timestamp | None  # candles from here on do not exist for this run

    @classmethod
    def of(cls, parameters: dict[str, Any]) -> Retrain:
        """The flow's parameters checked (market, ``until``, families, folds) and the home's settings."""
        p = dict(parameters)
        check_market(p["market"])
        cut = parse_utc(p["until"], "--until")
        names = parse_models(",".join(p["models"]) if p["models"] else None)
        if p["folds"] < 2:
            raise BadConfigError("--folds must be at least 2: the stacker learns from earlier folds' OOF")
        settings = load_settings(Path(p["home"]) if p["home"] else None)
        return cls(settings, p, names, pd.Timedelta(milliseconds=interval_ms(p["interval"])), cut)

    def __getattr__(self, name: str) -> Any:  # run.interval, run.market, … read the parameters
        try:
            return self.__dict__["parameters"][name]
        except KeyError:
            raise AttributeError(name) from None

    def ingest(self) -> None:
        """New candles first, as ``source`` says (``auto``: the sample into an empty store)."""
        from flows.ingest import ingest_flow
        from tasks.store import CandleStore

        stored = CandleStore(self.settings.store_dir).symbols(self.interval, self.market)
        chosen: Any = self.source if self.source != "auto" else ("store" if stored else "sample")
        if chosen != "store":
            ingest_flow(
                source=chosen, symbols=self.symbols, interval=self.interval, market=self.market,
                home=str(self.settings.home),
            )  # fmt: skip

    def labelled(self, matrix: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
        """The matrix as of ``until`` (labels needing later candles blanked), and its labelled rows."""
        if self.cut is not None:
            matrix = matrix[matrix["open_time"] < self.cut].copy()
            matrix.loc[matrix["open_time"] >= self.cut - self.step, TARGETS] = np.nan
        labelled = matrix[matrix[TARGET].notna()]
        if labelled.empty:
            until = f" before {self.until}" if self.until else ""
            raise BadConfigError(f"no labelled {self.interval} {self.market} rows{until}")
        return matrix, labelled

    def walk_forward(self, labelled: pd.DataFrame) -> tuple[WalkForward, Fold]:
        """The walk-forward folds before the shadow window, and the deployable fold ending the data."""
        end = labelled["open_time"].max() + self.step
        shadow_start = (end - pd.Timedelta(hours=self.shadow_hours)).ceil(self.step)
        plan = WalkForward.before(
            shadow_start, self.test_days, self.folds, self.step, self.valid_days, self.embargo
        )
        return plan, plan.fold(len(plan.splits()), shadow_start, end)

    def model_config(self, threads: int) -> ModelConfig:
        """Every fit's configuration: the profile, seed and device asked for, ``threads`` each."""
        return ModelConfig(
            profile=self.profile, seed=self.seed, device=self.device, trials=self.trials,
            study_dir=self.settings.home / "optuna", n_jobs=threads, progress=False,
            params=self.model_params or {},
        )  # fmt: skip

    def fit_rows(self, labelled: pd.DataFrame) -> pd.DataFrame:
        """The rows the models learn from (labels shuffled in the label-noise drill)."""
        return with_label_noise(labelled, self.label_noise, self.seed) if self.label_noise else labelled

    def run_params(self, universe: list[str], evaluation: Evaluation) -> dict[str, Any]:
        """The MLflow run's parameters: what was asked, the universe, the costs and the policy."""
        skip = ("symbols", "source", "device", "model_params", "home")
        keep = [k for k in self.parameters if k not in skip]
        report = evaluation.report
        return {
            "symbols": universe, **{k: self.parameters[k] for k in keep}, "models": self.names,
            "costs": report["costs"], "policy": report["policy"],
        }  # fmt: skip


def outcome(
    run_id: str, version: str, decision: dict[str, Any], shadow_report: dict[str, Any],
    champion: str | None, metrics: dict[str, Any], matrix: pd.DataFrame, labelled: pd.DataFrame,
    plan: WalkForward, shadow_start: pd.Timestamp, trained_until: str, universe: list[str],
) -> dict[str, Any]:  # fmt: skip
    """The flow's result (``qt train --json``)."""
    from prefect.runtime import flow_run

    return {
        "run_id": run_id,
        "challenger_version": version,
        "promoted": decision["promoted"],
        "reason": decision["reason"],
        "metrics": metrics,
        "gate": decision,
        "shadow": shadow_report,
        "champion": version if decision["promoted"] else champion,
        "previous_champion": champion,
        "data": {
            "symbols": universe,
            "start": str(matrix["open_time"].min()),
            "end": str(labelled["open_time"].max()),
            "walk_forward": [f.describe() for f in plan.splits()],
            "shadow_start": str(shadow_start),
            "trained_until": trained_until,
        },
        "flow_run_id": str(flow_run.id),
    }


# -- the flow ---------------------------------------------------------------------------
@flow(
    name="training",
    task_runner=cpu_runner(load_settings()),  # QT_TASK_RUNNER: local process pool or Dask
    validate_parameters=True,
    log_prints=False,
)
def training_flow(
    symbols: list[str] | None = None,
    interval: str = "1h",
    market: Literal["spot", "futures"] = "spot",
    models: list[str] | None = None,
    profile: Literal["fast", "full"] = "fast",
    trials: int = 0,
    until: str | None = None,
    source: Literal["auto", "store", "sample", "binance"] = "auto",
    folds: int = 3,
    test_days: int = 90,
    valid_days: int = 30,
    embargo: int = 24,
    shadow_hours: int = 168,
    seed: int = 42,
    device: Literal["auto", "cpu", "gpu"] = "auto",
    margin: float = 0.0,
    max_ece: float = 0.02,
    label_noise: float = 0.0,
    model_params: dict[str, dict[str, Any]] | None = None,
    home: str | None = None,
) -> dict[str, Any]:
    """Retrain, register the challenger, shadow it, and let the gate decide.

    Args:
        symbols: universe (default: every stored symbol).
        interval: candle interval.
        market: spot or futures.
        models: base families (default all five).
        profile: fast or full.
        trials: Optuna trials per boosting fit (0: profile defaults).
        until: ignore candles from this time on (a reproducible past retrain).
        source: where new candles come from first: ``auto`` (the bundled sample when the
            store is empty, else the store as it is), ``store``, ``sample``, ``binance``.
        folds: walk-forward test windows (the stacker needs at least 2).
        test_days: days covered by the walk-forward test windows (before the shadow window).
        valid_days: validation window per fold (early stopping).
        embargo: bars left out between validation and test.
        shadow_hours: newest closed candles held out of the challenger's fit for shadow.
        seed: seed for every random choice.
        device: auto, cpu or gpu for the neural families.
        margin: log-loss gain per row over the champion the gate's paired test takes as its null.
        max_ece: floor of the gate's ECE bound.
        label_noise: drill: shuffle this fraction of training labels (the gate must refuse).
        model_params: per-family parameter overrides.
        home: state folder (default from QT_HOME / ./.qt).

    Returns:
        ``{"run_id", "challenger_version", "promoted", "reason", "metrics", "gate",
        "shadow", "champion", "previous_champion", "data", "flow_run_id"}``.
    """
    started_ms = int(time.time() * 1000)  # the MLflow run spans the whole flow
    run = Retrain.of({k: v for k, v in locals().items() if k != "started_ms"})  # fails before any fit
    from prefect.context import FlowRunContext
    from prefect.runtime import flow_run

    settings, names, step = run.settings, run.names, run.step
    runner = FlowRunContext.get().task_runner  # type: ignore[union-attr]
    with retrain_slot():  # one retrain at a time: the daily and a triggered one never overlap
        run.ingest()
        validate_task(settings, symbols, interval, market)
        matrix, labelled = run.labelled(features_task(settings, symbols, interval, market))
        universe = sorted(str(s) for s in matrix["symbol"].unique())
        tags = {
            "prefect.flow_run_id": str(flow_run.id), "prefect.flow_run_name": str(flow_run.name),
            "task_runner": describe(runner),
        }  # fmt: skip
        experiment = experiment_name(interval, market, universe)
        with open_flow_run(settings, experiment, f"retrain {flow_run.name}", started_ms, tags) as run_id:
            # fits: every (family, fold) a concurrent task; the last fold's test is the shadow window
            plan, final = run.walk_forward(labelled)
            config = run.model_config(threads_per_fit(runner))
            fitted = fit_models(names, config, plan, final, run.fit_rows(labelled))

            # stack → evaluate (true labels, even in the label-noise drill)
            began, began_ms = time.perf_counter(), int(time.time() * 1000)
            result = stack_task(plan.splits(), fitted.tests, fitted.fits, names, config, plan)
            fitted.spans["stacker"] = FitSpan.lasting(began_ms, time.perf_counter() - began)
            if label_noise:
                result.oof = true_labels(result.oof, labelled)
            costs = Costs.from_settings(settings, market)
            evaluation = evaluate_task(result.oof, matrix, step, costs)
            metrics = summary_metrics(evaluation, result)
            assert result.stacker is not None
            # the base models saw rows up to their validation window; the stacker, OOF rows up to
            # the shadow window: the ensemble has seen everything before the shadow window
            shadow_start = final.test_start
            scalars = {k: v for k, v in metrics.items() if isinstance(v, int | float)}
            ensemble = assemble_ensemble(
                fitted.final, result.stacker, fitted.final_train, shadow_start - step, interval, costs,
                metrics=scalars, market=market,
            )  # fmt: skip

            # register challenger → shadow → promote
            champion, champion_version, champion_oof = champion_of(settings, interval, market)
            example = matrix[(matrix["symbol"] == universe[0]) & (matrix["open_time"] < shadow_start)]
            run_id, version = register_task(
                settings, ensemble, result, evaluation, matrix, run.run_params(universe, evaluation),
                example.tail(ensemble.history_rows + 1), run_id, fitted.spans,
            )  # fmt: skip
            gate = GateConfig(margin=margin, max_ece=max_ece)
            shadow_report, shadow_table = shadow_task(ensemble, champion, matrix, shadow_start, gate)
            decision = promote_task(
                settings, interval, market, version, run_id, shared_rows(result.oof, champion_oof),
                shadow_report, shadow_table, matrix, step, costs, gate, champion_version, ensemble.policy,
            )  # fmt: skip
            return outcome(
                run_id, version, decision, shadow_report, champion_version, metrics, matrix, labelled,
                plan, shadow_start, ensemble.trained_until, universe,
            )  # fmt: skip
