"""The ensemble in the MLflow Model Registry: one pyfunc model, aliases, loading by alias.

The registered model ``quantum-trader-<interval>`` holds one version per retrain. Each
version is a pyfunc whose input is feature rows (``symbol``, ``open_time`` as ISO
strings, the features) and whose output is one row per symbol (``p_up``, ``confidence``,
``action``, each model's ``p_<name>``). Loading ``models:/quantum-trader-1h@champion`` in a
fresh process needs nothing but the registry URI (and this package installed);
:func:`load_ensemble` returns the :class:`Ensemble` behind an alias or version.

Every move of the ``champion`` alias (the gate's promotions, a person's ``qt registry
promote``, rollbacks) and every gate rejection is recorded as a tag ``history.<time>-<id>`` (JSON) of
the registered model, so the history travels with the registry (and shows in the MLflow
UI's model page). :func:`rollback` replays it to find the champion before the current one.
"""

from __future__ import annotations

import json
import pickle
import tempfile
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from core.errors import BadConfigError
from core.settings import Settings
from model_registry.cache import load_version
from model_registry.ensemble import Ensemble
from tasks.tracking import experiment_id, use_store

ALIASES = ("champion", "challenger")


def model_name(interval: str, market: str = "spot") -> str:
    """The registered model's name: ``quantum-trader-<interval>`` (spot), ``…-<interval>-futures``.

    Raises:
        BadConfigError: an unknown interval or market (never a name nobody can train).
    """
    from core.candles import check_market, interval_ms

    interval_ms(interval)
    check_market(market)
    return f"quantum-trader-{interval}" + ("" if market == "spot" else f"-{market}")


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


#: What loading the ensemble's pyfunc imports. Stated (pinned as installed), so MLflow does
#: not infer them by loading the model in a subprocess: that took ≈ 14 s of every
#: registration on 2 cores (bench/scale.py's register-challenger step).
MODEL_PACKAGES = (
    "mlflow", "cloudpickle", "numpy", "pandas", "scipy", "scikit-learn", "xgboost-cpu", "lightgbm",
    "torch", "lightning", "pytorch-forecasting",
)  # fmt: skip


def model_requirements() -> list[str]:
    """``name==version`` of each installed :data:`MODEL_PACKAGES` (torch without its local tag)."""
    from importlib import metadata

    out = []
    for package in MODEL_PACKAGES:
        try:
            out.append(f"{package}=={metadata.version(package).split('+')[0]}")
        except metadata.PackageNotFoundError:
            continue
    return out


def register(
    settings: Settings,
    ensemble: Ensemble,
    example: pd.DataFrame,
    run_id: str | None = None,
    tags: dict[str, str] | None = None,
) -> str:
    """Log the ensemble as a pyfunc (in ``run_id``, or a new run) and register a version.

    ``example``: feature rows of one symbol, enough for its newest row (history included).
    Returns the new version number; its tags carry the walk-forward metrics and range,
    and ``tags`` (data range and hash, ...).
    """
    import cloudpickle
    import mlflow
    from mlflow.models import infer_signature

    use_store(settings)
    name = model_name(ensemble.interval, ensemble.market)
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
                pip_requirements=model_requirements(),
            )
    version = str(info.registered_model_version)
    version_tags = {f"metric.{k}": str(v) for k, v in ensemble.metrics.items()}
    version_tags.update(trained_until=ensemble.trained_until, models=",".join(ensemble.models))
    tag_version(
        settings, ensemble.interval, version, {**version_tags, **(tags or {})}, market=ensemble.market
    )
    return version


def tag_version(
    settings: Settings, interval: str, version: str, tags: dict[str, str], *, market: str = "spot"
) -> None:
    """Set tags on a version (MLflow caps a tag value at 5,000 characters)."""
    client = _client(settings)
    for key, value in tags.items():
        client.set_model_version_tag(model_name(interval, market), version, key, str(value)[:5000])


def set_alias(settings: Settings, interval: str, alias: str, version: str, *, market: str = "spot") -> None:
    """Point ``alias`` (champion/challenger) at ``version``."""
    import mlflow

    use_store(settings)
    mlflow.MlflowClient().set_registered_model_alias(model_name(interval, market), alias, version)


