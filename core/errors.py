"""One error hierarchy, named by what the caller should do about it.

* :class:`RetryableError` — try again later (timeouts, HTTP 429/418, 5xx). Prefect retries
  only this kind.
* :class:`NeedsOperatorError` — a person must act (bad configuration, bad data). The CLI
  exits with code 2 and the message names the file / symbol / row / field.
* :class:`ModelFaultError` — a model is missing or produced unusable output.
"""

from __future__ import annotations

from pathlib import Path


class QTError(Exception):
    """Base class of every error Quantum Trader raises on purpose."""

    exit_code: int = 1


class RetryableError(QTError):
    """A transient failure: the same call may succeed later.

    Args:
        message: what failed.
        retry_after: seconds the remote side asked us to wait, when it said so.
    """

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class NeedsOperatorError(QTError):
    """A person must fix something (input or configuration) before a retry can help."""

    exit_code = 2


class BadConfigError(NeedsOperatorError):
    """Invalid settings or command-line options."""


class BadDataError(NeedsOperatorError):
    """Input data failed a check; nothing was stored.

    Args:
        message: the human-readable reason, naming file / symbol / rows / fields.
        quarantine: folder where the rejected batch and its report were written, if any.
    """

    def __init__(self, message: str, quarantine: Path | None = None) -> None:
        if quarantine is not None:
            message = f"{message}\n  quarantined batch and report: {quarantine}"
        super().__init__(message)
        self.quarantine = quarantine


class DamagedStoreError(BadDataError):
    """A stored dataset file is not what the store writes.

    Truncated, not Parquet, a folder in its place, or duplicate / unsorted rows written by
    another tool.

    Args:
        path: the file.
        problem: what is wrong with it.
    """

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(
            f"{path}: damaged store file ({problem}); `qt validate --repair` moves it to "
            "quarantine, then ingest the dataset again from its source"
        )
        self.path = path
        self.problem = problem


class CandleConflictError(BadDataError):
    """An ingest would change candles already stored (refused unless asked to overwrite)."""


class ModelFaultError(QTError):
    """No usable model, or a model produced output that fails its contract."""


class BrokenModelError(ModelFaultError, NeedsOperatorError):
    """A registered model version whose artifacts are missing or cannot be loaded."""


class IngestError(QTError):
    """Some symbols of an ingest run failed; the others were stored.

    Args:
        failures: symbol → the error that stopped it.
    """

    def __init__(self, failures: dict[str, QTError]) -> None:
        lines = [f"{sym}: {err}" for sym, err in failures.items()]
        super().__init__("ingest failed for " + ", ".join(failures) + "\n" + "\n".join(lines))
        self.failures = failures
        self.exit_code = max(err.exit_code for err in failures.values())
        #: the JSON report of the symbols that were stored, filled in by the flow.
        self.report: dict[str, object] = {}
