"""Shared domain basics of Quantum Trader: settings, errors, the candle schema, time helpers.

Everything in the project may import this package; it imports nothing else of ours at
import time. One lazy exception: ``configure_environment`` asks ``infra.prefect_api``
(standard library only) whether ``qt ui`` keeps a Prefect server up for the home.
"""
