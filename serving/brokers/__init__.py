"""Brokers: one protocol (:mod:`serving.brokers.base`), one module per venue (paper, Binance)."""
