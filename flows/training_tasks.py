"""The training flow's tasks and the helpers around them (:mod:`flows.training` wires them).

Each task is one step of the DAG as the Prefect UI shows it: validate, features (cached
while the candles and the feature code are unchanged), one fit per (family, fold), stack,
evaluate, register-challenger, shadow, promote.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from core.errors import BadConfigError
from core.settings import Settings
from model_registry.ensemble import Ensemble
from model_registry.promotion import GateConfig, decide, shadow
from tasks.backtest import Costs, Policy
from tasks.evaluation import Evaluation, evaluate
from tasks.models import ModelConfig
from tasks.models.base import TARGET
from tasks.store import CandleStore
from tasks.tracking import FitSpan
from tasks.walkforward import Fold, FoldFit, WalkForward, WalkForwardResult, collect, fit_fold

log = logging.getLogger(__name__)
TARGETS = ["target_up", "target_log_return"]
FEATURE_CODE = Path(__file__).resolve().parents[1] / "tasks" / "features"


# -- tasks ------------------------------------------------------------------------------
@task(name="validate", cache_policy=NO_CACHE)
def validate_task(
    settings: Settings, symbols: list[str] | None, interval: str, market: str
) -> dict[str, Any]:
    """The Great Expectations suite over the stored candles (fails naming what failed)."""
    from tasks.quarantine import validate_store

    return validate_store(CandleStore(settings.store_dir), symbols, interval, market)


def _features_key(context: Any, parameters: dict[str, Any]) -> str:
    """Cache key of the feature matrix: the stored files' sizes and times, the feature code.

    Unchanged candles and unchanged feature code give the cached matrix back; any write
    to the store (atomic, so a new mtime) or any edit of ``tasks/features`` recomputes.
    """
    settings: Settings = parameters["settings"]
    interval, market = parameters["interval"], parameters["market"]
    store = CandleStore(settings.store_dir)
    digest = hashlib.sha256(repr((interval, market, parameters["symbols"])).encode())
    for symbol in sorted(store.symbols(interval, market)):
        path = store.path(symbol, interval, market)
        stat = path.stat()
        digest.update(f"{path}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    for source in sorted(FEATURE_CODE.glob("*.py")):
        digest.update(source.read_bytes())
    return f"features-{digest.hexdigest()}"


@task(
    name="features",
    cache_key_fn=_features_key,
    cache_expiration=timedelta(days=30),
    persist_result=True,
)
def features_task(settings: Settings, symbols: list[str] | None, interval: str, market: str) -> pd.DataFrame:
    """The feature matrix of the stored candles (cached while the data and code are unchanged)."""
    from tasks.features.dataset import features_from_store

    return features_from_store(CandleStore(settings.store_dir), symbols, interval, market)


@task(name="fit", task_run_name="fit-{name}-fold-{fold.number}", cache_policy=NO_CACHE)
def fit_task(
    name: str,
    config: ModelConfig,
    fold: Fold,
    train: pd.DataFrame,
    valid: pd.DataFrame,
    test: pd.DataFrame | None = None,
    context: pd.DataFrame | None = None,
) -> FoldFit:
    """One base model fitted on one fold (and its P(up) on the fold's test rows)."""
    return fit_fold(name, config, fold, train, valid, test, context)


@task(name="stack", cache_policy=NO_CACHE)
def stack_task(
    folds: list[Fold],
    tests: list[pd.DataFrame],
    fits: list[FoldFit],
    names: list[str],
    config: ModelConfig,
    plan: WalkForward,
) -> WalkForwardResult:
    """The OOF table and the stacker walked forward over it (fold k learns from folds < k)."""
    return collect(folds, tests, fits, names, config, plan)


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate_task(oof: pd.DataFrame, matrix: pd.DataFrame, step: pd.Timedelta, costs: Costs) -> Evaluation:
    """Out-of-fold classification and net-of-cost backtest, with baselines on the same rows."""
    return evaluate(oof, matrix, step, costs)


def retrain_slot() -> Any:
    """The retrain slot (:data:`flows.live.RETRAIN_LIMIT`, 1): held for the whole training flow.

    ``qt deploy`` creates the limit, so the daily and the triggered retrain of a served home
    queue instead of overlapping; without the limit on the server (ephemeral runs) it is a
    no-op, as :func:`home_lock` is.
    """
    from prefect.concurrency.sync import concurrency

    from flows.live import RETRAIN_LIMIT

    return concurrency(RETRAIN_LIMIT, occupy=1, strict=False)


def home_lock() -> Any:
    """The home's global concurrency slot (shared with the live tick; a no-op without a server limit)."""
    from prefect.concurrency.sync import concurrency

    from flows.live import HOME_LIMIT

    return concurrency(HOME_LIMIT, occupy=1, strict=False)


@task(name="register-challenger", cache_policy=NO_CACHE)
def register_task(
    settings: Settings,
    ensemble: Ensemble,
    result: WalkForwardResult,
    evaluation: Evaluation,
    matrix: pd.DataFrame,
    params: dict[str, Any],
    example: pd.DataFrame,
    run_id: str,
    spans: dict[str, FitSpan],
) -> tuple[str, str]:
    """The flow's MLflow run filled (children per family and the stacker), pyfunc version, ``challenger``.

    The run's inputs: the training rows (everything the ensemble saw) and the
    walk-forward's out-of-fold rows it was evaluated on, each with source and digest.
    """
    from model_registry.registry import register, set_alias
    from tasks.tracking import data_hash, dataset, track_walk_forward

    source = settings.store_dir / ensemble.market / ensemble.interval
    kind = f"{ensemble.interval}-{ensemble.market}"
    seen = matrix[(matrix["open_time"] <= pd.Timestamp(ensemble.trained_until)) & matrix[TARGET].notna()]
    datasets = [
        (dataset(seen, f"candles-{kind}-train", source), "training"),
        (dataset(result.oof, f"oof-{kind}", source), "evaluation"),
    ]
    run_id = track_walk_forward(
        settings,
        result,
        evaluation,
        matrix,
        params,
        ensemble.interval,
        params["market"],
        models=ensemble.models,
        run_id=run_id,
        spans=spans,
        datasets=datasets,
    )
    tags = {
        "data_start": str(matrix["open_time"].min()),
        "data_end": str(matrix["open_time"].max()),
        "data_hash": data_hash(matrix),
        "symbols": ",".join(sorted(str(s) for s in matrix["symbol"].unique())),
        "training_run_id": run_id,
    }
    with home_lock():  # a live tick reads the aliases: not while they change
        version = register(settings, ensemble, example, run_id=run_id, tags=tags)
        set_alias(settings, ensemble.interval, "challenger", version, market=ensemble.market)
    return run_id, version


@task(name="shadow", cache_policy=NO_CACHE)
def shadow_task(
    challenger: Ensemble,
    champion: Ensemble | None,
    matrix: pd.DataFrame,
    start: pd.Timestamp,
    gate: GateConfig,
) -> tuple[dict[str, Any], pd.DataFrame]:
    """Challenger beside champion on the newest closed candles neither was trained on."""
    return shadow(challenger, champion, matrix, start, gate)


@task(name="promote", cache_policy=NO_CACHE)
def promote_task(
    settings: Settings,
    interval: str,
    market: str,
    version: str,
    run_id: str,
    shared: pd.DataFrame,
    shadow_report: dict[str, Any],
    shadow_table: pd.DataFrame,
    matrix: pd.DataFrame,
    step: pd.Timedelta,
    costs: Costs,
    gate: GateConfig,
    champion: str | None,
    policy: Policy,
) -> dict[str, Any]:
    """The gate's decision, acted on (alias moved or rejection recorded) and logged."""
    from model_registry import registry
    from tasks.tracking import log_decision

    decision = decide(
        shared, shadow_report, shadow_table, matrix, step, costs, gate, champion, policy=policy
    ).to_json()
    with home_lock():
        if decision["promoted"]:
            registry.promote(settings, interval, version, "gate", decision["reason"], market=market)
        else:
            registry.record_rejection(settings, interval, version, decision["reason"], market=market)
    log_decision(settings, run_id, version, shadow_report, decision, shadow_table)
    tags = {
        "gate.decision": "promoted" if decision["promoted"] else "rejected",
        "gate.reason": decision["reason"],
    }
    if shadow_report.get("end"):  # qt evaluate starts after the rows the gate judged on
        tags["gate.rows_until"] = str(shadow_report["end"])
    shadow_figures = shadow_report.get("challenger") or {}
    tags.update(
        {
            f"metric.shadow_{k}": shadow_figures[k]
            for k in ("log_loss", "auc", "accuracy")
            if k in shadow_figures
        }
    )
    registry.tag_version(settings, interval, version, tags, market=market)
    return decision


# -- helpers ----------------------------------------------------------------------------
def with_label_noise(matrix: pd.DataFrame, fraction: float, seed: int) -> pd.DataFrame:
    """A copy whose targets are shuffled among ``fraction`` of the labelled rows (a drill).

    The gate must refuse a model trained on it; its evaluation still uses true labels.
    """
    if not 0 <= fraction <= 1:
        raise BadConfigError(f"label_noise {fraction}: use a fraction in [0, 1]")
    out = matrix.copy()
    rng = np.random.default_rng(seed)
    values = {col: out[col].to_numpy(copy=True) for col in TARGETS}
    labelled = out[TARGET].notna().to_numpy()
    for positions in out.groupby("symbol", observed=True).indices.values():  # within each symbol
        rows = np.asarray(positions)[labelled[positions]]
        chosen = rng.choice(rows, size=round(fraction * len(rows)), replace=False)
        shuffled = rng.permutation(chosen)
        for col in TARGETS:  # direction and return move together
            values[col][chosen] = values[col][shuffled]
    return out.assign(**values)


def true_labels(oof: pd.DataFrame, matrix: pd.DataFrame) -> pd.DataFrame:
    """The OOF table with the matrix's (true) targets, row for row."""
    keys = matrix[["symbol", "open_time", *TARGETS]].assign(symbol=matrix["symbol"].astype(str))
    merged = oof.drop(columns=TARGETS).assign(symbol=oof["symbol"].astype(str))
    merged = merged.merge(keys, on=["symbol", "open_time"], how="left", validate="one_to_one")
    return merged[oof.columns]


def champion_of(
    settings: Settings, interval: str, market: str
) -> tuple[Ensemble | None, str | None, pd.DataFrame | None]:
    """The current champion, its version and its walk-forward OOF table (if it has one)."""
    import mlflow

    from model_registry.registry import alias_version, load_ensemble, model_name

    version = alias_version(settings, interval, "champion", market=market)
    if version is None:
        return None, None, None
    ensemble, _ = load_ensemble(settings, interval, version, market=market)
    client = mlflow.MlflowClient()
    run_id = client.get_model_version(model_name(interval, market), version).run_id
    oof = None
    if run_id:
        with tempfile.TemporaryDirectory() as tmp:
            try:
                path = mlflow.artifacts.download_artifacts(
                    run_id=run_id, artifact_path="oof_predictions.parquet", dst_path=tmp
                )
                oof = pd.read_parquet(path)
            except Exception as exc:  # an older version without the table: compare in shadow only
                log.warning("champion v%s has no OOF table (%s): gate compares shadow rows", version, exc)
    return ensemble, version, oof


def summary_metrics(evaluation: Evaluation, result: WalkForwardResult) -> dict[str, Any]:
    """The run's headline figures (``qt train --json``'s ``metrics``)."""
    report = evaluation.report
    out: dict[str, Any] = {f"oof_{k}": v for k, v in report["classification"].items()}
    out.update({f"backtest_{k}": report["backtest"][k] for k in ("sharpe", "total_return", "turnover")})
    for name in ("buy_and_hold", "momentum_fallback"):
        out[f"{name}_sharpe"] = report["baselines"][name]["sharpe"]
    out["per_model"] = {
        n: {"auc": v["auc"], "log_loss": v["log_loss"]} for n, v in report["per_model"].items()
    }
    out["stacker_weights"] = result.stacker.weights if result.stacker else {}
    out["stacker_zero_weight"] = result.stacker.zero_weight if result.stacker else []
    return out


@dataclass
class Fitted:
    """Every (family, fold) fit of one retrain: the walk-forward's and the deployable ones."""

    fits: list[FoldFit]  # walk-forward folds: their P(up) on each fold's test rows
    tests: list[pd.DataFrame]  # each fold's test keys, in fold order
    final: dict[str, Any]  # family → the model fitted for deployment (test window: shadow)
    final_train: pd.DataFrame  # the rows the deployable models were fitted on
    spans: dict[str, FitSpan]  # family → when its fits ran


def fit_models(
    names: list[str], config: ModelConfig, plan: WalkForward, final: Fold, matrix: pd.DataFrame
) -> Fitted:
    """Every (family, fold) fit submitted at once to the flow's task runner, progress reported."""
    from prefect.futures import as_completed

    from core import progress
    from tasks.walkforward import fold_context, oof_keys

    tests, futures = [], []
    for fold in plan.splits():
        train, valid, test = plan.split(matrix, fold)
        tests.append(oof_keys(fold, train, test))
        context = fold_context(matrix, fold)
        futures += [fit_task.submit(n, config, fold, train, valid, test, context) for n in names]
    final_train, final_valid, _ = plan.split(matrix, final)
    final_futures = [fit_task.submit(n, config, final, final_train, final_valid) for n in names]
    total = len(futures) + len(final_futures)
    for done, _ in enumerate(as_completed([*futures, *final_futures]), start=1):
        progress.report("train", done, total)
    fits = [f.result() for f in futures]
    final_fits = [f.result() for f in final_futures]
    spans = {n: FitSpan.of([f.report for f in [*fits, *final_fits] if f.name == n]) for n in names}
    return Fitted(fits, tests, {f.name: f.model for f in final_fits}, final_train, spans)
