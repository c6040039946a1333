"""MLflow tracking of a walk-forward: a parent run, a child run per model family.

One experiment per (interval, market, universe). The parent run holds the product's
figures (the stacker's OOF classification and backtest, the baselines), the data range
and a content hash of the data, the feature list, the git commit and package versions,
and the artifacts people look at in the MLflow UI: reliability diagram, equity curves
against baselines, stacker weights, the OOF table and the evaluation report. Each
family's child run holds its per-fold metrics, its fit reports and (boosting) its
feature importances.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd

from core.settings import Settings
from tasks.evaluation import Evaluation, reliability
from tasks.features import feature_columns
from tasks.models.base import ProbaModel
from tasks.models.stacker import PREFIX
from tasks.walkforward import WalkForwardResult

PACKAGES = (
    "mlflow", "prefect", "xgboost-cpu", "lightgbm", "torch", "pytorch-forecasting", "optuna", "pandas",
)  # fmt: skip


def experiment_name(interval: str, market: str, symbols: list[str]) -> str:
    """``quantum-trader-<interval>-<market>-<universe>``, universe = count + short hash."""
    universe = hashlib.sha256(",".join(sorted(symbols)).encode()).hexdigest()[:6]
    return f"quantum-trader-{interval}-{market}-{len(symbols)}sym-{universe}"


def data_hash(matrix: pd.DataFrame) -> str:
    """Content hash of the training data (rows, features and targets)."""
    ordered = matrix.sort_values(["symbol", "open_time"]).reset_index(drop=True)
    return hashlib.sha256(pd.util.hash_pandas_object(ordered, index=False).to_numpy().tobytes()).hexdigest()


def git_commit() -> str:
    """The checked-out commit of the project (``unknown`` outside a git checkout)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parents[1],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def versions() -> dict[str, str]:
    """Installed versions of the packages that shape results."""
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


def use_store(settings: Settings) -> None:
    """Point MLflow at the home's store (or the configured server)."""
    import logging

    import mlflow

    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
    # The pyfunc is cloudpickled on purpose (see model_registry.registry); its advice to
    # log models from code instead would be repeated on every registration.
    logging.getLogger("mlflow.pyfunc").setLevel(logging.ERROR)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    if settings.mlflow_tracking_uri is None:
        _check_sqlite(settings.mlflow_dir / "mlflow.db")
        if not settings.mlflow_dir.exists():
            settings.mlflow_dir.mkdir(parents=True)
    mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.set_registry_uri(settings.tracking_uri)


def _check_sqlite(path: Path) -> None:
    """Open the home's MLflow database read-only first, so damage is named, not a traceback.

    Raises:
        BadDataError: the file exists and SQLite cannot read it.
    """
    import sqlite3
    from contextlib import closing

    from core.errors import BadDataError

    if not path.exists():
        return
    try:
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            db.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.DatabaseError as err:
        raise BadDataError(
            f"{path}: the MLflow store (runs and the model registry) is not a readable SQLite "
            f"database ({err}); restore it from a backup, or move it aside to start an empty one"
        ) from err


def experiment_id(settings: Settings, name: str) -> str:
    """The experiment's id, creating it (artifacts under home) on first use."""
    import mlflow

    found = mlflow.get_experiment_by_name(name)
    if found is not None:
        return str(found.experiment_id)
    return str(mlflow.create_experiment(name, artifact_location=f"{settings.artifact_root}/{name}"))


