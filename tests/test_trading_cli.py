"""``qt positions``, ``qt orders``, ``qt trades`` read the journal a paper session wrote."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pandas as pd

from core.settings import load_settings
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
