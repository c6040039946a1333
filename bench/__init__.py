"""Benchmarks: each prints a table and writes its figures to ``bench/results/<name>.json``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def write_results(name: str, document: Any) -> Path:
    """Write a benchmark's figures to ``bench/results/<name>.json`` and say where."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{name}.json"
    out.write_text(json.dumps(document, indent=2) + "\n")
    print(f"wrote {out}")
    return out
