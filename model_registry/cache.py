"""A local copy of each registered version's files, so a hot reload reads a disk, not the registry.

A registered version never changes, so its files are fetched once (from the MLflow
artifact store, local or remote) into ``<home>/models/<registry>/<name>/<version>/`` and every later
load of that version, in this process or another, reads them there. The copy is made in a
temporary folder beside it and renamed into place, so a half-fetched version is never
read; a copy that fails to load is thrown away and fetched again once.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from core.settings import Settings

log = logging.getLogger(__name__)


def version_dir(settings: Settings, name: str, version: str) -> Path:
    """Where the local copy of ``name`` v``version`` of this home's registry lives.

    The registry's address is part of the path: version 3 of another MLflow server is
    another model.
    """
    registry = hashlib.sha256(settings.tracking_uri.encode()).hexdigest()[:12]
    return settings.home / "models" / registry / name / str(version)


def load_version(settings: Settings, name: str, version: str) -> Any:
    """The pyfunc model of ``name`` v``version``, from the local copy (fetched first when missing).

    Raises:
        Exception: whatever MLflow raises when the version's files cannot be fetched or
            loaded even from a fresh copy (the caller names the version).
    """
    import mlflow

    target = version_dir(settings, name, version)
    fresh = not (target / "MLmodel").exists()
    if fresh:
        _fetch(name, version, target)
    try:
        return mlflow.pyfunc.load_model(str(target))
    except Exception:
        if fresh:
            raise
        log.warning("the local copy of %s v%s does not load: fetching it again", name, version)
        shutil.rmtree(target, ignore_errors=True)
        _fetch(name, version, target)
        return mlflow.pyfunc.load_model(str(target))


def _fetch(name: str, version: str, target: Path) -> None:
    """Download the version's files next to ``target``, then rename them into place."""
    import mlflow

    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists() and not (target / "MLmodel").exists():  # left half-removed by hand: not a copy
        shutil.rmtree(target, ignore_errors=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}", dst_path=str(partial))
        try:
            partial.rename(target)
        except OSError:  # another process put its copy there first: keep that one
            if not (target / "MLmodel").exists():
                raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
