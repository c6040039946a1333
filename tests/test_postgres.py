"""The stack on PostgreSQL, not only SQLite: MLflow's store, the trade journal, Prefect's server.

One throwaway cluster per module (:mod:`tests.postgres`). A retrain tracks and registers
into its ``mlflow`` database, live ticks of that champion journal into its ``journal``
database, and ``qt ui`` runs Prefect's server on its ``prefect`` database, each configured
only through the ``QT_`` settings a user would export.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from sqlalchemy import create_engine, func, select

from core.settings import Settings, configure_environment, load_settings
from model_registry.registry import model_name, set_alias
from serving.journal import Journal, report
from serving.journal import models as db
from serving.live import LiveConfig
from serving.live_loop import LiveLoop, Summary
from tests.conftest import copy_sample, start_qt_ui
from tests.postgres import PostgresServer, postgres_server
from tests.test_cli import QT, ROOT
from tests.test_deploy import _read_json
from tests.test_live import EAGER, UNTIL
from tests.test_models import TINY

SYMBOLS = ("BTCUSDT", "ETHUSDT")
HOUR = pd.Timedelta(hours=1)


@pytest.fixture(scope="module")
def pg() -> Iterator[PostgresServer]:
    """A PostgreSQL of this module's own: the mlflow, journal and prefect databases, and a scratch one."""
    with postgres_server(("mlflow", "journal", "prefect", "scratch", "mlflow_ui")) as server:
        yield server


@pytest.fixture(scope="module")
def pg_retrain(
    pg: PostgresServer, tmp_path_factory: pytest.TempPathFactory, prefect_harness: None
) -> Iterator[tuple[Settings, dict[str, Any]]]:
    """A fresh home whose MLflow store and journal are Postgres (QT_MLFLOW_TRACKING_URI, QT_JOURNAL_URL)."""
    import mlflow

    from flows.training import training_flow

    home = tmp_path_factory.mktemp("pg-training") / "home"
    tracking, registry = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    with pytest.MonkeyPatch.context() as env:
        env.setenv("QT_MLFLOW_TRACKING_URI", pg.url("mlflow"))
        env.setenv("QT_JOURNAL_URL", pg.url("journal"))
        doc = training_flow(
            symbols=list(SYMBOLS), models=["xgb", "lgbm"], model_params=TINY, test_days=60, home=str(home)
        )
        settings = load_settings(home)  # the settings the flow ran with
    yield settings, doc
    mlflow.set_tracking_uri(tracking)  # not a server about to stop, for the modules after this one
    mlflow.set_registry_uri(registry)


@pytest.mark.slow
def test_a_retrain_tracks_and_registers_in_postgres(
    pg: PostgresServer, pg_retrain: tuple[Settings, dict[str, Any]]
) -> None:
    import mlflow

    settings, doc = pg_retrain
    assert settings.tracking_uri == pg.url("mlflow")
    assert list(settings.home.rglob("*.db")) == []  # no SQLite MLflow store (nor journal) beside it

    client = mlflow.MlflowClient(tracking_uri=pg.url("mlflow"), registry_uri=pg.url("mlflow"))
    parent = client.get_run(doc["run_id"])
    assert parent.info.status == "FINISHED" and parent.data.tags["prefect.flow_run_id"] == doc["flow_run_id"]
    assert {"oof_auc", "oof_log_loss", "backtest_sharpe", "shadow_rows"} <= set(parent.data.metrics)
    assert parent.info.artifact_uri.startswith(settings.home.as_uri())  # artifacts stay files under home
    assert {"evaluation.json", "promotion.json"} <= {a.path for a in client.list_artifacts(doc["run_id"])}
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{doc['run_id']}'"
    )
    assert {r.data.tags["family"] for r in children} == {"xgb", "lgbm", "stacker"}
    name = model_name("1h")
    version = client.get_model_version(name, doc["challenger_version"])
    assert version.run_id == doc["run_id"]
    assert version.aliases == (["champion"] if doc["promoted"] else ["challenger"])

    # the same rows read straight from Postgres, past MLflow's client
    runs = dict(pg.query("mlflow", "SELECT run_uuid, status FROM runs"))
    assert runs == {r.info.run_id: "FINISHED" for r in [parent, *children]}
    assert pg.query("mlflow", "SELECT name, version, run_id FROM model_versions") == [
        (name, int(doc["challenger_version"]), doc["run_id"])
    ]
    aliases = pg.query("mlflow", "SELECT alias, version FROM registered_model_aliases WHERE name = %s", name)
    assert aliases == [(version.aliases[0], int(doc["challenger_version"]))]


