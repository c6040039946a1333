"""Prefect deployments: a daily retrain, a triggered one, the every-minute live tick, the hourly supervisor.

``daily-retrain`` runs at 00:00 UTC. ``triggered-retrain`` has no schedule: the live side
or the model supervisor starts it (:func:`request_retrain`) when live win rate or
calibration degrade, or after N new candles, passing the reason and any parameter
overrides. ``live/every-minute`` runs one live tick a minute (paper broker by default);
``supervisor/hourly`` checks the traded model's live record at minute 5 of every hour
(:mod:`flows.supervisor`).
Each runs one at a time (concurrency limit 1) and points at the same home; the live tick
takes the home's global concurrency limit (:data:`flows.live.HOME_LIMIT`, 1 slot), which
:func:`apply_deployments` creates, so it never runs beside a retrain's registry writes, and
a training flow holds :data:`flows.live.RETRAIN_LIMIT` (1 slot, created there too) for its
whole run, so the daily and a triggered retrain queue instead of overlapping.

Two ways to run them: :func:`serve` runs them in this process as they come due (``qt
deploy``), or :func:`apply_deployments` with a work pool (``qt deploy --work-pool NAME``)
leaves them to the workers of a Prefect ``process`` pool (``prefect worker start --pool
NAME``, ``infra/compose.yaml``). Their entrypoints are module paths
(``flows.training.training_flow``), so a worker imports the installed package and needs no
code storage; the deployments then carry no home, and each run takes the worker's own
``QT_*`` settings (its ``QT_HOME``, MLflow server, journal), as a worker on another machine must.
"""

from __future__ import annotations

from typing import Any

from core.settings import Settings

DAILY_CRON = "0 0 * * *"
FLOW_NAME = "training"
DAILY = "daily-retrain"
TRIGGERED = "triggered-retrain"
LIVE = "every-minute"
LIVE_CRON = "* * * * *"
SUPERVISOR = "hourly"
SUPERVISOR_CRON = "5 * * * *"
#: The only work pool type whose workers can run these deployments: they carry no image nor
#: code storage, only module paths the worker's own installed package resolves.
WORK_POOL_TYPE = "process"


def check_api(url: str, timeout_s: float = 5.0) -> None:
    """Fail naming the URL when no Prefect server answers at ``PREFECT_API_URL``.

    Raises:
        BadConfigError: ``{url}/health`` does not answer 200 within ``timeout_s``.
    """
    import urllib.error
    import urllib.request

    from core.errors import BadConfigError

    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/health", timeout=timeout_s) as reply:
            if reply.status == 200:
                return
            problem = f"HTTP {reply.status}"
    except (urllib.error.URLError, OSError, ValueError) as err:
        problem = str(getattr(err, "reason", err))
    raise BadConfigError(
        f"PREFECT_API_URL {url}: no Prefect server answers ({problem}); start one with qt ui "
        "or export the URL it prints"
    )


def deployments(settings: Settings, source: str = "store", *, with_home: bool = True) -> list[Any]:
    """The retrain, live and supervisor deployments (not yet applied).

    Args:
        settings: the deployer's settings (its home, default market).
        source: where the scheduled retrains take new candles: store or binance.
        with_home: pass this home to every run; without it a run takes ``QT_HOME`` of the
            process that runs it (a work pool's worker).
    """
    from prefect.schedules import Cron
    from prefect.types.entrypoint import EntrypointType

    from flows.training import training_flow

    home = {"home": str(settings.home)} if with_home else {}
    common: dict[str, Any] = {
        "parameters": {**home, "source": source},
        "concurrency_limit": 1,
        "tags": ["quantum-trader", "training"],
        "entrypoint_type": EntrypointType.MODULE_PATH,
    }
    daily = training_flow.to_deployment(
        name=DAILY,
        schedules=[Cron(DAILY_CRON, timezone="UTC")],
        description="Retrain every day at 00:00 UTC: the whole training flow, ending at the gate.",
        **common,
    )
    triggered = training_flow.to_deployment(
        name=TRIGGERED,
        description=(
            "Retrain on demand: started by the live side or the model supervisor (live win-rate or "
            "calibration degradation, N new candles) with the reason as a tag."
        ),
        **common,
    )
    from flows.live import live_flow

    live = live_flow.to_deployment(
        name=LIVE,
        schedules=[Cron(LIVE_CRON, timezone="UTC")],
        description="One live tick a minute: the champion, new candles, the strategy, the paper broker.",
        parameters={**home, "broker": "paper", "market": settings.default_market},
        concurrency_limit=1,
        tags=["quantum-trader", "live"],
        entrypoint_type=EntrypointType.MODULE_PATH,
    )
    from flows.supervisor import supervisor_flow

    supervise = supervisor_flow.to_deployment(
        name=SUPERVISOR,
        schedules=[Cron(SUPERVISOR_CRON, timezone="UTC")],
        description=(
            "Every hour: the live model's log loss, accuracy, calibration, bias and feature drift; "
            "DEFENSIVE and a triggered retrain when one is off (checks in MLflow's monitoring experiment)."
        ),
        parameters={**home, "market": settings.default_market},
        concurrency_limit=1,
        tags=["quantum-trader", "monitoring"],
        entrypoint_type=EntrypointType.MODULE_PATH,
    )
    return [daily, triggered, live, supervise]


