"""The ``qt`` application and what its commands share: options, running, errors.

Every command has ``--help``, ``--json`` and ``--home``.

Exit codes: 0 success, 1 runtime error, 2 bad input or failed validation.
Heavy libraries (Prefect, Great Expectations, pandas) are imported inside the commands so
``qt --help`` stays fast.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.markup import escape

from cli.output import emit_json, setup_console_logging, stderr, stdout
from core.errors import IngestError, QTError
from core.settings import Settings, check_home, configure_environment, load_settings

app = typer.Typer(
    name="qt",
    help="Quantum Trader: calibrated crypto trading signals from one reproducible DAG.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

HomeOpt = Annotated[
    Path | None,
    typer.Option(
        "--home",
        envvar="QT_HOME",
        help="State folder (store, MLflow, Prefect, journal).",
        show_default="./.qt",
    ),
]
JsonOpt = Annotated[
    bool, typer.Option("--json", help="Print one JSON document on stdout; logs go to stderr.")
]
SymbolsOpt = Annotated[
    str | None, typer.Option("--symbols", help="Comma-separated symbols, e.g. BTCUSDT,ETHUSDT.")
]
IntervalOpt = Annotated[str | None, typer.Option("--interval", help="Candle interval, e.g. 1h or 5m.")]
MarketOpt = Annotated[str, typer.Option("--market", help="spot or futures (USD-M).")]
StartOpt = Annotated[str | None, typer.Option("--start", help="First open time (UTC), e.g. 2024-01-01.")]
EndOpt = Annotated[str | None, typer.Option("--end", help="Last open time (UTC), inclusive.")]


def parse_symbols(value: str | None) -> list[str] | None:
    """``--symbols BTCUSDT,ETHUSDT`` as checked symbols (None: all stored)."""
    if not value:
        return None
    from core.candles import check_symbol

    return [check_symbol(s) for s in value.split(",") if s.strip()]


def run(
    home: Path | None,
    as_json: bool,
    command: Callable[[Settings], tuple[dict[str, Any], Any]],
    *,
    writes: bool = True,
) -> None:
    """Load settings, run a command, render its result, map errors to exit codes.

    ``writes=False`` marks a command that only reads the home: it then works on a
    read-only home. A command that writes checks the home is writable before any work.
    Ctrl-C (or SIGTERM) ends it within a second: exit 130 (143), with a JSON document of
    what was stored and what was not (see :mod:`cli.interrupt`).
    """
    from cli.interrupt import handle_interrupts

    setup_console_logging()
    try:
        settings = load(home)
        check_home(settings, write=writes)
        configure_environment(settings)
        with handle_interrupts(as_json):
            document, renderable = command(settings)
    except QTError as err:
        partial = err.report if isinstance(err, IngestError) else {}
        fail(as_json, str(err), err.exit_code, partial)
    except (ConnectionError, TimeoutError) as err:  # transient, not a path: a runtime error
        fail(as_json, f"{type(err).__name__}: {err}", 1, {})
    except OSError as err:  # a path the environment does not allow: the person must act
        where = f"{err.filename}: " if err.filename else ""
        fail(as_json, f"{where}{err.strerror or err}", 2, {})
    except Exception as err:  # a bug: still one JSON document, and the traceback on stderr
        damage = _database_damage(err)
        if damage:
            fail(as_json, damage, 2, {})
        stderr.print_exception()
        fail(as_json, f"unexpected {type(err).__name__}: {err}", 1, {})
    if as_json:
        emit_json(document)
    elif renderable is not None:
        stdout.print(renderable)


def _database_damage(err: BaseException) -> str | None:
    """A damaged SQLite database (MLflow's, Prefect's) anywhere in the chain: a person must act."""
    import sqlite3

    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, sqlite3.DatabaseError) and not isinstance(seen, sqlite3.OperationalError):
            return f"a database under the home is damaged ({seen}); restore it or move it aside"
        seen = seen.__cause__ or seen.__context__
    return None


def load(home: Path | None) -> Settings:
    """Settings from the environment and ``--home``; invalid ones are bad input (exit 2)."""
    from pydantic import ValidationError

    from core.errors import BadConfigError

    try:
        return load_settings(home)
    except ValidationError as err:
        raise BadConfigError(f"invalid settings (QT_* environment or .env): {err}") from err


def fail(as_json: bool, message: str, exit_code: int, partial: dict[str, Any]) -> NoReturn:
    """Report a failure (one JSON document under ``--json``, a message on stderr) and exit."""
    if as_json:
        emit_json({**partial, "error": message, "exit_code": exit_code})
    stderr.print(f"[bold red]error[/]: {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(exit_code)


def short_time(iso: str | None) -> str:
    """``2024-03-15T00:00:00Z`` → ``2024-03-15 00:00`` (fits an 80-column table)."""
    return iso[:16].replace("T", " ") if iso else "-"


ModelsOpt = Annotated[
    str | None,
    typer.Option("--models", help="Comma-separated base models: xgb,lgbm,tft,nhits,patchtst (default: all)."),
]
ProfileOpt = Annotated[str, typer.Option("--profile", help="fast (small nets, minutes on 2 cores) or full.")]
TrialsOpt = Annotated[
    int, typer.Option("--trials", min=0, help="Optuna trials per XGBoost/LightGBM fit (0: profile defaults).")
]


def as_version(version: str | None) -> str:
    """``v3``, or ``none`` when no version holds the alias."""
    return f"v{version}" if version else "none"


def fmt(value: Any, digits: int = 4) -> str:
    """A figure with ``digits`` decimals, ``-`` when missing."""
    return f"{value:.{digits}f}" if isinstance(value, int | float) else "-"