def test_money_reads_back_from_postgres_as_from_sqlite_and_sums_stay_storable(
    pg: PostgresServer, tmp_path: Path
) -> None:
    """Postgres pads NUMERIC(38, 18) values to 18 decimals; the journal reads them back unpadded.

    Padded, a price difference times a quantity read back (a closing trade's P&L) had 28
    significant digits, and the journal refused to store it.
    """
    from tests.test_journal import EXACT_VALUES

    values = [*EXACT_VALUES, Decimal("65000.12"), Decimal("0.00153"), Decimal("-2.5")]
    read: dict[str, list[str]] = {}
    for url in (pg.url("scratch"), f"sqlite:///{tmp_path / 'journal.db'}"):
        with Journal(url) as journal:
            with journal.transaction() as session:
                for i, value in enumerate(values):
                    session.add(db.Position(symbol=f"S{i}", side="long", quantity=value, entry_price=value))
            with journal.transaction() as session:  # read back, computed on, written again
                position = session.scalars(select(db.Position).where(db.Position.symbol == "S6")).one()
                other = session.scalars(select(db.Position).where(db.Position.symbol == "S7")).one()
                position.realised_pnl += (Decimal("65100.5") - position.entry_price) * other.quantity
            rows = journal.read(lambda s: list(s.scalars(select(db.Position).order_by(db.Position.id))))
            assert [p.quantity for p in rows] == values
            assert rows[6].realised_pnl == Decimal("0.1535814")
            read[url.split(":")[0]] = [str(v) for p in rows for v in (p.quantity, p.realised_pnl)]
    assert read["postgresql+psycopg"] == read["sqlite"]


@pytest.mark.slow
def test_live_ticks_journal_into_postgres_as_they_do_into_sqlite(
    pg: PostgresServer, pg_retrain: tuple[Settings, dict[str, Any]], tmp_path: Path
) -> None:
    """The retrain's champion, loaded from the Postgres registry, trades 8 bars on the paper broker.

    Its journal is Postgres (QT_JOURNAL_URL); the same ticks journalled into SQLite give the
    same trades, to the digit (Postgres pads ``NUMERIC(38, 18)`` values, which the journal strips
    on reading: else the first closing trade's P&L had 26 decimals and was refused).
    """
    settings, doc = pg_retrain
    champion = doc["challenger_version"]
    if not doc["promoted"]:  # the gate may refuse the tiny ensemble: a person makes it the champion
        set_alias(settings, "1h", "champion", champion)
    summary = _tick(settings, tmp_path / "pg", UNTIL, bars=8)
    assert summary.ticks == 8 and summary.model_version == champion and summary.errors == []
    assert summary.orders > 0 and summary.unprotected_positions == 0
    assert list((tmp_path / "pg").rglob("*.db")) == []  # no SQLite journal beside it

    # what the journal wrote, read with SQLAlchemy straight from Postgres
    engine = create_engine(pg.url("journal"))
    try:
        with engine.connect() as raw:
            head = raw.exec_driver_sql("SELECT version_num FROM alembic_version").scalar_one()
            kinds = {k for (k,) in raw.exec_driver_sql("SELECT DISTINCT kind FROM events")}
            signals = raw.exec_driver_sql("SELECT symbol, model_version FROM signals").all()
            orders = raw.exec_driver_sql("SELECT id, client_order_id FROM orders").all()
            fills = raw.exec_driver_sql("SELECT order_id, quantity, price, fee FROM fills").all()
            closed = raw.exec_driver_sql(
                "SELECT symbol, realised_pnl FROM positions WHERE closed_at IS NOT NULL"
            ).all()
            numeric = raw.exec_driver_sql(
                "SELECT data_type, numeric_precision, numeric_scale FROM information_schema.columns "
                "WHERE table_name = 'fills' AND column_name = 'price'"
            ).one()
            snapshots = raw.execute(
                select(func.count()).select_from(db.EquitySnapshot.__table__)
            ).scalar_one()
    finally:
        engine.dispose()
    assert head == "0002" and tuple(numeric) == ("numeric", 38, 18)  # money is exact, not float
    assert {"paper_account", "tick"} <= kinds and snapshots == 8
    assert {s for s, v in signals if v == champion} == set(SYMBOLS)  # the challenger shadows beside it
    assert {v for _, v in signals} <= {champion, f"{champion} (challenger)"}
    assert len(orders) >= summary.orders and len({o[1] for o in orders}) == len(orders)
    assert fills and {f[0] for f in fills} <= {o[0] for o in orders}
    assert all(isinstance(v, Decimal) and v > 0 for f in fills for v in f[1:3])
    assert closed and all(isinstance(pnl, Decimal) and pnl != 0 for _, pnl in closed)

    # the journal reads the same rows back, and the same ticks on SQLite journal the same trades
    with Journal.open(settings) as journal:
        assert journal.url == pg.url("journal")
        journalled = journal.read(
            lambda s: [(f.order_id, f.quantity, f.price, f.fee) for f in s.query(db.Fill)]
        )
        assert sorted(journalled) == sorted(tuple(f) for f in fills)
        on_postgres = report.trades(journal)
    on_sqlite = _tick(settings.model_copy(update={"journal_url": None}), tmp_path / "sqlite", UNTIL, bars=8)
    assert on_sqlite.orders == summary.orders and on_sqlite.errors == []
    with Journal.open(
        settings.model_copy(update={"home": tmp_path / "sqlite", "journal_url": None})
    ) as journal:
        assert journal.url.startswith("sqlite:///")
        on_sqlite_trades = report.trades(journal)
    assert _exact(on_sqlite_trades) == _exact(on_postgres) and len(on_postgres) == len(closed)


