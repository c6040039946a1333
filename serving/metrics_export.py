"""``/metrics``: the live side in Prometheus' text format (prometheus-client).

Read at scrape time from the journal and the store, so a restarted API reports the same
figures: tick latency (the decided ticks' durations), decisions, vetoes by rule, orders,
fills, open and unprotected positions, the risk mode, the champion's version, the age of
each symbol's newest candle; and the API's own request latency.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import pandas as pd
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from serving import supervisor
from serving.journal import analytics
from tasks.strategy.risk import Mode

if TYPE_CHECKING:
    from serving.api import Service


class _Journal(Collector):
    def __init__(self, service: Service) -> None:
        self.service = service

    def collect(self) -> Iterator[Metric]:
        service = self.service
        _, version, _ = service.champion()
        info = GaugeMetricFamily("qt_model_loaded", "1 when a champion is loaded", labels=["version"])
        info.add_metric([version or ""], 1.0 if version else 0.0)
        yield info
        fresh = GaugeMetricFamily("qt_data_age_seconds", "age of the newest closed candle", labels=["symbol"])
        now = pd.Timestamp.now(tz="UTC")
        for symbol, newest in service.newest(service.store.symbols(service.interval, service.market)).items():
            fresh.add_metric([symbol], float((now - newest - service.step).total_seconds()))
        yield fresh
        journal = service.journal()
        if journal is None:
            return
        seconds = analytics.tick_seconds(journal)
        ticks = GaugeMetricFamily("qt_tick_seconds", "duration of the newest decided tick")
        ticks.add_metric([], seconds[0] if seconds else 0.0)
        yield ticks
        p99 = GaugeMetricFamily("qt_tick_seconds_p99", "p99 duration of the newest 500 decided ticks")
        p99.add_metric([], float(pd.Series(seconds).quantile(0.99)) if seconds else 0.0)
        yield p99
        totals = analytics.counts(journal)
        for name in ("decisions", "orders", "fills"):
            family = CounterMetricFamily(f"qt_{name}", f"{name} journalled")
            family.add_metric([], float(totals[name]))
            yield family
        vetoes = CounterMetricFamily("qt_vetoes", "vetoes journalled, by rule", labels=["rule"])
        for rule, n in totals["vetoes"].items():
            vetoes.add_metric([rule], float(n))
        yield vetoes
        held = service.positions()
        open_ = GaugeMetricFamily("qt_open_positions", "open positions")
        open_.add_metric([], float(len(held)))
        yield open_
        naked = GaugeMetricFamily("qt_unprotected_positions", "open positions without a live stop")
        naked.add_metric([], float(sum(p["stop"] is None for p in held)))
        yield naked
        tick = analytics.last_tick(journal)
        mode = GaugeMetricFamily("qt_risk_mode", "1 for the last tick's risk mode", labels=["mode"])
        for m in Mode:
            mode.add_metric([m.value], 1.0 if tick and tick.get("mode") == m.value else 0.0)
        yield mode
        verdict = supervisor.latest(journal)
        defensive = GaugeMetricFamily(
            "qt_supervisor_defensive",
            "1 while the model supervisor's newest verdict is DEFENSIVE",
            labels=["version"],
        )
        if verdict is not None:
            defensive.add_metric(
                [str(verdict.get("model_version"))], float(verdict.get("mode") != Mode.NORMAL.value)
            )
        yield defensive


class Exporter:
    """The app's registry: the journal collector and the request-latency histogram."""

    def __init__(self, service: Service) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_Journal(service))
        self.latency = Histogram(
            "qt_api_request_seconds", "API request latency", ["endpoint"], registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
        )  # fmt: skip

    @contextmanager
    def timed(self, endpoint: str) -> Iterator[None]:
        """Observe the block's duration under ``endpoint``."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.latency.labels(endpoint).observe(time.perf_counter() - start)

    def render(self) -> tuple[bytes, str]:
        """(body, content type) of a scrape."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
