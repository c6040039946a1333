"""Where the flows' concurrent tasks run: Prefect's own pools, or a Dask cluster.

``QT_TASK_RUNNER=local`` (the default) fits models in Prefect's process pool and ingests
symbols in its thread pool; ``QT_TASK_RUNNER=dask`` runs both on a Dask cluster through
``prefect-dask``: the scheduler at ``QT_DASK_ADDRESS`` when one is named, else a
``LocalCluster`` of ``QT_WORKERS`` worker processes started for the flow run.

Either way the worker processes report to the flow's own Prefect API: in ephemeral mode
(no ``PREFECT_API_URL``) each would otherwise start a temporary server of its own
(seconds and ~200 MB each), so the runner exports the flow's API URL while it runs. A
remote Dask cluster's workers need ``PREFECT_API_URL`` in their own environment
(``infra/compose.yaml`` sets it).

How many threads one fit may use comes from the runner's own size
(:func:`threads_per_fit`): the cores of a machine shared among the tasks it runs at once.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

from prefect.task_runners import ProcessPoolTaskRunner, TaskRunner, ThreadPoolTaskRunner

from core.settings import Settings


def default_workers() -> int:
    """Processes for CPU-bound tasks: one per core, at most 4."""
    return max(1, min(os.cpu_count() or 1, 4))


@contextmanager
def report_here() -> Iterator[None]:
    """Export this flow's Prefect API URL to the worker processes started meanwhile."""
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


class ReportsHere:
    """Mixin for a task runner: the processes it starts report to this flow's Prefect API."""

    def __enter__(self) -> Any:
        self._reporting = ExitStack()
        self._reporting.enter_context(report_here())  # before any worker process starts
        return super().__enter__()  # type: ignore[misc]

    def __exit__(self, *exc: Any) -> None:
        try:
            super().__exit__(*exc)  # type: ignore[misc]
        finally:
            self._reporting.close()


class LocalRunner(ReportsHere, ProcessPoolTaskRunner):
    """Prefect's process pool, whose size (``workers``) the fits read."""

    def __init__(self, max_workers: int | None = None) -> None:
        self.workers = max_workers or default_workers()
        super().__init__(max_workers=self.workers)


def cpu_runner(settings: Settings, workers: int | None = None) -> TaskRunner[Any]:
    """The runner of CPU-bound tasks (model fits) as the settings choose it."""
    workers = workers or settings.workers
    if settings.task_runner == "dask":
        from flows.dask_runner import dask_runner  # imports distributed: only when asked for

        return dask_runner(settings.dask_address, workers)
    return LocalRunner(workers)


def io_runner(settings: Settings) -> TaskRunner[Any]:
    """The runner of network- and disk-bound tasks (ingest per symbol)."""
    if settings.task_runner == "dask":
        from flows.dask_runner import dask_runner

        return dask_runner(settings.dask_address, settings.workers)
    return ThreadPoolTaskRunner()  # Prefect's default pool


def _as_dask(runner: TaskRunner[Any] | None) -> Any:
    """The runner if it is prefect-dask's (never one unless prefect-dask was imported), else None."""
    dask = getattr(sys.modules.get("prefect_dask.task_runners"), "DaskTaskRunner", None)
    return runner if dask is not None and isinstance(runner, dask) else None


def threads_per_fit(runner: TaskRunner[Any] | None) -> int:
    """Threads one task may use: a machine's cores over the tasks the runner runs there at once.

    The local pool runs ``workers`` tasks on this machine; a Dask cluster runs as many as
    its workers have threads, per host (the cores are each worker's own machine's).
    """
    if (dask := _as_dask(runner)) is not None:
        client = dask.client
        workers = client.scheduler_info(n_workers=-1)["workers"]
        cores = client.run(os.cpu_count)  # address → cores of that worker's machine
        busy: dict[str, int] = {}
        for info in workers.values():
            busy[info["host"]] = busy.get(info["host"], 0) + int(info["nthreads"])
        shares = [(cores[a] or 1) // busy[w["host"]] for a, w in workers.items() if a in cores]
        return max(1, min(shares, default=1))
    slots = runner.workers if isinstance(runner, LocalRunner) else default_workers()
    return max(1, (os.cpu_count() or 1) // slots)


def describe(runner: TaskRunner[Any] | None) -> str:
    """The runner as a run tag reads it: ``local (2 processes)``, ``dask tcp://…``."""
    if (dask := _as_dask(runner)) is not None:
        address, cluster = dask.address, dask.cluster_kwargs
        return f"dask {address}" if address else f"dask LocalCluster ({cluster.get('n_workers')} workers)"
    if isinstance(runner, LocalRunner):
        return f"local ({runner.workers} processes)"
    return type(runner).__name__ if runner else "none"
