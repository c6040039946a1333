"""``qt positions``, ``qt orders``, ``qt trades`` read the journal a paper session wrote; ``qt reconcile``."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pandas as pd
import pytest

from core.settings import load_settings
from infra.exchange import FakeExchange
from serving.brokers.factory import open_broker
from serving.brokers.paper import PaperBroker
from serving.journal import Journal
from tasks.fills import Bar
from tests.test_cli import qt
from tests.test_paper_broker import RULES, entry_at


def test_positions_orders_and_trades_as_json_and_tables(tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert json.loads(qt("trades", "--json", home=home).stdout) == {"trades": []}  # no journal: nothing made
    assert not (home / "journal").exists()
    journal = Journal.open(load_settings(home))
    paper = PaperBroker(
        journal, "futures", RULES, cash=Decimal("10000"), fee_bps=4, slippage_bps=0, leverage=2
    )
    bar = pd.Timestamp("2025-01-01 10:00", tz="UTC")
    paper.set_price("BTCUSDT", Decimal("100000"))
    paper.place_protected(entry_at(Decimal("100000"), bar))  # long 0.1, stop −1 %, targets +1/+2/+3 %
    paper.on_bar("BTCUSDT", bar + pd.Timedelta(hours=1), Bar(100000.0, 101200.0, 99500.0, 101000.0))  # tp1

    held = json.loads(qt("positions", "--json", home=home).stdout)["positions"]
    assert [(p["symbol"], p["side"], p["quantity"], p["stop"]) for p in held] == [
        ("BTCUSDT", "long", "0.07000", "99000.00")
    ]
    assert [t["price"] for t in held[0]["take_profits"]] == ["102000.00", "103000.00"]
    legs = [o["leg"] for o in json.loads(qt("orders", "--json", home=home).stdout)["orders"]]
    assert legs == ["stop", "tp2", "tp3"]

    paper.on_bar("BTCUSDT", bar + pd.Timedelta(hours=2), Bar(101000.0, 101100.0, 98000.0, 98500.0))  # stop
    done = json.loads(qt("trades", "--json", home=home).stdout)["trades"]
    assert len(done) == 1 and done[0]["quantity"] == "0.10000"
    # +1 % on 0.03, −1 % on 0.07: P&L 30 − 70 = −40 before fees; risk 1 % of 10,000 = 100
    assert Decimal(done[0]["realised_pnl"]) == Decimal("-40")
    assert -0.5 < done[0]["r_multiple"] < -0.4
    table = qt("trades", home=home)
    assert table.returncode == 0 and "BTCUSDT" in table.stdout and "Closed trades" in table.stdout
    assert json.loads(qt("positions", "--json", home=home).stdout) == {"positions": []}


@pytest.mark.parametrize(
    ("args", "env", "says"),
    [
        (["--broker", "binance", "--market", "futures"], {}, "QT_BINANCE_API_KEY"),
        (["--broker", "ftx"], {}, "--broker 'ftx'"),
        (["--market", "margin"], {}, "--market 'margin'"),
        ([], {"QT_JOURNAL_URL": "sqlite:////nonexistent-qt-dir/sub/journal.db"}, "cannot be opened"),
    ],
    ids=["binance-without-keys", "unknown-broker", "unknown-market", "journal-cannot-open"],
)
def test_reconcile_bad_input_is_exit_2_naming_the_field_and_writes_nothing(
    tmp_path: Path, args: list[str], env: dict[str, str], says: str
) -> None:
    home = tmp_path / "home"
    keyless = {"QT_BINANCE_API_KEY": "", "QT_BINANCE_API_SECRET": "", **env}
    result = qt("reconcile", *args, "--json", home=home, env=keyless)
    assert result.returncode == 2, result.stderr
    assert says in json.loads(result.stdout)["error"]
    assert not (home / "journal").exists()


@pytest.mark.parametrize("broker", ["paper", "binance"])
def test_reconcile_replaces_a_vanished_stop_through_the_cli(
    tmp_path: Path, btc_raw: pd.DataFrame, broker: str
) -> None:
    """A journalled futures position lost its stop; ``qt reconcile`` (local exchange) re-places it."""
    candles = btc_raw.iloc[:3600].reset_index(drop=True)
    at = int(candles["open_time"].iloc[3000])
    home = tmp_path / "home"
    with FakeExchange(now_ms=at) as exchange:
        exchange.add_candles("BTCUSDT", "1h", candles, market="futures")
        env = {
            "QT_BINANCE_FUTURES_URL": exchange.futures_url, "QT_BINANCE_SPOT_URL": exchange.spot_url,
            "QT_BINANCE_API_KEY": "test-key", "QT_BINANCE_API_SECRET": "test-secret", "QT_LEVERAGE": "2",
        }  # fmt: skip
        journal = Journal.open(load_settings(home))
        settings = load_settings(home).model_copy(update={"leverage": 2})
        venue = open_broker(settings, journal, broker, "futures", client=exchange.client(timeout_s=2.0))
        price = Decimal(str(candles["open"].iloc[3000]))
        if broker == "paper":
            venue.set_price("BTCUSDT", price)  # type: ignore[attr-defined]
        bar = pd.Timestamp(at, unit="ms", tz="UTC")
        orders = venue.place_protected(entry_at(price.quantize(Decimal("0.1")), bar, qty="0.010"))
        stop = next(o for o in orders if o.client_order_id.endswith("-stop"))
        if broker == "paper":
            venue.cancel_order("BTCUSDT", stop.client_order_id)
        else:
            exchange.vanish(stop.client_order_id)
        result = qt("reconcile", "--broker", broker, "--market", "futures", "--json", home=home, env=env)
        assert result.returncode == 0, result.stderr
        done = json.loads(result.stdout)
        assert done["missing_stops"] == ["BTCUSDT"] and len(done["replaced"]) >= 1
        assert done["unprotected_positions"] == 0 and venue.unprotected_positions() == 0  # type: ignore[attr-defined]
        assert [Decimal(p["quantity"]) for p in done["positions"]] == [Decimal("0.010")]
