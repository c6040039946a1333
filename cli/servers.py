"""``qt ui`` and ``qt deploy``: the Prefect and MLflow servers, and the scheduled deployments."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from cli.app import (
    HomeOpt,
    IntervalOpt,
    JsonOpt,
    MarketOpt,
    app,
    load,
    run,
)
from cli.output import stderr, table
from core.settings import Settings


@app.command()
def ui(
    prefect_port: Annotated[int, typer.Option("--prefect-port", help="Prefect server and UI port.")] = 4200,
    mlflow_port: Annotated[int, typer.Option("--mlflow-port", help="Port of the MLflow UI.")] = 5000,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Start the Prefect UI and the MLflow UI on localhost, print their URLs; Ctrl-C stops both.

    Both read the home's state: Prefect's database (flow runs, deployments) and MLflow's
    store (runs, plots, the registry). While it runs, every qt command for this home
    runs its flows on this server (no ephemeral one to start; the runs show in the UI):
    the server is recorded in <home>/prefect/server.json. Other shells or homes can
    export the printed PREFECT_API_URL.
    """
    started: list[Any] = []

    def command(settings: Settings) -> tuple[dict[str, Any], Any]:
        from infra.ui import start

        servers = start(settings, prefect_port, mlflow_port)
        started.append(servers)
        doc = {
            "prefect_ui": servers.prefect_url,
            "prefect_api": servers.prefect_api,
            "mlflow_ui": servers.mlflow_url,
        }
        stderr.print(
            f"Prefect UI  {servers.prefect_url}\nMLflow UI   {servers.mlflow_url}\n"
            f"qt commands for {settings.home} now run their flows on this server by themselves;\n"
            f"elsewhere: export PREFECT_API_URL={servers.prefect_api}\n"
            "Ctrl-C stops both.",
            highlight=False,
        )
        return doc, None

    run(home, as_json, command)
    sys.stdout.flush()  # the URLs must reach a pipe before we block
    _block_until_interrupted(started[0])


def _block_until_interrupted(servers: Any) -> None:
    """Keep the servers up until Ctrl-C or SIGTERM (then stop them), or until one exits."""
    import signal

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    code = 0
    try:
        code = servers.wait()
        stderr.print(f"[bold red]error[/]: a server exited with code {code}", highlight=False)
    except KeyboardInterrupt:
        pass
    finally:
        servers.stop()
    if code:
        raise typer.Exit(1)


@app.command()
def deploy(
    serve: Annotated[
        bool | None,
        typer.Option(
            "--serve/--no-serve",
            help="Keep running and execute runs as they come due (default without --work-pool).",
        ),
    ] = None,
    source: Annotated[
        str, typer.Option("--source", help="Where the scheduled retrains take new candles: store or binance.")
    ] = "store",
    work_pool: Annotated[
        str | None,
        typer.Option(
            "--work-pool",
            metavar="NAME",
            help=(
                "Apply the deployments to this Prefect work pool (created, type process, when missing) "
                "instead of serving them here: a 'prefect worker start --pool NAME' process with "
                "quantum-trader installed runs them, with its own QT_* settings (QT_HOME, MLflow, journal)."
            ),
        ),
    ] = None,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Register (and serve) the deployments: daily retrain, triggered retrain, live tick, supervisor.

    Needs a Prefect server: the one qt ui keeps up for this home (found by itself), or
    PREFECT_API_URL. The triggered retrain has no schedule; the model supervisor starts it
    (flows.deploy.request_retrain). live/every-minute trades the champion on the paper
    broker, one tick at a time, never beside a retrain's registry writes; supervisor/hourly
    checks the live model's calibration and drift and moves the risk engine to DEFENSIVE.
    Without --work-pool this process runs them, on this home; with it, the pool's workers
    do (infra/compose.yaml starts one), on theirs.
    """
    serving = serve if serve is not None else work_pool is None

    def command(settings: Settings) -> tuple[dict[str, Any], Any]:
        import os

        from core.errors import BadConfigError
        from flows.deploy import apply_deployments, check_api

        if source not in ("store", "binance"):
            raise BadConfigError(f"--source {source!r}: use store or binance")
        if serving and work_pool is not None:
            raise BadConfigError(
                f"--serve with --work-pool {work_pool}: the pool's workers run the deployments; "
                "drop --serve, or --work-pool to run them here"
            )
        if not os.environ.get("PREFECT_API_URL"):
            raise BadConfigError(
                "qt deploy needs a Prefect server (ephemeral mode forgets deployments): "
                f"run qt ui --home {settings.home} in another terminal, or export PREFECT_API_URL"
            )
        check_api(os.environ["PREFECT_API_URL"])
        found = apply_deployments(settings, source, work_pool)
        rows = [
            [d["name"], ", ".join(f"{s['cron']} {s['timezone']}" for s in d["schedules"]) or "on demand",
             d["work_pool"] or "served here"]
            for d in found
        ]  # fmt: skip
        doc = {"deployments": found, "serving": serving, "work_pool": work_pool}
        return doc, table("Deployments", ["deployment", "schedule", "runs on"], rows)

    run(home, as_json, command)
    if serving:
        from flows.deploy import serve as serve_deployments

        stderr.print("serving the deployments (Ctrl-C stops)", highlight=False)
        serve_deployments(load(home), source)
    elif work_pool is not None:
        stderr.print(f"a worker runs them: prefect worker start --pool {work_pool}", highlight=False)


@app.command()
def serve(
    host: Annotated[str, typer.Option("--host", help="Address to bind (loopback by default).")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port of the API and the dashboard.")] = 8000,
    interval: IntervalOpt = None,
    market: MarketOpt = "spot",
    replay: Annotated[
        str | None,
        typer.Option("--replay", help="Show a replay's journal and candles: its folder, or 'latest'."),
    ] = None,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """FastAPI: POST /api/predict, GET /health, /api/positions, /api/trades, /api/analytics/..., /metrics.

    The dashboard is at /, OpenAPI docs at /docs. Predictions use the champion of the
    home's registry (a promotion reaches the API without a restart) on the newest stored
    candles; no champion → 503. --replay shows what a replay (qt live --replay-from, qt demo)
    journalled, with the home's registry. Ctrl-C stops it.
    """
    served: list[Any] = []

    def command(settings: Settings) -> tuple[dict[str, Any], Any]:
        from serving.api import create_app
        from serving.replay import find_replay

        target = find_replay(settings, replay) if replay else settings
        app_ = create_app(target, interval, market)
        served.append(app_)
        url = f"http://{host}:{port}"
        doc = {"url": url, "dashboard": f"{url}/", "docs": f"{url}/docs", "home": str(target.home)}
        stderr.print(
            f"API and dashboard on {url} (docs {url}/docs) for {target.home}; Ctrl-C stops.", highlight=False
        )
        return doc, None

    run(home, as_json, command, writes=False)
    sys.stdout.flush()
    import uvicorn

    uvicorn.run(served[0], host=host, port=port, log_level="warning")
