"""The bundled real sample: Binance spot 1h candles cut from ``shared/data/binance``.

Five liquid USDT pairs, the last ~15 months before 2025-06-15, stored as data-dump ZIPs
inside the package so a fresh clone runs everything offline.
"""

from __future__ import annotations

from pathlib import Path

from core.errors import BadConfigError

SAMPLE_DIR = Path(__file__).parent / "sample_data"
SAMPLE_INTERVAL = "1h"


def sample_symbols() -> list[str]:
    """Symbols in the bundled sample."""
    return sorted(p.name.split("-")[0] for p in SAMPLE_DIR.glob(f"*-{SAMPLE_INTERVAL}.zip"))


def sample_paths(symbols: list[str] | None, interval: str | None) -> list[Path]:
    """Files of the bundled sample for the chosen symbols (default: all).

    Raises:
        BadConfigError: a symbol or interval the sample does not hold (listing what it has).
    """
    if interval not in (None, SAMPLE_INTERVAL):
        raise BadConfigError(f"the bundled sample has {SAMPLE_INTERVAL} candles only, not {interval}")
    available = sample_symbols()
    chosen = symbols or available
    missing = [s for s in chosen if s not in available]
    if missing:
        raise BadConfigError(f"not in the bundled sample: {missing}; it holds {available}")
    return [SAMPLE_DIR / f"{s}-{SAMPLE_INTERVAL}.zip" for s in chosen]
