"""Training benchmark: wall time and peak memory of each model family per profile.

Each (profile, family) fit runs in a fresh process on the bundled sample (5 pairs, 1h):
train 2024-04-19 → 2025-03-31, validation April 2025, scored on May 2025, so the peak
RSS is that family's alone (imports included). ``--full-epochs N`` caps the full
profile's neural nets at N epochs (the table then shows seconds per epoch as well).
Prints a table and writes bench/results/train.json.

    .venv/bin/python bench/train.py                       # fast and full, every family
    .venv/bin/python bench/train.py --profiles fast --full-epochs 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FAMILIES = ("xgb", "lgbm", "tft", "nhits", "patchtst")
NEURAL = ("tft", "nhits", "patchtst")


def sample_matrix():  # type: ignore[no-untyped-def]
    """The bundled sample's feature matrix (ingested into a temporary home)."""
    from core.settings import load_settings
    from tasks.features.dataset import features_from_store
    from tasks.ingest import ingest_files
    from tasks.ingest.sample import sample_paths
    from tasks.store import CandleStore

    settings = load_settings(Path(tempfile.mkdtemp(prefix="qt-bench-train-")))
    for path in sample_paths(None, "1h"):
        ingest_files(path.name.split("-")[0], "1h", "spot", [path], "sample", settings)
    return features_from_store(CandleStore(settings.store_dir), None, "1h")


def one(profile: str, family: str, matrix_path: str, max_epochs: int | None) -> None:
    """Fit one family in this process; print its figures as JSON."""
    import pandas as pd

    from tasks.metrics import classification
    from tasks.models import ModelConfig, get_model

    m = pd.read_parquet(matrix_path)
    t = m["open_time"]
    train = m[t < pd.Timestamp("2025-03-31", tz="UTC")]
    valid = m[(t >= pd.Timestamp("2025-04-01", tz="UTC")) & (t < pd.Timestamp("2025-05-01", tz="UTC"))]
    test = m[(t >= pd.Timestamp("2025-05-02", tz="UTC")) & (t < pd.Timestamp("2025-06-01", tz="UTC"))]
    params = {family: {"max_epochs": max_epochs}} if max_epochs and family in NEURAL else {}
    config = ModelConfig(profile=profile, seed=42, params=params)  # type: ignore[arg-type]
    began = time.perf_counter()
    model = get_model(family, config).fit(train, valid)
    fit_s = time.perf_counter() - began
    began = time.perf_counter()
    p = model.predict_proba(test, context=valid)
    predict_s = time.perf_counter() - began
    scores = classification(test["target_up"].to_numpy(), p.to_numpy(), float(train["target_up"].mean()))
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    epochs = model.report.get("best_epoch")
    print(
        json.dumps(
            {
                "profile": profile,
                "family": family,
                "fit_s": fit_s,
                "predict_s": predict_s,
                "peak_rss_mb": peak_mb,
                "train_rows": len(train),
                "test_auc": scores["auc"],
                "test_log_loss": scores["log_loss"],
                "test_log_loss_climatology": scores["log_loss_climatology"],
                "epochs_cap": max_epochs if family in NEURAL and profile == "full" else None,
                "best_epoch": epochs,
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", default="fast,full")
    parser.add_argument("--models", default=",".join(FAMILIES))
    parser.add_argument("--full-epochs", type=int, default=None, help="cap full-profile neural epochs")
    parser.add_argument("--one", nargs=3, metavar=("PROFILE", "FAMILY", "MATRIX"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        one(args.one[0], args.one[1], args.one[2], args.full_epochs if args.one[0] == "full" else None)
        return

    from rich.console import Console
    from rich.table import Table

    matrix_path = Path(tempfile.mkdtemp(prefix="qt-bench-")) / "matrix.parquet"
    sample_matrix().to_parquet(matrix_path)
    rows = []
    for profile in args.profiles.split(","):
        for family in args.models.split(","):
            cmd = [sys.executable, __file__, "--one", profile, family, str(matrix_path)]
            if args.full_epochs:
                cmd += ["--full-epochs", str(args.full_epochs)]
            began = time.perf_counter()
            done = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise SystemExit(f"{profile}/{family} failed:\n{done.stderr[-3000:]}")
            row = json.loads(done.stdout.strip().splitlines()[-1])
            row["process_s"] = time.perf_counter() - began
            rows.append(row)
            print(f"{profile:5} {family:9} fit {row['fit_s']:7.1f} s", file=sys.stderr, flush=True)

    table = Table(title=f"Model training on the bundled sample ({os.cpu_count()} cores)")
    for col in ("profile", "family", "fit s", "predict s", "peak RSS MB", "test AUC", "log loss", "clim"):
        table.add_column(col, justify="right")
    for r in rows:
        capped = f" (≤{r['epochs_cap']} ep)" if r["epochs_cap"] else ""
        table.add_row(
            r["profile"],
            r["family"] + capped,
            f"{r['fit_s']:.1f}",
            f"{r['predict_s']:.2f}",
            f"{r['peak_rss_mb']:.0f}",
            f"{r['test_auc']:.4f}",
            f"{r['test_log_loss']:.5f}",
            f"{r['test_log_loss_climatology']:.5f}",
        )
    Console().print(table)
    for profile in args.profiles.split(","):
        total = sum(r["fit_s"] for r in rows if r["profile"] == profile)
        print(f"{profile}: all families fit in {total:.0f} s", file=sys.stderr)
    out = ROOT / "bench" / "results" / "train.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    machine = {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}
    out.write_text(json.dumps({"machine": machine, "runs": rows}, indent=2))
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
