"""The Dask side of :mod:`flows.runners` (imported only with ``QT_TASK_RUNNER=dask``)."""

from __future__ import annotations

from prefect_dask.task_runners import DaskTaskRunner

from flows.runners import ReportsHere, default_workers


class DaskRunner(ReportsHere, DaskTaskRunner):
    """prefect-dask's runner; a LocalCluster it starts has its workers report to this flow."""


def dask_runner(address: str | None = None, workers: int | None = None) -> DaskRunner:
    """A runner on the scheduler at ``address``, or on a LocalCluster of ``workers`` processes."""
    if address:
        return DaskRunner(address=address)
    cluster = {
        "n_workers": workers or default_workers(),
        "threads_per_worker": 1,  # one task per process, as the process pool runs them
        "processes": True,
        "dashboard_address": None,  # no web server (nor its port) per flow run
    }
    return DaskRunner(cluster_kwargs=cluster)
