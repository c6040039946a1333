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


def deployments(settings: Settings, source: str = "store") -> list[Any]:
    """The retrain, live and supervisor deployments (not yet applied), parameterised with the home."""
    from prefect.schedules import Cron
    from prefect.types.entrypoint import EntrypointType

    from flows.training import training_flow

    common: dict[str, Any] = {
        "parameters": {"home": str(settings.home), "source": source},
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
        parameters={"home": str(settings.home), "broker": "paper", "market": settings.default_market},
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
        parameters={"home": str(settings.home), "market": settings.default_market},
        concurrency_limit=1,
        tags=["quantum-trader", "monitoring"],
        entrypoint_type=EntrypointType.MODULE_PATH,
    )
    return [daily, triggered, live, supervise]


def apply_deployments(settings: Settings, source: str = "store") -> list[dict[str, Any]]:
    """Register the deployments with the Prefect API; returns what the API now holds."""
    from prefect import get_client
    from prefect.utilities.asyncutils import run_coro_as_sync

    for deployment in deployments(settings, source):
        deployment.apply()

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
                        "concurrency_limit": found.global_concurrency_limit.limit
                        if found.global_concurrency_limit
                        else None,
                    }
                )
            return out

    result = run_coro_as_sync(read())
    assert result is not None
    return result


def _schedule(schedule: Any) -> dict[str, Any]:
    cron = getattr(schedule, "cron", None)
    return {"cron": cron, "timezone": getattr(schedule, "timezone", None), "schedule": str(schedule)}


def request_retrain(reason: str, parameters: dict[str, Any] | None = None) -> str:
    """Start ``triggered-retrain`` (returns the flow run id at once; a served runner runs it)."""
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