#: Fields of :func:`serving.journal.report.trades` that are decimals (as strings).
DECIMALS = ("quantity", "entry_price", "exit_price", "realised_pnl", "fees", "funding", "net_pnl")


def _exact(trades: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Trades with their decimal strings as Decimals: SQLite keeps a value's trailing zeros, Postgres not."""
    return [{k: Decimal(v) if k in DECIMALS and v is not None else v for k, v in t.items()} for t in trades]


def _tick(settings: Settings, home: Path, start: pd.Timestamp, bars: int) -> Summary:
    """``bars`` bars of ``settings``' candles from ``start`` through the live loop, on the paper broker.

    Like :func:`serving.replay.replay` (a fresh ``home`` holds the candles before them, the
    local exchange serves each as it closes), but journalling into ``settings``' journal:
    a replay always journals into its replay home's SQLite, whatever ``QT_JOURNAL_URL`` says.
    """
    from infra.exchange import FakeExchange
    from serving.brokers.factory import open_broker
    from serving.replay import price_of
    from tasks.ingest.binance import BinanceKlineSource
    from tasks.store import CandleStore

    frames = {s: CandleStore(settings.store_dir).read(s, "1h", "spot") for s in SYMBOLS}
    timeline = sorted({t for frame in frames.values() for t in frame.index if t >= start})[:bars]
    live = settings.model_copy(update={"home": home})
    history = CandleStore(live.store_dir)
    for symbol, frame in frames.items():
        history.upsert(symbol, "1h", "spot", frame[frame.index < timeline[0]])
    taker, maker = settings.fees_bps("spot")
    exchange = FakeExchange(
        now_ms=_ms(timeline[0]), taker_bps=taker, maker_bps=maker, quote_balance=settings.paper_cash
    )
    for symbol, frame in frames.items():
        exchange.add_candles(symbol, "1h", frame)
    config = LiveConfig(SYMBOLS, "1h", "spot", EAGER, model_policy=False)
    summary = Summary()
    with exchange, Journal.open(live) as journal:
        client = exchange.client(timeout_s=5.0)
        broker = open_broker(live, journal, "paper", "spot", client=client)
        source = BinanceKlineSource(live, "spot", client=client)
        loop = LiveLoop(live, config, broker, journal, source, price_of(client, "spot"), settings.paper_cash)
        for bar in timeline:
            exchange.now_ms = _ms(bar + HOUR)  # the bar has closed
            started = time.perf_counter()
            summary.add(loop.tick(), time.perf_counter() - started)
    return summary


def _ms(when: pd.Timestamp) -> int:
    return int(when.value // 1_000_000)


def test_qt_prefect_database_url_reaches_prefect_unless_exported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = "postgresql+asyncpg://qt@127.0.0.1:5999/prefect"
    monkeypatch.setenv("QT_PREFECT_DATABASE_URL", url)
    monkeypatch.setenv("PREFECT_SERVER_DATABASE_CONNECTION_URL", "sqlite+aiosqlite:///mine.db")
    configure_environment(load_settings(tmp_path / "home"))
    assert os.environ["PREFECT_SERVER_DATABASE_CONNECTION_URL"] == "sqlite+aiosqlite:///mine.db"  # theirs
    monkeypatch.delenv("PREFECT_SERVER_DATABASE_CONNECTION_URL")
    configure_environment(load_settings(tmp_path / "home"))
    assert os.environ["PREFECT_SERVER_DATABASE_CONNECTION_URL"] == url
    monkeypatch.delenv("QT_PREFECT_DATABASE_URL")
    monkeypatch.delenv("PREFECT_SERVER_DATABASE_CONNECTION_URL")
    configure_environment(load_settings(tmp_path / "home"))  # unset: Prefect's SQLite under the home
    assert "PREFECT_SERVER_DATABASE_CONNECTION_URL" not in os.environ


@pytest.mark.slow
def test_qt_ui_runs_prefect_on_postgres_and_a_flow_run_lands_there(
    pg: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``QT_PREFECT_DATABASE_URL=… qt ui``, then ``qt ingest``: its flow run is a row in Postgres.

    With ``QT_MLFLOW_TRACKING_URI`` a Postgres store, ``qt ui`` serves an MLflow UI over it
    (and prints that UI's address, never the database URL with its credentials).
    """
    home = tmp_path / "home"
    files = copy_sample(tmp_path / "dumps", ["BTCUSDT"])
    monkeypatch.setenv("QT_PREFECT_DATABASE_URL", pg.url("prefect", "asyncpg"))
    monkeypatch.setenv("QT_MLFLOW_TRACKING_URI", pg.url("mlflow_ui"))
    monkeypatch.setenv("PREFECT_SERVER_DATABASE_CONNECTION_URL", "")  # restored after the test
    monkeypatch.delenv("PREFECT_SERVER_DATABASE_CONNECTION_URL")
    ui, _, _ = start_qt_ui(home)  # its environment: ours, less PREFECT_API_URL / PREFECT_HOME
    env = {**os.environ, "QT_HOME": str(home)}
    env.pop("PREFECT_API_URL", None)
    env.pop("PREFECT_HOME", None)
    try:
        assert ui.stdout is not None
        printed = _read_json(ui.stdout)  # printed once both servers answer
        api, mlflow_ui = printed["prefect_api"], printed["mlflow_ui"]
        assert mlflow_ui.startswith("http://127.0.0.1:") and "postgresql" not in json.dumps(printed)
        with urllib.request.urlopen(f"{mlflow_ui}/health", timeout=10) as reply:
            assert reply.status == 200
        done = subprocess.run(
            [*QT, "ingest", "--source", "files", "--path", str(files[0]), "--json"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        assert json.loads(done.stdout)["symbols"]["BTCUSDT"]["rows_added"] == 10_968
        assert "tip:" not in done.stderr  # it ran on qt ui's server, not an ephemeral one
        assert api.startswith("http://127.0.0.1:")
    finally:
        ui.send_signal(signal.SIGTERM)
        code = ui.wait(timeout=60)
    assert code == 0
    runs = pg.query("prefect", "SELECT state_type, parameters->>'home' FROM flow_run")
    assert runs == [("COMPLETED", str(home.resolve()))]
    assert list((home / "prefect").glob("*.db")) == []  # Prefect kept nothing in SQLite