def apply_deployments(
    settings: Settings, source: str = "store", work_pool: str | None = None
) -> list[dict[str, Any]]:
    """Register the deployments with the Prefect API; returns what the API now holds.

    Args:
        settings: the deployer's settings.
        source: where the scheduled retrains take new candles: store or binance.
        work_pool: a Prefect work pool (created, type ``process``, when missing) whose
            workers run the deployments; they then carry no home (the worker's ``QT_HOME``
            decides). None: :func:`serve` runs them here, with this home.

    Raises:
        BadConfigError: the work pool exists and is not of type ``process``.
    """
    from prefect import get_client
    from prefect.utilities.asyncutils import run_coro_as_sync

    if work_pool is not None:
        ensure_work_pool(work_pool)
    for deployment in deployments(settings, source, with_home=work_pool is None):
        deployment.apply(work_pool_name=work_pool)

    async def read() -> list[dict[str, Any]]:
        from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

        from flows.live import HOME_LIMIT, RETRAIN_LIMIT

        async with get_client() as client:
            names = [name.name for name in await client.read_global_concurrency_limits()]
            for wanted in (HOME_LIMIT, RETRAIN_LIMIT):
                if wanted not in names:
                    limit = GlobalConcurrencyLimitCreate(name=wanted, limit=1)
                    await client.create_global_concurrency_limit(limit)
            out = []
            named = ((FLOW_NAME, DAILY), (FLOW_NAME, TRIGGERED), ("live", LIVE), ("supervisor", SUPERVISOR))
            for flow_name, name in named:
                found = await client.read_deployment_by_name(f"{flow_name}/{name}")
                out.append(
                    {
                        "name": f"{flow_name}/{name}",
                        "id": str(found.id),
                        "schedules": [_schedule(s.schedule) for s in found.schedules],
                        "parameters": found.parameters,
                        "work_pool": found.work_pool_name,
                        "concurrency_limit": found.global_concurrency_limit.limit
                        if found.global_concurrency_limit
                        else None,
                    }
                )
            return out

    result = run_coro_as_sync(read())
    assert result is not None
    return result


def ensure_work_pool(name: str) -> dict[str, Any]:
    """The work pool ``name``, created as a ``process`` pool when the API has none of that name.

    Returns:
        ``{"name", "type", "created"}``.

    Raises:
        BadConfigError: a pool of that name exists with another type: its workers could not
            import the flows (the deployments carry no image or code storage).
    """
    from prefect import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
    from prefect.workers.process import ProcessWorker

    from core.errors import BadConfigError

    with get_client(sync_client=True) as client:
        try:
            pool = client.read_work_pool(name)
        except ObjectNotFound:
            template = ProcessWorker.get_default_base_job_template()  # local: no collections registry
            wanted = WorkPoolCreate(name=name, type=WORK_POOL_TYPE, base_job_template=template)
            try:
                client.create_work_pool(wanted)
                return {"name": name, "type": WORK_POOL_TYPE, "created": True}
            except ObjectAlreadyExists:  # a worker starting meanwhile created it (compose starts both)
                pool = client.read_work_pool(name)
    if pool.type != WORK_POOL_TYPE:
        raise BadConfigError(
            f"work pool {name!r} is of type {pool.type!r}: the deployments need a {WORK_POOL_TYPE!r} "
            "pool, whose workers run them from their own installed quantum-trader; name another pool"
        )
    return {"name": name, "type": pool.type, "created": False}


def _schedule(schedule: Any) -> dict[str, Any]:
    cron = getattr(schedule, "cron", None)
    return {"cron": cron, "timezone": getattr(schedule, "timezone", None), "schedule": str(schedule)}


def request_retrain(reason: str, parameters: dict[str, Any] | None = None) -> str:
    """Start ``triggered-retrain`` (returns the flow run id at once; a served runner or a worker runs it)."""
    from prefect.deployments import run_deployment

    run: Any = run_deployment(
        f"{FLOW_NAME}/{TRIGGERED}",
        parameters=parameters or {},
        timeout=0,
        tags=["triggered", f"reason:{reason}"[:100]],
    )
    return str(run.id)


def serve(settings: Settings, source: str = "store") -> None:
    """Register the deployments and run them here as they come due (blocks until Ctrl-C)."""
    import prefect

    prefect.serve(*deployments(settings, source))
