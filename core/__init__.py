"""Shared domain basics of Quantum Trader: settings, errors, the candle schema, time helpers.

Everything in the project may import this package; it imports nothing else of ours.
"""
