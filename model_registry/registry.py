"""The ensemble in the MLflow Model Registry: one pyfunc model, aliases, loading by alias.

The registered model ``quantum-trader-<interval>`` holds one version per retrain. Each
version is a pyfunc whose input is feature rows (``symbol``, ``open_time`` as ISO
strings, the features) and whose output is one row per symbol (``p_up``, ``confidence``,
``action``, each model's ``p_<name>``). Loading ``models:/quantum-trader-1h@champion`` in a
fresh process needs nothing but the registry URI (and this package installed);
:func:`load_ensemble` returns the :class:`Ensemble` behind an alias or version.
"""

from __future__ import annotations

import pickle
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from core.errors import BadConfigError
from core.settings import Settings
from model_registry.ensemble import Ensemble
from tasks.tracking import experiment_id, use_store

ALIASES = ("champion", "challenger")


def model_name(interval: str) -> str:
    """The registered model's name for an interval."""
    return f"quantum-trader-{interval}"


def to_pyfunc_input(frame: pd.DataFrame) -> pd.DataFrame:
    """Feature rows as the pyfunc takes them: ``open_time`` as ISO-8601 UTC strings."""
    out = frame.drop(columns=[c for c in frame.columns if c.startswith("target_")]).copy()
    out["open_time"] = pd.to_datetime(out["open_time"], utc=True).dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    return out.reset_index(drop=True)


def _python_model() -> Any:
    import mlflow

    class EnsembleModel(mlflow.pyfunc.PythonModel):  # type: ignore[misc,name-defined]
        """pyfunc wrapper: unpickles the :class:`Ensemble` and calls its ``predict``."""

        def load_context(self, context: Any) -> None:
            with open(context.artifacts["ensemble"], "rb") as fh:
                self.ensemble = pickle.load(fh)

        def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None) -> pd.DataFrame:
            frame = model_input.copy()
            frame["open_time"] = pd.to_datetime(frame["open_time"], utc=True)
            out = self.ensemble.predict(frame)
            out["open_time"] = out["open_time"].dt.strftime("%Y-%m-%dT%H:%M:%SZ")
            return out

    return EnsembleModel()


def register(settings: Settings, ensemble: Ensemble, example: pd.DataFrame, run_id: str | None = None) -> str:
    """Log the ensemble as a pyfunc (in ``run_id``, or a new run) and register a version.

    ``example``: feature rows of one symbol, enough for its newest row (history included).
    Returns the new version number; its tags carry the walk-forward metrics and range.
    """
    import cloudpickle
    import mlflow
    from mlflow.models import infer_signature

    use_store(settings)
    name = model_name(ensemble.interval)
    model_input = to_pyfunc_input(example)
    model_output = ensemble.predict(example.assign(open_time=pd.to_datetime(example["open_time"], utc=True)))
    model_output["open_time"] = model_output["open_time"].dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    signature = infer_signature(model_input, model_output)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ensemble.pkl"
        # cloudpickle: pytorch-forecasting networks keep references to locally defined
        # classes (their output namedtuple), which the standard pickler refuses.
        path.write_bytes(cloudpickle.dumps(ensemble))
        # A run of its own lives in an experiment under the home (never MLflow's Default
        # experiment, whose artifacts would land in ./mlruns of the working directory).
        own = experiment_id(settings, f"{name}-registrations")
        with mlflow.start_run(run_id=run_id) if run_id else mlflow.start_run(experiment_id=own):
            info = mlflow.pyfunc.log_model(
                name="ensemble",
                python_model=_python_model(),
                artifacts={"ensemble": str(path)},
                signature=signature,
                input_example=model_input,
                registered_model_name=name,
            )
    version = str(info.registered_model_version)
    client = mlflow.MlflowClient()
    tags = {f"metric.{k}": str(v) for k, v in ensemble.metrics.items()}
    tags.update(trained_until=ensemble.trained_until, models=",".join(ensemble.models))
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    return version


def set_alias(settings: Settings, interval: str, alias: str, version: str) -> None:
    """Point ``alias`` (champion/challenger) at ``version``."""
    import mlflow

    use_store(settings)
    mlflow.MlflowClient().set_registered_model_alias(model_name(interval), alias, version)


def load_ensemble(settings: Settings, interval: str, ref: str) -> tuple[Ensemble, str]:
    """The :class:`Ensemble` behind an alias (champion/challenger) or a version number.

    Raises:
        BadConfigError: unknown reference, or nothing registered under it.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    use_store(settings)
    name = model_name(interval)
    client = mlflow.MlflowClient()
    try:
        if ref in ALIASES:
            version = str(client.get_model_version_by_alias(name, ref).version)
        elif ref.isdigit():
            version = str(client.get_model_version(name, ref).version)
        else:
            raise BadConfigError(f"--model {ref!r}: use champion, challenger or a version number")
    except MlflowException as exc:
        raise BadConfigError(f"no {name} model {ref!r} in {settings.tracking_uri}; run qt retrain") from exc
    model = mlflow.pyfunc.load_model(f"models:/{name}/{version}")
    ensemble: Ensemble = model.unwrap_python_model().ensemble
    return ensemble, version