def track_walk_forward(
    settings: Settings,
    result: WalkForwardResult,
    evaluation: Evaluation,
    matrix: pd.DataFrame,
    params: dict[str, Any],
    interval: str,
    market: str,
    run_name: str | None = None,
    models: dict[str, ProbaModel] | None = None,
    tags: dict[str, str] | None = None,
    run_id: str | None = None,
    spans: dict[str, FitSpan] | None = None,
    datasets: list[tuple[Any, str]] | None = None,
) -> str:
    """Log a walk-forward and its evaluation to MLflow; returns the parent run id.

    ``models``: the deployable base models, each logged (pickled) in its family's child
    run; ``tags``: extra parent-run tags (the training flow's run id, ...); ``run_id``: a
    parent run opened earlier (:func:`open_run`, left open for the caller to end);
    ``spans``: each family's measured fit span (its child run's start/end and
    ``fit_seconds``); ``datasets``: (``mlflow.data`` dataset, context) pairs logged as the
    parent's and every child's inputs.
    """
    import mlflow

    from tasks import plots

    use_store(settings)
    symbols = sorted(str(s) for s in matrix["symbol"].unique())
    exp = experiment_id(settings, experiment_name(interval, market, symbols))
    report = evaluation.report
    name = run_name or f"walk-forward {report['end'][:10]}"
    opened = mlflow.start_run(run_id=run_id) if run_id else mlflow.start_run(experiment_id=exp, run_name=name)
    with opened as parent:
        _log_datasets(datasets)
        mlflow.log_params({k: _param(v) for k, v in params.items()})
        mlflow.set_tags(
            {
                **(tags or {}),
                "git_commit": git_commit(),
                "data_hash": data_hash(matrix),
                "data_start": str(matrix["open_time"].min()),
                "data_end": str(matrix["open_time"].max()),
                "test_start": report["start"],
                "test_end": report["end"],
                "symbols": ",".join(symbols),
                **{f"version.{k}": v for k, v in versions().items()},
            }
        )
        mlflow.log_metrics(_flat("oof", report["classification"]))
        mlflow.log_metrics(_flat("backtest", report["backtest"]))
        for name, figures in report["baselines"].items():
            mlflow.log_metrics(_flat(name, figures))
        for name, figures in report["single_models"].items():
            mlflow.log_metrics(_flat(f"{name}_backtest", figures))
        if result.stacker is not None:
            mlflow.log_metrics({f"stacker_weight_{k}": v for k, v in result.stacker.weights.items()})
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            rows = evaluation.rows
            names = [c.removeprefix(PREFIX) for c in rows.columns if c.startswith(PREFIX)]
            y = rows["target_up"].to_numpy()
            curves = {n: reliability(y, rows[f"{PREFIX}{n}"].to_numpy()) for n in names}
            plots.reliability_diagram(curves, folder / "reliability.png")
            plots.equity_curves(evaluation.backtests, folder / "equity_vs_baselines.png", report["model"])
            if result.stacker is not None:
                plots.bar_chart(result.stacker.weights, folder / "stacker_weights.png", "Stacker weights")
                (folder / "stacker_weights.json").write_text(json.dumps(result.stacker.weights, indent=2))
            (folder / "features.json").write_text(json.dumps(feature_columns(matrix), indent=2))
            (folder / "evaluation.json").write_text(json.dumps(report, indent=2, default=str))
            result.oof.to_parquet(folder / "oof_predictions.parquet")
            mlflow.log_artifacts(str(folder))
        per_model = result.summary()["models"]
        parent_id = str(parent.info.run_id)
        exp = str(parent.info.experiment_id)
        for family, fold_reports in result.reports.items():
            model = (models or {}).get(family)
            with _child_run(exp, parent_id, family, (spans or {}).get(family), datasets):
                _child(family, fold_reports, per_model.get(family, {}), report, model)
        if result.stacker is not None:
            with _child_run(exp, parent_id, "stacker", (spans or {}).get("stacker"), datasets):
                _stacker_child(result, per_model.get("stacker", {}))
    if run_id:  # the caller's run stays open until the flow ends
        mlflow.MlflowClient().update_run(parent_id, status="RUNNING")
    return parent_id


@dataclass(frozen=True)
class FitSpan:
    """When a family's fits ran (epoch ms, first start to last end) and their summed seconds."""

    start_ms: int
    end_ms: int
    seconds: float

    @classmethod
    def lasting(cls, start_ms: int, seconds: float) -> FitSpan:
        """The span that started at ``start_ms`` and took ``seconds``."""
        return cls(start_ms, start_ms + int(seconds * 1000), seconds)

    @classmethod
    def of(cls, reports: list[dict[str, Any]]) -> FitSpan:
        """The span of fit reports carrying ``started_ms``/``ended_ms``/``seconds``."""
        return cls(
            min(int(r["started_ms"]) for r in reports),
            max(int(r["ended_ms"]) for r in reports),
            float(sum(r["seconds"] for r in reports)),
        )


