"""The trade journal: migrations equal the models, exact money, one transaction per change, crash safety."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_mock_engine, func, make_url, select
from sqlalchemy.exc import IntegrityError, StatementError
from sqlalchemy.sql.ddl import ExecutableDDLElement

from core.errors import BadConfigError
from core.settings import Settings
from serving.journal import (
    Base,
    Decision,
    Event,
    Fill,
    Journal,
    Order,
    Position,
    ProtectiveOrder,
    Signal,
    Veto,
    mask_url,
)
from serving.journal.journal import MIGRATIONS_DIR
from serving.journal.types import ExactDecimal

REPO = Path(__file__).resolve().parents[1]
T0 = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)
EXACT_VALUES = [
    Decimal("0.000000012345678901"),
    Decimal("123456789.123456789"),
    Decimal("-98765.000000000000000001"),
    Decimal("99999999999999999999.999999999999999999"),
    Decimal("0"),
    Decimal("1E+3"),
]


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    with Journal(f"sqlite:///{tmp_path / 'journal.db'}") as opened:
        yield opened


def _order(cid: str = "qt-BTCUSDT-1-entry", **fields: object) -> Order:
    values: dict[str, object] = {
        "client_order_id": cid,
        "symbol": "BTCUSDT",
        "side": "buy",
        "type": "market",
        "quantity": Decimal("0.01"),
        "leg": "entry",
    }
    values.update(fields)
    return Order(**values)


def _count(journal: Journal, model: type[Base]) -> int:
    return journal.read(lambda s: s.scalar(select(func.count()).select_from(model)) or 0)


def test_migrated_journal_equals_the_models(journal: Journal) -> None:
    with journal.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []
        head = ScriptDirectory(str(MIGRATIONS_DIR)).get_current_head()
        assert context.get_current_revision() == head == "0002"
    assert set(Base.metadata.tables) == {
        "signals",
        "decisions",
        "vetoes",
        "orders",
        "fills",
        "positions",
        "protective_orders",
        "equity_snapshots",
        "events",
    }


def test_a_journal_of_an_older_revision_upgrades_keeping_its_rows(tmp_path: Path) -> None:
    """A journal written before funding existed (revision 0001) opens at head, positions intact."""
    import sqlite3

    from alembic import command
    from alembic.config import Config
    from sqlalchemy import create_engine

    path = tmp_path / "journal.db"
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    with create_engine(f"sqlite:///{path}").begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0001")
    with sqlite3.connect(path) as db:
        db.execute(
            "INSERT INTO positions (symbol, side, quantity, entry_price, opened_at, realised_pnl)"
            " VALUES ('BTCUSDT', 'long', '0.01', '60000.5', '2024-01-01 00:00:00.000000', '0')"
        )
    with Journal(f"sqlite:///{path}") as journal:
        [position] = journal.open_positions()
        assert (position.quantity, position.entry_price) == (Decimal("0.01"), Decimal("60000.5"))
        assert position.funding == 0 and position.funded_at is None


def test_reopening_is_idempotent_and_keeps_rows(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'journal.db'}"
    with Journal(url) as first, first.transaction() as session:
        session.add(_order())
    with Journal(url) as second:
        assert second.order_by_client_id("qt-BTCUSDT-1-entry") is not None


def test_open_from_settings_uses_the_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("QT_JOURNAL_URL", raising=False)
    settings = Settings(home=tmp_path / "home")
    assert settings.journal_uri == f"sqlite:///{tmp_path / 'home' / 'journal' / 'journal.db'}"
    with Journal.open(settings):
        assert (tmp_path / "home" / "journal" / "journal.db").is_file()
    monkeypatch.setenv("QT_JOURNAL_URL", f"sqlite:///{tmp_path / 'elsewhere.db'}")
    with Journal.open(Settings(home=tmp_path / "home")) as journal:
        assert journal.url.endswith("elsewhere.db")


def test_wal_mode_and_foreign_keys_are_on(journal: Journal, tmp_path: Path) -> None:
    with journal.engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    assert (tmp_path / "journal.db-wal").exists()
    with pytest.raises(IntegrityError), journal.transaction() as session:
        session.add(Fill(order_id=999, quantity=1, price=1, fee=0, fee_asset="USDT", time=T0))


def test_decimals_round_trip_exactly(journal: Journal) -> None:
    with journal.transaction() as session:
        for i, value in enumerate(EXACT_VALUES):
            order = _order(f"cid-{i}", quantity=value, price=value, stop_price=value)
            session.add(order)
            session.flush()
            session.add(
                Fill(order_id=order.id, quantity=value, price=value, fee=value, fee_asset="BNB", time=T0)
            )
    for i, value in enumerate(EXACT_VALUES):
        found = journal.order_by_client_id(f"cid-{i}")
        assert found is not None
        for stored in (found.quantity, found.price, found.stop_price, found.fills[0].fee):
            assert isinstance(stored, Decimal)
            assert stored == value
    # stored as text on SQLite: never a float on disk
    with journal.engine.connect() as connection:
        kinds = connection.exec_driver_sql("SELECT DISTINCT typeof(quantity) FROM orders").scalars().all()
    assert kinds == ["text"]


@pytest.mark.parametrize(
    ("value", "error"),
    [(0.1, TypeError), (Decimal("NaN"), ValueError), (Decimal("0.0000000000000000001"), ValueError)],
)
def test_inexact_money_is_refused(journal: Journal, value: object, error: type[Exception]) -> None:
    with pytest.raises(StatementError) as caught, journal.transaction() as session:
        session.add(_order(quantity=value))
    assert isinstance(caught.value.orig, error)
    assert _count(journal, Order) == 0


def test_times_are_aware_utc(journal: Journal) -> None:
    with journal.transaction() as session:
        session.add(
            Event(kind="reconcile", detail={"missing": []}, time=T0.astimezone(timezone(timedelta(hours=2))))
        )
    (event,) = journal.recent_events()
    assert event.time == T0
    assert event.time.tzinfo is UTC
    with pytest.raises(StatementError), journal.transaction() as session:
        session.add(Event(kind="reconcile", detail={}, time=datetime(2024, 6, 1)))


def test_client_order_id_is_unique(journal: Journal) -> None:
    with journal.transaction() as session:
        session.add(_order("dup"))
    with pytest.raises(IntegrityError), journal.transaction() as session:
        session.add(_order("dup", quantity=Decimal("5")))
    assert _count(journal, Order) == 1
    order = journal.order_by_client_id("dup")
    assert order is not None and order.quantity == Decimal("0.01")


def test_an_error_rolls_the_whole_change_back(journal: Journal) -> None:
    with pytest.raises(RuntimeError, match="venue said no"), journal.transaction() as session:
        order = _order()
        session.add(order)
        session.flush()
        session.add(
            Fill(order_id=order.id, quantity=Decimal(1), price=Decimal(2), fee=0, fee_asset="USDT", time=T0)
        )
        session.add(Position(symbol="BTCUSDT", side="long", quantity=Decimal(1), entry_price=Decimal(2)))
        raise RuntimeError("venue said no")
    for model in (Order, Fill, Position):
        assert _count(journal, model) == 0


def test_queries_the_brokers_need(journal: Journal) -> None:
    with journal.transaction() as session:
        signal_row = Signal(
            time=T0,
            symbol="BTCUSDT",
            interval="1h",
            model_version="7",
            p_up={"xgb": 0.61},
            features_hash="ab",
        )
        decision = Decision(symbol="BTCUSDT", bar_time=T0, action="enter_long", size=Decimal("0.5"))
        session.add_all([signal_row, decision])
        session.flush()
        decision.signal_id = signal_row.id
        session.add(Veto(decision_id=decision.id, rule="max_exposure", reason="at limit"))
        entry = _order("e", status="filled", decision_id=decision.id)
        stop = _order(
            "s", side="sell", type="stop_market", stop_price=Decimal("60000"), leg="stop", status="new"
        )
        other = _order("x", symbol="ETHUSDT", status="pending")
        session.add_all([entry, stop, other])
        session.flush()
        opened = Position(
            symbol="BTCUSDT", side="long", quantity=Decimal("0.01"), entry_price=Decimal("65000.5")
        )
        closed = Position(
            symbol="ETHUSDT",
            side="short",
            quantity=Decimal(1),
            entry_price=Decimal(3000),
            closed_at=T0 + timedelta(hours=3),
            realised_pnl=Decimal("-12.34"),
        )
        session.add_all([opened, closed])
        session.flush()
        session.add(
            ProtectiveOrder(
                position_id=opened.id, order_id=stop.id, kind="stop", price=Decimal(60000), quantity=1
            )
        )
        session.add_all(
            [Event(kind="replaced", detail={"n": i}, time=T0 + timedelta(minutes=i)) for i in range(3)]
        )
    assert [o.client_order_id for o in journal.open_orders()] == ["s", "x"]
    assert [o.client_order_id for o in journal.open_orders("BTCUSDT")] == ["s"]
    (position,) = journal.open_positions()
    assert position.symbol == "BTCUSDT" and journal.open_positions("ETHUSDT") == []
    (exit_leg,) = journal.protective_orders(position.id)
    assert exit_leg.order.client_order_id == "s" and exit_leg.order.stop_price == Decimal(60000)
    assert [e.detail["n"] for e in journal.recent_events(limit=2)] == [2, 1]
    assert [t.realised_pnl for t in journal.trades_since(T0)] == [Decimal("-12.34")]
    assert journal.trades_since(T0 + timedelta(days=1)) == []
    vetoes = journal.read(lambda s: s.get(Decision, decision.id).vetoes)  # type: ignore[union-attr]
    assert [v.rule for v in vetoes] == ["max_exposure"]


_CHILD = textwrap.dedent(
    """
    import sys, time
    from datetime import UTC, datetime
    from decimal import Decimal
    from serving.journal import Fill, Journal, Order, Position

    journal = Journal(sys.argv[1])
    with journal.transaction() as session:
        order = Order(client_order_id="crash", symbol="BTCUSDT", side="buy", type="market",
                      quantity=Decimal("0.5"), leg="entry", status="filled")
        session.add(order)
        session.flush()
        session.add(Fill(order_id=order.id, quantity=Decimal("0.5"), price=Decimal("65000.1"),
                         fee=Decimal("0.013"), fee_asset="USDT", time=datetime.now(UTC)))
        session.add(Position(symbol="BTCUSDT", side="long", quantity=Decimal("0.5"),
                             entry_price=Decimal("65000.1"), entry_order_id=order.id))
        session.flush()
        if sys.argv[2] == "before-commit":
            print("written", flush=True)
            time.sleep(60)
    print("committed", flush=True)
    time.sleep(60)
    """
)


@pytest.mark.parametrize(("moment", "rows"), [("before-commit", 0), ("after-commit", 1)])
def test_sigkill_leaves_none_or_all_of_a_transaction(tmp_path: Path, moment: str, rows: int) -> None:
    url = f"sqlite:///{tmp_path / 'journal.db'}"
    Journal(url).close()  # migrated up front: the child only writes
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, url, moment],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert child.stdout is not None
        line = child.stdout.readline().strip()
        assert line == ("written" if moment == "before-commit" else "committed")
        with Journal(url) as reader:  # WAL: a reader is not blocked by the child's open write
            assert (reader.order_by_client_id("crash") is None) == (rows == 0)
        os.kill(child.pid, signal.SIGKILL)
        assert child.wait(timeout=10) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    with Journal(url) as journal:
        assert [_count(journal, model) for model in (Order, Fill, Position)] == [rows] * 3
        if rows:
            (position,) = journal.open_positions()
            assert position.entry_price == Decimal("65000.1")
            order = journal.order_by_client_id("crash")
            assert order is not None and order.filled_quantity == Decimal("0.5")
        with journal.engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA integrity_check").scalar() == "ok"
            assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("not a url", "not a SQLAlchemy URL"),
        ("nosuchdb://host/db", "driver not installed"),
        ("mysql+nosuchdriver://trader:s3cret@db.example/qt", "driver not installed"),
        ("sqlite:////nonexistent-qt-dir/sub/journal.db", "cannot be opened"),
    ],
)
def test_a_url_that_cannot_be_opened_is_bad_config(url: str, says: str) -> None:
    with pytest.raises(BadConfigError, match=says) as caught:
        Journal(url)
    message = str(caught.value)
    assert "s3cret" not in message
    assert mask_url(url) in message


def test_a_file_that_is_not_a_database_is_bad_config(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    path.write_bytes(b"this is not SQLite, just some text that is long enough " * 40)
    with pytest.raises(BadConfigError, match=r"notes\.db.*cannot be opened"):
        Journal(f"sqlite:///{path}")


def test_passwords_are_masked() -> None:
    assert mask_url("postgresql+psycopg://trader:s3cret@db.example:5432/qt") == (
        "postgresql+psycopg://trader:***@db.example:5432/qt"
    )
    assert "s3cret" not in mask_url("weird scheme://trader:s3cret@host/x")


def test_the_schema_is_not_sqlite_only() -> None:
    statements: list[str] = []

    def record(sql: ExecutableDDLElement, *_: object, **__: object) -> None:
        statements.append(str(sql.compile(dialect=engine.dialect)))

    engine = create_mock_engine(make_url("postgresql://"), record)
    Base.metadata.create_all(engine, checkfirst=False)
    orders = next(s for s in statements if "CREATE TABLE orders" in s)
    assert "quantity NUMERIC(38, 18) NOT NULL" in orders
    assert "CONSTRAINT uq_orders_client_order_id UNIQUE (client_order_id)" in orders
    bound = ExactDecimal().process_bind_param(EXACT_VALUES[0], engine.dialect)
    assert bound == EXACT_VALUES[0] and isinstance(bound, Decimal)
