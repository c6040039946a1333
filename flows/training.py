"""The training flow, one Prefect flow as the design card reads.

ingest → validate → features → train → stack → evaluate → register challenger → shadow
→ promote. One Prefect flow, as the design card reads. The base models are fitted as concurrent
tasks, one per (family, fold), in a process pool (each process seeds itself, so results
do not depend on scheduling). The folds are a purged, embargoed walk-forward over the
``test_days`` before the shadow window; one more fold, whose test window is the shadow
window (the newest ``shadow_hours`` of closed candles), fits the deployable base models,
so the shadow rows are the challenger's first unseen rows. The stacker learns from the
walk-forward's out-of-fold predictions only.

The end is a decision: the challenger is registered, compared with the champion on the
same out-of-sample rows and in shadow, and promoted only through the gate
(:mod:`model_registry.promotion`). Everything lands in one MLflow parent run with a child
run per family and for the stacker.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import pandas as pd
from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed
from prefect.task_runners import ProcessPoolTaskRunner

from core import progress
from core.candles import check_market, interval_ms
from core.errors import BadConfigError
from core.settings import Settings, load_settings
from core.timeutil import parse_utc
from model_registry.ensemble import Ensemble, assemble_ensemble
from model_registry.promotion import GateConfig, decide, shadow, shared_rows
from tasks.backtest import Costs, Policy
from tasks.evaluation import Evaluation, evaluate
from tasks.models import ModelConfig, parse_models
from tasks.models.base import TARGET
from tasks.store import CandleStore
from tasks.tracking import FitSpan, experiment_name, open_flow_run
from tasks.walkforward import (
    Fold,
    FoldFit,
    WalkForward,
    WalkForwardResult,
    collect,
    fit_fold,
    fold_context,
    oof_keys,
)

log = logging.getLogger(__name__)
TARGETS = ["target_up", "target_log_return"]
FEATURE_CODE = Path(__file__).resolve().parents[1] / "tasks" / "features"


def workers() -> int:
    """Processes for the fit tasks: one per core, at most 4."""
    return max(1, min(os.cpu_count() or 1, 4))


def _threads_per_fit() -> int:
    """Threads each fit may use: the cores shared among this flow run's worker processes."""
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    runner = context.task_runner if context else None
    processes = getattr(runner, "_max_workers", None) or workers()  # ProcessPoolTaskRunner's size
    return max(1, (os.cpu_count() or 1) // processes)


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
@contextmanager
def _workers_report_here() -> Iterator[None]:
    """Let the fit processes report to this flow's Prefect API.

    In ephemeral mode no ``PREFECT_API_URL`` is set, and each worker process would start
    a temporary server of its own (seconds and ~200 MB each); the process pool hands
    ``os.environ`` to its workers, so the flow's API URL goes there while they run.
    """
    from prefect import get_client

    if os.environ.get("PREFECT_API_URL"):
        yield
        return
    with get_client(sync_client=True) as client:
        os.environ["PREFECT_API_URL"] = str(client.api_url).rstrip("/")
    try:
        yield
    finally:
        os.environ.pop("PREFECT_API_URL", None)


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


def _true_labels(oof: pd.DataFrame, matrix: pd.DataFrame) -> pd.DataFrame:
    """The OOF table with the matrix's (true) targets, row for row."""
    keys = matrix[["symbol", "open_time", *TARGETS]].assign(symbol=matrix["symbol"].astype(str))
    merged = oof.drop(columns=TARGETS).assign(symbol=oof["symbol"].astype(str))
    merged = merged.merge(keys, on=["symbol", "open_time"], how="left", validate="one_to_one")
    return merged[oof.columns]


def _champion(
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


def _summary_metrics(evaluation: Evaluation, result: WalkForwardResult) -> dict[str, Any]:
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


# -- the flow ---------------------------------------------------------------------------
@flow(
    name="training",
    task_runner=cast(Any, ProcessPoolTaskRunner(max_workers=workers())),
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
    from prefect.runtime import flow_run

    from flows.ingest import ingest_flow

    started_ms = int(time.time() * 1000)  # the MLflow run spans the whole flow
    settings = load_settings(Path(home) if home else None)
    check_market(market)
    step = pd.Timedelta(milliseconds=interval_ms(interval))
    cut = parse_utc(until, "--until")  # bad input fails before any download or fit
    names = parse_models(",".join(models) if models else None)
    if folds < 2:
        raise BadConfigError("--folds must be at least 2: the stacker learns from earlier folds' OOF rows")
    with retrain_slot():  # one retrain at a time: the daily and a triggered one never overlap
        store = CandleStore(settings.store_dir)
        chosen = source if source != "auto" else ("store" if store.symbols(interval, market) else "sample")
        if chosen != "store":
            ingest_flow(
                source=chosen, symbols=symbols, interval=interval, market=market, home=str(settings.home)
            )
        validate_task(settings, symbols, interval, market)
        matrix = features_task(settings, symbols, interval, market)
        if cut is not None:  # candles from `until` on do not exist for this run, nor labels needing them
            matrix = matrix[matrix["open_time"] < cut].copy()
            matrix.loc[matrix["open_time"] >= cut - step, TARGETS] = np.nan
        labelled = matrix[matrix[TARGET].notna()]
        if labelled.empty:
            raise BadConfigError(
                f"no labelled {interval} {market} rows" + (f" before {until}" if until else "")
            )

        universe = sorted(str(s) for s in matrix["symbol"].unique())
        run_tags = {"prefect.flow_run_id": str(flow_run.id), "prefect.flow_run_name": str(flow_run.name)}
        experiment = experiment_name(interval, market, universe)
        with open_flow_run(settings, experiment, f"retrain {flow_run.name}", started_ms, run_tags) as run_id:
            end = labelled["open_time"].max() + step
            shadow_start = (end - pd.Timedelta(hours=shadow_hours)).ceil(step)
            plan = WalkForward.before(shadow_start, test_days, folds, step, valid_days, embargo)
            config = ModelConfig(
                profile=profile,
                seed=seed,
                device=device,
                trials=trials,
                study_dir=settings.home / "optuna",
                n_jobs=_threads_per_fit(),
                progress=False,
                params=model_params or {},
            )
            fit_matrix = with_label_noise(labelled, label_noise, seed) if label_noise else labelled

            # train: every (family, fold) a concurrent task; the last fold's test is the shadow window
            wf_folds = plan.splits()
            final = plan.fold(len(wf_folds), shadow_start, end)
            tests, futures = [], []
            final_train, final_valid, _ = plan.split(fit_matrix, final)
            with _workers_report_here():
                for fold in wf_folds:
                    train, valid, test = plan.split(fit_matrix, fold)
                    tests.append(oof_keys(fold, train, test))
                    context = fold_context(fit_matrix, fold)
                    futures += [fit_task.submit(n, config, fold, train, valid, test, context) for n in names]
                final_futures = [fit_task.submit(n, config, final, final_train, final_valid) for n in names]
                total = len(futures) + len(final_futures)
                for done, _ in enumerate(as_completed([*futures, *final_futures]), start=1):
                    progress.report("train", done, total)
            fits = [f.result() for f in futures]
            final_fits = [f.result() for f in final_futures]
            final_models = {fit.name: fit.model for fit in final_fits}
            spans = {n: FitSpan.of([f.report for f in [*fits, *final_fits] if f.name == n]) for n in names}

            # stack → evaluate (true labels, even in the label-noise drill)
            began, began_ms = time.perf_counter(), int(time.time() * 1000)
            result = stack_task(wf_folds, tests, fits, names, config, plan)
            spans["stacker"] = FitSpan.lasting(began_ms, time.perf_counter() - began)
            if label_noise:
                result.oof = _true_labels(result.oof, labelled)
            costs = Costs.from_settings(settings, market)
            evaluation = evaluate_task(result.oof, matrix, step, costs)
            metrics = _summary_metrics(evaluation, result)
            assert result.stacker is not None
            # the base models saw rows up to their validation window; the stacker, OOF rows up to
            # the shadow window: the ensemble has seen everything before shadow_start
            ensemble = assemble_ensemble(
                final_models,
                result.stacker,
                final_train,
                shadow_start - step,
                interval,
                costs,
                metrics={k: v for k, v in metrics.items() if isinstance(v, int | float)},
                market=market,
            )

            # register challenger → shadow → promote
            params = {
                "symbols": universe, "interval": interval, "market": market,
                "models": names, "profile": profile, "trials": trials, "until": until, "folds": folds,
                "test_days": test_days, "valid_days": valid_days, "embargo": embargo,
                "shadow_hours": shadow_hours, "seed": seed, "margin": margin, "max_ece": max_ece,
                "label_noise": label_noise,
                "costs": evaluation.report["costs"], "policy": evaluation.report["policy"],
            }  # fmt: skip
            first_symbol = str(sorted(matrix["symbol"].astype(str).unique())[0])
            example = matrix[(matrix["symbol"] == first_symbol) & (matrix["open_time"] < shadow_start)]
            champion, champion_version, champion_oof = _champion(settings, interval, market)
            run_id, version = register_task(
                settings, ensemble, result, evaluation, matrix, params,
                example.tail(ensemble.history_rows + 1), run_id, spans,
            )  # fmt: skip
            gate = GateConfig(margin=margin, max_ece=max_ece)
            shadow_report, shadow_table = shadow_task(ensemble, champion, matrix, shadow_start, gate)
            shared = shared_rows(result.oof, champion_oof)
            decision = promote_task(
                settings, interval, market, version, run_id, shared, shadow_report, shadow_table, matrix,
                step, costs, gate, champion_version, ensemble.policy,
            )  # fmt: skip
            return {
                "run_id": run_id,
                "challenger_version": version,
                "promoted": decision["promoted"],
                "reason": decision["reason"],
                "metrics": metrics,
                "gate": decision,
                "shadow": shadow_report,
                "champion": version if decision["promoted"] else champion_version,
                "previous_champion": champion_version,
                "data": {
                    "symbols": params["symbols"],
                    "start": str(matrix["open_time"].min()),
                    "end": str(labelled["open_time"].max()),
                    "walk_forward": [f.describe() for f in wf_folds],
                    "shadow_start": str(shadow_start),
                    "trained_until": ensemble.trained_until,
                },
                "flow_run_id": str(flow_run.id),
            }
