"""``qt demo``: the main job on the bundled sample, end to end (what ``make run`` runs)."""

from __future__ import annotations

from typing import Any

from rich.markup import escape

from cli.app import HomeOpt, JsonOpt, ModelsOpt, app, fmt, run
from cli.output import progress_bars, stderr, table
from core.settings import Settings


@app.command()
def demo(models: ModelsOpt = None, home: HomeOpt = None, as_json: JsonOpt = False) -> None:
    """The main job on the bundled sample: ingest (validated) → retrain (fast) → gate → a replay.

    The whole training flow of qt retrain on the five bundled pairs, ending in a recorded
    promotion decision, then the champion traded by the live loop (paper broker, local
    exchange) over the newest 12 stored hours, journalled under <home>/replays/. Those
    hours are inside the training window: the replay shows the loop, not performance.
    """

    def command(settings: Settings) -> tuple[dict[str, Any], Any]:
        from flows.training import training_flow
        from infra.prefect_api import note_ephemeral
        from tasks.models import parse_models

        names = parse_models(models)
        note_ephemeral(settings)
        with progress_bars(enabled=not as_json and stderr.is_terminal):
            doc = training_flow(source="sample", models=names, home=str(settings.home))
        verdict = "promoted to champion" if doc["promoted"] else "not promoted"
        stderr.print(
            f"challenger v{doc['challenger_version']} {verdict}: {escape(doc['reason'])}\n"
            f"MLflow run {doc['run_id']}. Next: qt ui (Prefect + MLflow UIs), qt registry list, "
            "qt evaluate --model champion",
            highlight=False,
            soft_wrap=True,
        )
        m = doc["metrics"]
        rows = [[name, fmt(v["auc"]), fmt(v["log_loss"], 5)] for name, v in m["per_model"].items()]
        rows.append(["stacker", fmt(m["oof_auc"]), fmt(m["oof_log_loss"], 5)])
        rows.append(["climatology", "", fmt(m["oof_log_loss_climatology"], 5)])
        stderr.print(
            f"stacker net Sharpe {m['backtest_sharpe']:.2f} (buy-and-hold {m['buy_and_hold_sharpe']:.2f}, "
            f"momentum fallback {m['momentum_fallback_sharpe']:.2f}) on the same rows",
            highlight=False,
        )
        doc = {**doc, "home": str(settings.home), "replay": _demo_replay(settings, not as_json)}
        return doc, table("Walk-forward, out of fold", ["model", "AUC", "log loss"], rows)

    run(home, as_json, command)


def _demo_replay(settings: Settings, show: bool) -> dict[str, Any] | None:
    """The champion through the live loop over the newest 12 stored hours.

    When the gate refused the challenger and there is no champion, the challenger is
    replayed instead, labelled "not promoted — demo only" (the ``champion`` alias does not
    move); None when the registry holds neither.
    """
    from dataclasses import replace

    from cli.live import _after_store, _config, _document, _status
    from model_registry.registry import alias_version
    from serving.replay import replay

    config = _config(settings, None, "spot", None)
    label = "champion"
    if alias_version(settings, settings.default_interval, "champion") is None:
        if alias_version(settings, settings.default_interval, "challenger") is None:
            stderr.print("no champion and no challenger: no replay", highlight=False)
            return None
        config, label = replace(config, model_alias="challenger"), "challenger (not promoted — demo only)"
    start = _after_store(settings, config) - 12 * config.step
    summary, target = replay(settings, config, "paper", start, None, 0.0, None, _status(not show))
    document = _document(summary, target, "paper", "spot", replay=str(target.home))
    document["model_alias"], document["label"] = config.model_alias, label
    stderr.print(
        f"replayed {document['ticks']} hours with {label} v{document['model_version']}: "
        f"{document['orders']} orders, {document['open_positions']} open, "
        f"{document['unprotected_positions']} unprotected; journal in {target.home}\n"
        f"dashboard and API over this replay: qt serve --replay latest --home {settings.home} "
        "(then http://127.0.0.1:8000/)",
        highlight=False,
    )
    return document