def load_ensemble(
    settings: Settings, interval: str, ref: str, *, market: str = "spot"
) -> tuple[Ensemble, str]:
    """The :class:`Ensemble` behind an alias (champion/challenger) or a version number.

    Raises:
        BadConfigError: unknown reference, or nothing registered under it.
        BrokenModelError: the version is registered but its artifacts cannot be loaded
            (naming the version and where they should be).
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    from core.errors import BrokenModelError

    use_store(settings)
    name = model_name(interval, market)
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
    try:
        model = load_version(settings, name, version)  # the local per-version copy
        ensemble: Ensemble = model.unwrap_python_model().ensemble
    except Exception as exc:  # missing or damaged artifacts: name them, never a half-loaded model
        raise BrokenModelError(
            f"{name} v{version}: cannot load its artifacts from {_artifact_location(client, name, version)} "
            f"({type(exc).__name__}: {exc}); promote or retrain another version"
        ) from exc
    return ensemble, version


def _artifact_location(client: Any, name: str, version: str) -> str:
    """Where a version's files live (what MLflow downloads them from)."""
    return str(client.get_model_version_download_uri(name, version))


# -- aliases and their history ----------------------------------------------------------
HISTORY_PREFIX = "history."


def _client(settings: Settings) -> Any:
    import mlflow

    use_store(settings)
    return mlflow.MlflowClient()


def alias_version(settings: Settings, interval: str, alias: str, *, market: str = "spot") -> str | None:
    """The version ``alias`` points at, or None (also when nothing is registered yet)."""
    from mlflow.exceptions import MlflowException

    try:
        return str(_client(settings).get_model_version_by_alias(model_name(interval, market), alias).version)
    except MlflowException:
        return None


def _registered(settings: Settings, interval: str, market: str) -> Any:
    """The registered model (aliases, tags), or None before the first registration."""
    from mlflow.exceptions import MlflowException

    try:
        return _client(settings).get_registered_model(model_name(interval, market))
    except MlflowException:
        return None


def _events(model: Any) -> list[dict[str, Any]]:
    if model is None:
        return []
    keyed = sorted((k, json.loads(v)) for k, v in model.tags.items() if k.startswith(HISTORY_PREFIX))
    return [event for _, event in keyed]  # keys sort by time


def _aliases_of(model: Any) -> dict[str, list[str]]:
    """Version → its aliases (``search_model_versions`` leaves them out of its results)."""
    out: dict[str, list[str]] = {}
    for alias, version in (model.aliases if model is not None else {}).items():
        out.setdefault(str(version), []).append(alias)
    return out


def history(settings: Settings, interval: str, *, market: str = "spot") -> list[dict[str, Any]]:
    """Promotions, rejections and rollbacks, oldest first."""
    return _events(_registered(settings, interval, market))


def _record(
    settings: Settings, interval: str, event: dict[str, Any], *, market: str = "spot"
) -> dict[str, Any]:
    """Append an event; its key carries a time and a random suffix, so two writers never collide."""
    now = datetime.now(UTC)
    seq = max([int(e["seq"]) for e in history(settings, interval, market=market)] + [0]) + 1
    full = {"seq": seq, "time": now.strftime("%Y-%m-%dT%H:%M:%SZ"), **event}
    key = f"{HISTORY_PREFIX}{now:%Y%m%dT%H%M%S%f}-{uuid.uuid4().hex[:6]}"
    _client(settings).set_registered_model_tag(model_name(interval, market), key, json.dumps(full))
    return full


def _check_version(settings: Settings, interval: str, version: str, *, market: str = "spot") -> None:
    from mlflow.exceptions import MlflowException

    try:
        _client(settings).get_model_version(model_name(interval, market), version)
    except MlflowException as exc:
        name = model_name(interval, market)
        raise BadConfigError(f"{name} has no version {version!r}; see qt registry list") from exc


def promote(
    settings: Settings, interval: str, version: str, actor: str, reason: str, *, market: str = "spot"
) -> dict[str, Any]:
    """Make ``version`` the champion (the challenger alias leaves it); record the event.

    Raises:
        BadConfigError: no such version.
    """
    _check_version(settings, interval, version, market=market)
    previous = alias_version(settings, interval, "champion", market=market)
    client = _client(settings)
    client.set_registered_model_alias(model_name(interval, market), "champion", version)
    if alias_version(settings, interval, "challenger", market=market) == version:
        client.delete_registered_model_alias(model_name(interval, market), "challenger")
    client.set_model_version_tag(model_name(interval, market), version, "promoted_by", actor)
    event = {"action": "promote", "version": version, "previous": previous, "actor": actor}
    return _record(settings, interval, {**event, "reason": reason}, market=market)