def open_run(settings: Settings, experiment: str, run_name: str, start_ms: int, tags: dict[str, str]) -> str:
    """A RUNNING parent run that started at ``start_ms`` (the flow's start); the flow ends it."""
    import mlflow

    use_store(settings)
    run = mlflow.MlflowClient().create_run(
        experiment_id(settings, experiment), start_time=start_ms, tags=tags, run_name=run_name
    )
    return str(run.info.run_id)


@contextmanager
def open_flow_run(
    settings: Settings, experiment: str, run_name: str, start_ms: int, tags: dict[str, str]
) -> Iterator[str]:
    """A parent run open for the rest of a flow: FINISHED when it ends, FAILED when it raises."""
    run_id = open_run(settings, experiment, run_name, start_ms, tags)
    try:
        yield run_id
    except BaseException:
        close_run(settings, run_id, failed=True)
        raise
    close_run(settings, run_id)


def close_run(settings: Settings, run_id: str, failed: bool = False) -> None:
    """End a run opened by :func:`open_run` now: FINISHED, or FAILED when the flow failed."""
    import mlflow

    use_store(settings)
    mlflow.MlflowClient().set_terminated(run_id, "FAILED" if failed else "FINISHED")


def dataset(frame: pd.DataFrame, name: str, source: Path) -> Any:
    """An ``mlflow.data`` dataset of feature-matrix rows: its name, the store folder, a digest.

    The digest is :func:`data_hash` of the rows (cut to MLflow's 36 characters); the rows'
    first and last open time go on the run's input as tags (:func:`_log_datasets`), so runs
    can be compared by the data they saw in the MLflow UI's Dataset column.
    """
    import warnings

    from mlflow.data.dataset_source_registry import get_registered_sources
    from mlflow.data.pandas_dataset import from_pandas

    # a local path matches MLflow's "" and "file" sources alike (it warns): name the local one
    local = next(s for s in get_registered_sources() if s._get_source_type() == "local")
    with warnings.catch_warnings():  # MLflow's hint about integer columns in model signatures
        warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer")
        where = local(str(source))  # type: ignore[operator]
        data = from_pandas(frame, source=where, name=name, digest=data_hash(frame)[:32])
        data.schema  # inferred lazily: here, inside the filter  # noqa: B018
    return data


@contextmanager
def _child_run(
    experiment: str, parent: str, family: str, span: FitSpan | None, datasets: list[tuple[Any, str]] | None
) -> Iterator[None]:
    """A child run for ``family`` spanning its measured fit time (now, when unmeasured)."""
    import mlflow

    client = mlflow.MlflowClient()
    start = span.start_ms if span else None
    child = client.create_run(
        experiment, start_time=start, tags={"mlflow.parentRunId": parent, "family": family}, run_name=family
    )
    child_id = str(child.info.run_id)
    with mlflow.start_run(run_id=child_id, nested=True):
        _log_datasets(datasets)
        if span is not None:
            mlflow.log_metric("fit_seconds", span.seconds)
        yield
    if span is not None:
        client.set_terminated(child_id, "FINISHED", end_time=span.end_ms)


def _log_datasets(datasets: list[tuple[Any, str]] | None) -> None:
    import mlflow

    for data, context in datasets or []:
        times = data.df["open_time"]
        span = {
            "first_open_time": str(times.min()),
            "last_open_time": str(times.max()),
            "rows": str(len(times)),
        }
        mlflow.log_input(data, context=context, tags=span)


def _stacker_child(result: WalkForwardResult, figures: dict[str, Any]) -> None:
    """The stacker's child run: its weights (final and per fold) and OOF figures."""
    import mlflow

    assert result.stacker is not None
    inputs = [w for w in result.stacker.weights if w != "intercept"]
    report = result.stacker.report
    mlflow.log_params(
        {
            "inputs": _param(inputs),
            "shrinkage": _param(report.get("shrinkage")),
            "intercept": _param(report.get("intercept")),
            "anchor": _param(report.get("anchor")),
            "zero_weight": _param(result.stacker.zero_weight),
        }
    )
    mlflow.log_metrics({f"weight_{k}": float(v) for k, v in result.stacker.weights.items()})
    mlflow.log_metrics({f"oof_{k}": float(v) for k, v in figures.items() if k != "per_fold"})
    for fold, weights in result.stacker_by_fold.items():
        mlflow.log_metrics({f"fold_weight_{k}": float(v) for k, v in weights.items()}, step=fold)
    mlflow.log_dict(
        {
            "final": result.stacker.weights,
            "by_fold": result.stacker_by_fold,
            "zero_weight": result.stacker.zero_weight,
        },
        "stacker_weights.json",
    )


