"""The trading strategy, pure and shared: the backtest and the live flow call the same code.

:mod:`policy` (P(up) → side), :mod:`sizing` (stop distance, quantity, Kelly), :mod:`risk`
(modes and vetoes), :mod:`exits` (take-profit legs, break-even, trailing), :mod:`engine`
(:class:`Strategy` composing them) and :mod:`simulate` (the backtest with exits, bar by bar).
"""
