"""``qt registry list|show|promote|rollback``: the champion / challenger aliases and their history."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.markup import escape

from cli.app import (
    HomeOpt,
    IntervalOpt,
    JsonOpt,
    MarketOpt,
    app,
    as_version,
    fmt,
    run,
)
from cli.output import stderr, table
from core.settings import Settings

registry_app = typer.Typer(
    help="Inspect and move the champion / challenger aliases of the registered model.",
    no_args_is_help=True,
)
app.add_typer(registry_app, name="registry")


def _history_table(events: list[dict[str, Any]]) -> Any:
    rows = [
        [e["seq"], e["time"][:16].replace("T", " "), e["action"], e["version"], e.get("previous") or "-",
         e["actor"], escape(str(e.get("reason", ""))[:90])]
        for e in events
    ]  # fmt: skip
    return table("History", ["#", "time (UTC)", "action", "version", "previous", "by", "reason"], rows)


@registry_app.command("list")
def registry_list(
    interval: IntervalOpt = None, market: MarketOpt = "spot", home: HomeOpt = None, as_json: JsonOpt = False
) -> None:
    """Every version (newest first) with its aliases and figures, and the promotion history."""

    def command(settings: Settings) -> tuple[dict[str, Any], Any]:
        from rich.console import Group

        from model_registry.registry import describe

        doc = describe(settings, interval or settings.default_interval, market=market)
        rows = [
            [v["version"], ",".join(v["aliases"]) or "-", v["created"][:16].replace("T", " "),
             fmt(v["metrics"].get("oof_auc")), fmt(v["metrics"].get("oof_log_loss"), 5),
             fmt(v["metrics"].get("oof_ece")), fmt(v["metrics"].get("backtest_sharpe"), 2)]
            for v in doc["versions"]
        ]  # fmt: skip
        champion, challenger = as_version(doc["champion"]), as_version(doc["challenger"])
        versions = table(
            f"{doc['name']}: champion {champion}, challenger {challenger}",
            ["version", "aliases", "created (UTC)", "OOF AUC", "OOF log loss", "ECE", "Sharpe"],
            rows,
        )
        return doc, Group(versions, _history_table(doc["history"]))

    run(home, as_json, command, writes=False)


@registry_app.command("show")
def registry_show(
    version: Annotated[str, typer.Argument(help="Version number, champion or challenger.")] = "champion",
    interval: IntervalOpt = None,
    market: MarketOpt = "spot",
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """One version: aliases, run, metrics, data range and hash, the gate's decision."""

    def command(settings: Settings) -> tuple[dict[str, Any], Any]:
        from core.errors import BadConfigError
        from model_registry.registry import ALIASES, alias_version, describe_version

        ival = interval or settings.default_interval
        number = alias_version(settings, ival, version, market=market) if version in ALIASES else version
        if number is None:
            raise BadConfigError(f"no {version} yet; run qt retrain")
        doc = describe_version(settings, ival, number, market=market)
        rows = [[k, fmt(v, 5)] for k, v in sorted(doc["metrics"].items())]
        rows += [[k, escape(str(v))] for k, v in sorted(doc["tags"].items())]
        title = f"version {doc['version']} ({', '.join(doc['aliases']) or 'no alias'}), run {doc['run_id']}"
        return doc, table(title, ["field", "value"], rows)

    run(home, as_json, command, writes=False)


@registry_app.command("promote")
def registry_promote(
    version: Annotated[str, typer.Argument(help="The version to make champion.")],
    reason: Annotated[str, typer.Option("--reason", help="Why (kept in the history).")] = "manual promotion",
    interval: IntervalOpt = None,
    market: MarketOpt = "spot",
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Make VERSION the champion (a person's decision; the gate is for machines)."""

    def command(settings: Settings) -> tuple[dict[str, Any], Any]:
        from model_registry.registry import promote

        ival = interval or settings.default_interval
        event = promote(settings, ival, version, "person", reason, market=market)
        stderr.print(f"champion: {as_version(event['previous'])} → v{event['version']}", highlight=False)
        return event, None

    run(home, as_json, command)


@registry_app.command("rollback")
def registry_rollback(
    reason: Annotated[str, typer.Option("--reason", help="Why (kept in the history).")] = "",
    interval: IntervalOpt = None,
    market: MarketOpt = "spot",
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Point champion back at the previous champion (repeat to walk further back)."""

    def command(settings: Settings) -> tuple[dict[str, Any], Any]:
        from model_registry.registry import rollback

        event = rollback(settings, interval or settings.default_interval, "person", reason, market=market)
        stderr.print(f"champion: v{event['previous']} → v{event['version']} (rolled back)", highlight=False)
        return event, None

    run(home, as_json, command)