def record_rejection(
    settings: Settings, interval: str, version: str, reason: str, *, market: str = "spot"
) -> dict[str, Any]:
    """Record that the gate kept ``version`` out (the champion stays)."""
    champion = alias_version(settings, interval, "champion", market=market)
    event = {"action": "reject", "version": version, "previous": champion, "actor": "gate"}
    return _record(settings, interval, {**event, "reason": reason}, market=market)


def rollback(
    settings: Settings, interval: str, actor: str = "person", reason: str = "", *, market: str = "spot"
) -> dict[str, Any]:
    """Point ``champion`` back at the version that was champion before the current one.

    The champion's lineage is replayed from the history (a promotion pushes a version,
    a rollback pops one), so repeated rollbacks walk further back.

    Raises:
        BadConfigError: no earlier champion, or the alias was moved outside ``qt``.
    """
    lineage: list[str] = []
    for event in history(settings, interval, market=market):
        if event["action"] == "promote" and (not lineage or lineage[-1] != str(event["version"])):
            lineage.append(str(event["version"]))
        elif event["action"] == "rollback" and lineage:
            lineage.pop()
    current = alias_version(settings, interval, "champion", market=market)
    if not lineage or lineage[-1] != current:
        raise BadConfigError(
            f"{model_name(interval, market)}: the champion alias ({current}) does not match the recorded "
            f"history ({lineage[-1] if lineage else 'no promotions'}); use qt registry promote VERSION"
        )
    if len(lineage) < 2:
        raise BadConfigError(f"{model_name(interval, market)}: no earlier champion to roll back to")
    target = lineage[-2]
    _client(settings).set_registered_model_alias(model_name(interval, market), "champion", target)
    event = {"action": "rollback", "version": target, "previous": current, "actor": actor}
    return _record(
        settings, interval, {**event, "reason": reason or f"rolled back from {current}"}, market=market
    )


def describe_version(
    settings: Settings, interval: str, version: str, *, market: str = "spot"
) -> dict[str, Any]:
    """One version: aliases, creation time, run, metrics and every tag (``qt registry show``)."""
    _check_version(settings, interval, version, market=market)
    mv = _client(settings).get_model_version(model_name(interval, market), version)
    return _version_doc(mv, _aliases_of(_registered(settings, interval, market)), full=True)


def _version_doc(mv: Any, aliases: dict[str, list[str]], full: bool = False) -> dict[str, Any]:
    created = datetime.fromtimestamp(mv.creation_timestamp / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    metrics = {}
    for key, value in mv.tags.items():
        if key.startswith("metric."):
            try:
                metrics[key.removeprefix("metric.")] = float(value)
            except ValueError:
                continue
    doc: dict[str, Any] = {
        "version": str(mv.version),
        "aliases": sorted(aliases.get(str(mv.version), [])),
        "created": created,
        "metrics": metrics,
    }
    if full:
        doc["run_id"] = mv.run_id
        doc["source"] = mv.source
        doc["tags"] = {k: v for k, v in mv.tags.items() if not k.startswith("metric.")}
    return doc


def describe(settings: Settings, interval: str, *, market: str = "spot") -> dict[str, Any]:
    """``qt registry list --json``: aliases, every version (newest first) and the history."""
    from mlflow.exceptions import MlflowException

    name = model_name(interval, market)
    client = _client(settings)
    try:
        versions = client.search_model_versions(f"name='{name}'")
    except MlflowException:
        versions = []
    model = _registered(settings, interval, market)
    docs = sorted((_version_doc(mv, _aliases_of(model)) for mv in versions), key=lambda d: -int(d["version"]))
    aliases = model.aliases if model is not None else {}
    return {
        "name": name,
        "champion": str(aliases["champion"]) if "champion" in aliases else None,
        "challenger": str(aliases["challenger"]) if "challenger" in aliases else None,
        "versions": docs,
        "history": _events(model),
    }