def log_decision(
    settings: Settings,
    run_id: str,
    version: str,
    shadow: dict[str, Any],
    decision: dict[str, Any],
    shadow_rows: pd.DataFrame | None = None,
) -> None:
    """Log the shadow comparison (and its rows: both models' P(up) side by side) and the decision."""
    import mlflow

    use_store(settings)
    client = mlflow.MlflowClient()
    if shadow_rows is not None and not shadow_rows.empty:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "shadow_predictions.parquet"
            shadow_rows.to_parquet(path)
            client.log_artifact(run_id, str(path))
    for side in ("challenger", "champion"):
        for key, value in _flat(f"shadow_{side}", shadow.get(side) or {}).items():
            client.log_metric(run_id, key, value)
    for key in ("rows", "ks_statistic", "ks_pvalue", "log_loss_diff", "worse_pvalue"):
        figure = shadow.get(key)
        if isinstance(figure, int | float) and pd.notna(figure):
            client.log_metric(run_id, f"shadow_{key}", float(figure))
    client.log_metric(run_id, "promoted", float(decision["promoted"]))
    client.set_tag(run_id, "promotion.decision", "promoted" if decision["promoted"] else "rejected")
    client.set_tag(run_id, "promotion.reason", decision["reason"][:5000])
    client.set_tag(run_id, "registered_version", version)
    client.log_dict(run_id, {"shadow": shadow, "gate": decision}, "promotion.json")


def _child(
    name: str,
    fold_reports: list[dict[str, Any]],
    figures: dict[str, Any],
    report: dict[str, Any],
    model: ProbaModel | None = None,
) -> None:
    import mlflow

    from tasks import plots

    first = fold_reports[0] if fold_reports else {}
    flat_params = {k: v for k, v in first.get("params", {}).items()}
    for key in ("mapping", "features"):
        if key in first:
            flat_params[key] = first[key]
    if flat_params:
        mlflow.log_params({k: _param(v) for k, v in flat_params.items()})
    mlflow.log_metrics({f"oof_{k}": float(v) for k, v in figures.items() if k != "per_fold"})
    for fold in figures.get("per_fold", []):
        step = int(fold["fold"])
        mlflow.log_metrics({f"fold_{k}": float(v) for k, v in fold.items() if k != "fold"}, step=step)
    for r in fold_reports:
        numeric = {
            k: float(v)
            for k, v in r.items()
            if isinstance(v, int | float) and k not in ("fold", "started_ms", "ended_ms")
        }
        mlflow.log_metrics({f"fit_{k}": v for k, v in numeric.items()}, step=int(r["fold"]))
    if name in report["single_models"]:
        mlflow.log_metrics(_flat("backtest", report["single_models"][name]))
    importance = fold_reports[-1].get("importance") if fold_reports else None
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "fit_reports.json").write_text(json.dumps(fold_reports, indent=2, default=str))
        if importance:
            kind = "variable-selection weight" if name == "tft" else "gain importance"
            title = f"{name}: {kind} (last fold)"
            plots.bar_chart(importance, folder / "feature_importance.png", title)
        if model is not None:
            import cloudpickle

            # the deployable base model (the ensemble's copy is in the registered pyfunc)
            (folder / f"{name}.pkl").write_bytes(cloudpickle.dumps(model))
        mlflow.log_artifacts(str(folder))


def _flat(prefix: str, figures: dict[str, Any]) -> dict[str, float]:
    """Finite numeric figures as ``prefix_name`` metrics (MLflow rejects NaN/inf in the UI's charts)."""
    out = {}
    for k, v in figures.items():
        if isinstance(v, int | float) and pd.notna(v) and abs(float(v)) != float("inf"):
            out[f"{prefix}_{k}"] = float(v)
    return out


def _param(value: Any) -> str:
    """A parameter value as MLflow stores it (at most 500 characters)."""
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text[:500]
