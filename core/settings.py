"""One typed settings object, read once at the entry point (env prefix ``QT_``).

All state lives under :attr:`Settings.home`; the other paths derive from it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Quantum Trader's configuration. Every field can be set as ``QT_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix="QT_", env_file=".env", extra="ignore")

    home: Path = Field(default=Path(".qt"), description="folder holding all state")

    # Binance REST: secrets only from the environment, never logged.
    binance_api_key: SecretStr | None = None
    binance_api_secret: SecretStr | None = None
    binance_testnet: bool = False
    binance_spot_url: str | None = Field(
        default=None, description="override of the spot REST root, e.g. http://127.0.0.1:9000/api"
    )
    binance_futures_url: str | None = Field(
        default=None, description="override of the USD-M futures REST root (…/fapi)"
    )
    http_timeout_s: float = 10.0
    http_max_retries: int = Field(default=5, ge=0)
    http_backoff_s: float = Field(default=0.5, gt=0, description="first backoff; doubles per try")
    http_max_wait_s: float = Field(default=120.0, gt=0, description="cap on any single wait")
    #: Request weight per minute allowed by Binance (spot 6000, USD-M futures 2400); we pause
    #: when the server-reported used weight reaches ``weight_pause_fraction`` of it.
    spot_weight_limit: int = 6000
    futures_weight_limit: int = 2400
    weight_pause_fraction: float = Field(default=0.9, gt=0, le=1)
    kline_page_limit: int = Field(default=1000, ge=1, le=1000)

    default_interval: str = "1h"
    default_market: str = "spot"
    default_lookback_days: int = Field(default=365, ge=1, description="backfill when no --start")
    quote_asset: str = "USDT"
    min_quote_volume: float = Field(default=500_000.0, ge=0, description="universe filter, USDT")
    sentiment_csv: Path | None = Field(default=None, description="optional sentiment source (CSV)")

    # Trading: the shared strategy's sizing rule (bench/sizing.py judged them; README "Sizing").
    sizing_rule: Literal["fixed", "kelly", "vol-target"] = Field(
        default="fixed", description="how the backtest and the live flow size a position"
    )

    # Task runners: Prefect's process pool here, or a Dask cluster (prefect-dask).
    task_runner: Literal["local", "dask"] = Field(
        default="local", description="where the flows' concurrent tasks run: local or dask"
    )
    dask_address: str | None = Field(
        default=None, description="an existing Dask scheduler, e.g. tcp://10.0.0.5:8786 (else a LocalCluster)"
    )
    workers: int | None = Field(
        default=None, ge=1, description="fit processes (local) or LocalCluster workers (default: cores, ≤ 4)"
    )

    # MLflow: a SQLite store and file artifacts under home unless a server is named.
    mlflow_tracking_uri: str | None = Field(default=None, description="e.g. http://127.0.0.1:5000")

    mlflow_artifact_root: str | None = Field(
        default=None,
        description="where new experiments keep artifacts, e.g. s3://bucket/mlflow (needs the s3 extra)",
    )

    # Trade journal: SQLite under home unless a SQLAlchemy URL is named (e.g. Postgres).
    journal_url: str | None = Field(default=None, description="e.g. postgresql+psycopg://user@host/qt")

    # Prefect's server database: SQLite under <home>/prefect unless a URL is named (e.g. Postgres).
    prefect_database_url: str | None = Field(
        default=None, description="e.g. postgresql+asyncpg://user@host/prefect (Prefect needs asyncpg)"
    )

    # Costs per market (bps of traded notional, per side): Binance's regular tier.
    spot_taker_fee_bps: float = Field(default=10.0, ge=0, description="spot taker fee; 7.5 paying in BNB")
    spot_maker_fee_bps: float = Field(default=10.0, ge=0, description="spot maker fee; 7.5 paying in BNB")
    futures_taker_fee_bps: float = Field(default=5.0, ge=0, description="USD-M futures taker fee")
    futures_maker_fee_bps: float = Field(default=2.0, ge=0, description="USD-M futures maker fee")
    taker_fee_bps: float | None = Field(
        default=None, ge=0, description="old name: when set, the taker fee of both markets"
    )
    maker_fee_bps: float | None = Field(
        default=None, ge=0, description="old name: when set, the maker fee of both markets"
    )
    slippage_bps: float = Field(default=1.0, ge=0)
    funding_rate_8h: float = Field(default=0.0001, description="perpetual futures funding per 8 h")

    def fees_bps(self, market: str) -> tuple[float, float]:
        """(taker, maker) fee per side in bps on ``market``; the old single names override both."""
        futures = market == "futures"
        taker = self.futures_taker_fee_bps if futures else self.spot_taker_fee_bps
        maker = self.futures_maker_fee_bps if futures else self.spot_maker_fee_bps
        return (
            taker if self.taker_fee_bps is None else self.taker_fee_bps,
            maker if self.maker_fee_bps is None else self.maker_fee_bps,
        )

    # Trading (paper broker; Binance takes its own account's balance).
    paper_cash: float = Field(default=10_000.0, gt=0, description="the paper account's starting quote cash")
    leverage: int = Field(default=1, ge=1, le=125, description="USD-M futures leverage per symbol")

    @property
    def store_dir(self) -> Path:
        """Parquet candle store."""
        return self.home / "store"

    @property
    def quarantine_dir(self) -> Path:
        """Rejected batches with their validation reports."""
        return self.home / "quarantine"

    @property
    def prefect_home(self) -> Path:
        """``PREFECT_HOME`` (Prefect's SQLite DB for ephemeral mode)."""
        return self.home / "prefect"

    @property
    def mlflow_dir(self) -> Path:
        """MLflow's SQLite DB and artifacts (when no tracking server is configured)."""
        return self.home / "mlflow"

    @property
    def tracking_uri(self) -> str:
        """The MLflow tracking (and registry) URI."""
        return self.mlflow_tracking_uri or f"sqlite:///{self.mlflow_dir / 'mlflow.db'}"

    @property
    def journal_uri(self) -> str:
        """The trade journal's SQLAlchemy URL."""
        return self.journal_url or f"sqlite:///{self.home / 'journal' / 'journal.db'}"

    @property
    def artifact_root(self) -> str:
        """Where new experiments keep their artifacts (a local folder under home unless named)."""
        return self.mlflow_artifact_root or (self.mlflow_dir / "artifacts").as_uri()


def load_settings(home: Path | None = None) -> Settings:
    """Read settings from the environment, with ``home`` (``--home``) taking precedence."""
    settings = Settings(home=home) if home is not None else Settings()
    settings.home = settings.home.expanduser().resolve()
    return settings


def configure_environment(settings: Settings) -> None:
    """Point third-party libraries at our home and silence their offline telemetry.

    Must run before Prefect, MLflow or Great Expectations are imported: they read these
    variables at import time. Values a user already exported win. Creates nothing: a
    read-only home stays usable by the commands that only read (see :func:`check_home`).

    When ``qt ui`` keeps a Prefect server up for this home and ``PREFECT_API_URL`` is not
    exported, flows run on that server (``PREFECT_API_URL`` is set to it): no ephemeral
    server to start, and the runs show in its UI. The check costs a file read and, when a
    server is recorded, one local HTTP request (:func:`infra.prefect_api.discover`).
    """
    if "PREFECT_API_URL" not in os.environ:
        from infra.prefect_api import discover  # stdlib only: cheap, imports no Prefect

        api_url = discover(settings)
        if api_url is not None:
            os.environ["PREFECT_API_URL"] = api_url
    defaults = {
        "PREFECT_HOME": str(settings.prefect_home),
        # a fresh ephemeral server migrates its SQLite DB first: ~15 s on 2 cores
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOGGING_LEVEL": "WARNING",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
        "GX_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
    }
    if settings.prefect_database_url is not None:  # the server `qt ui` or an ephemeral run starts
        defaults["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = settings.prefect_database_url
    for key, value in defaults.items():
        os.environ.setdefault(key, value)
    _exit_without_final_collection()


_exit_hook_registered = False


def _exit_without_final_collection() -> None:
    """At exit, spare the interpreter its last garbage collections (~1-2 s with Prefect + GX).

    Registered before any heavy import, the hook runs after every other ``atexit`` handler
    (they run last-registered first: Prefect's flushes, ``logging.shutdown``) and freezes
    the surviving objects, so the shutdown collections skip them; the process exits and
    the OS takes the memory back. Reference counting still frees what it can.
    """
    global _exit_hook_registered
    if not _exit_hook_registered:
        import atexit
        import gc

        atexit.register(gc.freeze)
        _exit_hook_registered = True


def check_home(settings: Settings, *, write: bool) -> None:
    """Fail early, naming the path, when the home cannot serve a command.

    Args:
        settings: the loaded settings.
        write: the command writes state (store, MLflow, Prefect's DB): the home and
            ``<home>/prefect`` are created and must be writable.

    Raises:
        BadConfigError: the home is a file, or (``write``) cannot be created or written.
    """
    from core.errors import BadConfigError

    home = settings.home
    for parent in (home, *home.parents):
        if parent.exists():
            if not parent.is_dir():
                raise BadConfigError(f"home {home} (--home / QT_HOME): {parent} is a file, not a folder")
            break
    if not write:
        return
    try:
        settings.prefect_home.mkdir(parents=True, exist_ok=True)
        probe = home / f".write-probe-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as err:
        raise BadConfigError(
            f"home {home} (--home / QT_HOME) is not writable: {err.strerror or err} "
            f"({err.filename or home}); this command stores state there, choose a writable folder"
        ) from err
