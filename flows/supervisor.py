"""The model supervisor flow: one run checks the traded model's live record (hourly by ``qt deploy``).

The checks are :mod:`serving.supervisor`'s; this flow composes them for Prefect: it
supervises, starts the triggered-retrain deployment with the reasons when a threshold is
crossed (at most once per cool-down), journals the verdict (the live loop's risk engine
reads it as its floor mode) and logs it to MLflow's ``monitoring`` experiment. A retrain
that cannot be started fails the run, after the DEFENSIVE verdict is journalled.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

from prefect import flow

log = logging.getLogger(__name__)


@flow(name="supervisor", validate_parameters=True, log_prints=False)
def supervisor_flow(
    home: str | None = None,
    market: Literal["spot", "futures"] = "spot",
    interval: str | None = None,
    retrain: bool = True,
    replay: str | None = None,
) -> dict[str, Any]:
    """Check the live model: log loss, accuracy, calibration, bias, feature drift.

    Args:
        home: the home (store, registry, journal); default ``QT_HOME`` of the process that
            runs the flow (a work pool's worker).
        market: spot or futures.
        interval: candle interval (default: the settings').
        retrain: start the triggered-retrain deployment when a check fails.
        replay: supervise a replay's journal instead (its folder, or ``latest``).

    Returns:
        The verdict: mode (NORMAL or DEFENSIVE), reasons, checks, per-model figures, drift,
        the MLflow run and the retrain's flow run id.
    """
    import pandas as pd

    from core.errors import BadConfigError
    from core.settings import configure_environment, load_settings
    from serving import supervisor
    from serving.journal import Journal
    from serving.monitoring import log_monitoring
    from serving.replay import find_replay

    settings = load_settings(Path(home) if home else None)
    configure_environment(settings)
    settings = find_replay(settings, replay) if replay else settings
    journal = Journal.if_exists(settings)
    ival = interval or settings.default_interval
    if journal is None:
        raise BadConfigError(f"{settings.home}: no trade journal (run qt live first): nothing to supervise")
    limits = supervisor.Limits()
    with journal:
        verdict, outcomes = supervisor.supervise(settings, journal, ival, market, limits)
        now = pd.Timestamp(verdict.time)
        if verdict.reasons and retrain and supervisor.retrain_due(journal, limits, now):
            from flows.deploy import request_retrain

            reason = f"supervisor v{verdict.model_version}: " + "; ".join(verdict.reasons)
            try:
                verdict.retrain_run_id = request_retrain(reason)
            except Exception as err:  # named in the verdict, then the run fails
                verdict.retrain_error = (
                    f"{type(err).__name__}: {err} (register it with qt deploy, or run with retrain off)"
                )
        supervisor.journal_verdict(journal, verdict)
    run_id = log_monitoring(settings, verdict, outcomes)
    log.info("supervisor: %s v%s, %d rows: %s", verdict.mode, verdict.model_version, verdict.rows,
             "; ".join(verdict.reasons) or verdict.note or "every check passed")  # fmt: skip
    if verdict.retrain_error:
        raise RuntimeError(f"the triggered retrain could not be started: {verdict.retrain_error}")
    return {**verdict.as_dict(), "mlflow_run_id": run_id}
