"""The general guard: every command against a table of bad inputs and faults.

Each case runs ``qt`` as a user does (a subprocess, usually with ``--json``) on its own copy
of a small home (BTC and ETH 1h from the bundled sample, a registered model) and asserts:

* the documented exit code (0, 2 for bad input, 130 for Ctrl-C);
* no Python traceback on stderr;
* a message naming the offending path / option / field;
* under ``--json``, one valid JSON document on stdout (with ``error`` and ``exit_code`` when
  it failed);
* the candle store's content hash unchanged, unless the command was meant to change it.

Flow commands report to one Prefect server started for the module (an ephemeral server per
command would cost ~15 s each); the Ctrl-C cases use the ephemeral server on purpose, since
that is the one the signal used to kill under the flow. With ``QT_ROBUSTNESS_TABLE=FILE``
the suite writes the reliability table of docs/reliability.md there.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from core.settings import load_settings
from tasks.ingest.sample import SAMPLE_DIR
from tests.conftest import free_port
from tests.test_cli import QT, ROOT

FIXTURES = Path(__file__).parent / "fixtures"
RESULTS: list[dict[str, Any]] = []
pytestmark = pytest.mark.slow


def sample_lines(symbol: str) -> list[str]:
    """The bundled sample's CSV lines of one pair (no header)."""
    with zipfile.ZipFile(SAMPLE_DIR / f"{symbol}-1h.zip") as archive:
        return archive.read(archive.namelist()[0]).decode().splitlines()


def store_hash(home: Path) -> str:
    """Content hash of the candle store (names and bytes; lock files left out)."""
    digest = hashlib.sha256()
    store = home / "store"
    if store.exists():
        for path in sorted(store.rglob("*")):
            if path.is_file() and not path.name.endswith(".lock"):
                digest.update(str(path.relative_to(store)).encode())
                digest.update(path.read_bytes())
    return digest.hexdigest()


# -- the shared state: a Prefect server and a small home with a registered model ----------
@pytest.fixture(scope="module")
def prefect_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One Prefect server for every flow command of this module."""
    home = tmp_path_factory.mktemp("robust-prefect")
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_API_HOST": "127.0.0.1",
        "PREFECT_SERVER_API_PORT": str(port := free_port()),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    env.pop("PREFECT_API_URL", None)
    tool = Path(QT[0]).parent / "prefect"
    log = (home / "server.log").open("wb")
    proc = subprocess.Popen([str(tool), "server", "start"], env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                import urllib.request

                with urllib.request.urlopen(f"{url}/health", timeout=2) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail(f"the Prefect server did not start; see {home / 'server.log'}")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def base_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """BTC and ETH 1h from the sample, and an XGBoost ensemble registered twice (v1 champion)."""
    from model_registry.ensemble import fit_ensemble
    from model_registry.registry import register, set_alias
    from tasks.backtest import Costs
    from tasks.features.dataset import features_from_store
    from tasks.ingest import ingest_files
    from tasks.ingest.sample import sample_paths
    from tasks.models import ModelConfig
    from tasks.store import CandleStore
    from tasks.walkforward import WalkForward, walk_forward

    settings = load_settings(tmp_path_factory.mktemp("robust") / "home")
    for path in sample_paths(["BTCUSDT", "ETHUSDT"], "1h"):
        ingest_files(path.name.split("-")[0], "1h", "spot", [path], "sample", settings)
    until = pd.Timestamp("2025-05-15", tz="UTC")
    matrix = features_from_store(CandleStore(settings.store_dir), None, "1h")
    matrix = matrix[matrix["open_time"] < until]
    plan = WalkForward(until - pd.Timedelta(days=40), until, folds=2)
    config = ModelConfig(seed=1, device="cpu")
    result = walk_forward(matrix, ["xgb"], config, plan)
    assert result.stacker is not None
    ensemble = fit_ensemble(matrix, ["xgb"], config, plan, result.stacker, "1h", Costs())
    example = matrix[matrix["symbol"] == "BTCUSDT"].tail(ensemble.history_rows + 1)
    set_alias(settings, "1h", "champion", register(settings, ensemble, example))
    register(settings, ensemble, example)  # v2: the broken-artifacts case removes its files
    return settings.home


# -- case set-ups ------------------------------------------------------------------------
def _btc_file(home: Path) -> Path:
    return home / "store" / "spot" / "1h" / "BTCUSDT.parquet"


def _write_lines(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def _edit_sample(row: int, column: int, value: Callable[[str], str]) -> Callable[[Path, Path], None]:
    """Write the sample's BTC CSV to ``<tmp>/in/BTCUSDT-1h.csv`` with one field changed."""

    def setup(home: Path, tmp: Path) -> None:
        lines = sample_lines("BTCUSDT")
        fields = lines[row].split(",")
        fields[column] = value(fields[column])
        lines[row] = ",".join(fields)
        _write_lines(tmp / "in" / "BTCUSDT-1h.csv", lines)

    return setup


def multi_interval_one_bad(home: Path, tmp: Path) -> None:
    """A bad 1h file (text in ``close`` on row 500) beside a good 5m file of the same symbol."""
    _edit_sample(499, 4, lambda _: "abc")(home, tmp)
    shutil.copy(FIXTURES / "BTCUSDT-5m.csv", tmp / "in" / "BTCUSDT-5m.csv")


def truncated_parquet(home: Path, tmp: Path) -> None:
    path = _btc_file(home)
    path.write_bytes(path.read_bytes()[:5000])


def folder_for_file(home: Path, tmp: Path) -> None:
    path = _btc_file(home)
    path.unlink()
    path.mkdir()


def _rewrite_store(home: Path, change: Callable[[pa.Table], pa.Table]) -> None:
    path = _btc_file(home)
    pq.write_table(change(pq.read_table(path)), path)


def duplicate_rows(home: Path, tmp: Path) -> None:
    _rewrite_store(home, lambda t: pa.concat_tables([t, t.slice(0, 10)]))


def unsorted_rows(home: Path, tmp: Path) -> None:
    _rewrite_store(home, lambda t: pa.concat_tables([t.slice(100), t.slice(0, 100)]))


def home_is_a_file(home: Path, tmp: Path) -> None:
    shutil.rmtree(home)
    home.write_text("not a folder")


def header_only(home: Path, tmp: Path) -> None:
    _write_lines(tmp / "in" / "BTCUSDT-1h.csv", ["open_time,open,high,low,close,volume,close_time"])


def binary_file(home: Path, tmp: Path) -> None:
    (tmp / "scores.csv").write_bytes(bytes(range(256)) * 40)


def broken_artifacts(home: Path, tmp: Path) -> None:
    """Delete v2's model files (the registry still lists it)."""
    import mlflow

    settings = load_settings(home)
    mlflow.set_tracking_uri(settings.tracking_uri)
    location = mlflow.MlflowClient().get_model_version_download_uri("quantum-trader-1h", "2")
    assert location.startswith("file://"), location
    shutil.rmtree(location.removeprefix("file://"))


def truncated_mlflow_db(home: Path, tmp: Path) -> None:
    db = home / "mlflow" / "mlflow.db"
    db.write_bytes(db.read_bytes()[:6000])


def little_data(home: Path, tmp: Path) -> None:
    """Only 1,500 hours of BTC and ETH."""
    shutil.rmtree(home / "store")
    from tasks.ingest import ingest_files

    settings = load_settings(home)
    for symbol in ("BTCUSDT", "ETHUSDT"):
        path = _write_lines(tmp / "in" / f"{symbol}-1h.csv", sample_lines(symbol)[:1500])
        ingest_files(symbol, "1h", "spot", [path], "files", settings)


# -- the table ---------------------------------------------------------------------------
Runner = Callable[..., subprocess.CompletedProcess[str]]


@dataclass
class Case:
    """One bad input or fault against one command."""

    id: str
    finding: str
    args: list[str]
    expect: int
    names: tuple[str, ...] = ()
    setup: Callable[[Path, Path], None] | None = None
    mutates: bool = False
    flow: bool = False
    read_only: bool = False
    env: dict[str, str] = field(default_factory=dict)
    check: Callable[[dict[str, Any], Path, Callable[..., subprocess.CompletedProcess[str]]], None] | None = (
        None
    )


def _both_datasets_reported(doc: dict[str, Any], home: Path, qt: Any) -> None:
    assert set(doc["failed"]) == {"BTCUSDT-1h"} and set(doc["symbols"]) == {"BTCUSDT-5m"}
    assert doc["failed"]["BTCUSDT-1h"]["quarantine"]


def _repaired_then_rebuilt(doc: dict[str, Any], home: Path, qt: Any) -> None:
    assert set(doc["repaired"]) == {"BTCUSDT"} and Path(doc["repaired"]["BTCUSDT"]["moved_to"]).exists()
    rebuilt = qt("ingest", "--source", "sample", "--symbols", "BTCUSDT", "--json")
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert json.loads(rebuilt.stdout)["symbols"]["BTCUSDT"]["rows_added"] == 10968
    assert qt("validate", "--json").returncode == 0


def _one_row_updated(doc: dict[str, Any], home: Path, qt: Any) -> None:
    assert doc["symbols"]["BTCUSDT"]["rows_updated"] == 1


BAD_SENTIMENT = "{tmp}/scores.csv"
CASES = [
    # 1: datasets keyed by (market, symbol, interval)
    Case("multi-interval-one-bad", "1", ["ingest", "--source", "files", "--path", "{tmp}/in"], 2,
         ("BTCUSDT-1h.csv row 500", "close"), multi_interval_one_bad, mutates=True, flow=True,
         check=_both_datasets_reported),
    # 3: a damaged store names the file; --repair moves it aside; ingest rebuilds
    Case("truncated-parquet-validate", "3", ["validate"], 2, ("BTCUSDT.parquet", "not a readable Parquet"),
         truncated_parquet),
    Case("truncated-parquet-ingest", "3", ["ingest", "--source", "sample", "--symbols", "BTCUSDT"], 2,
         ("BTCUSDT.parquet", "qt validate --repair"), truncated_parquet, flow=True),
    Case("truncated-parquet-features", "3", ["features", "--out", "{tmp}/f.parquet"], 2, ("BTCUSDT.parquet",),
         truncated_parquet),
    Case("truncated-parquet-evaluate", "3", ["evaluate"], 2, ("BTCUSDT.parquet",), truncated_parquet),
    Case("folder-for-dataset", "3", ["validate"], 2, ("BTCUSDT.parquet", "a folder"), folder_for_file),
    Case("duplicate-rows", "3", ["validate"], 2, ("BTCUSDT.parquet", "10 duplicate open_time"),
         duplicate_rows),
    Case("unsorted-rows", "3", ["features", "--out", "{tmp}/f.parquet"], 2, ("BTCUSDT.parquet", "not sorted"),
         unsorted_rows),
    Case("repair-then-rebuild", "3", ["validate", "--repair"], 0, ("moved to",), truncated_parquet,
         mutates=True, flow=True, check=_repaired_then_rebuilt),
    # 4: read-only home, a file as home
    Case("read-only-home-registry-list", "4", ["registry", "list"], 0, (), read_only=True),
    Case("read-only-home-validate", "4", ["validate"], 0, (), read_only=True),
    Case("read-only-home-ingest", "4", ["ingest", "--source", "sample"], 2, ("{home}", "not writable"),
         read_only=True),
    Case("home-is-a-file-list", "4", ["registry", "list"], 2, ("{home}", "is a file"), home_is_a_file),
    Case("home-is-a-file-ingest", "4", ["ingest"], 2, ("{home}", "is a file"), home_is_a_file),
    # 5: implausible or changed candles
    Case("absurd-candle", "5", ["ingest", "--source", "files", "--path", "{tmp}/in/BTCUSDT-1h.csv"], 2,
         ("row 1001", "price_vs_neighbours"), _edit_sample(1000, 2, lambda _: "1e300"), flow=True),
    Case("absurd-candle-consistent", "5", ["ingest", "--source", "files", "--path", "{tmp}/in"], 2,
         ("row 1001", "price_vs_neighbours"), _edit_sample(1000, 4, lambda _: "1e300"), flow=True),
    Case("changed-candle", "5", ["ingest", "--source", "files", "--path", "{tmp}/in"], 2,
         ("would change", "volume", "--overwrite"), _edit_sample(1000, 5, lambda v: str(float(v) + 1)),
         flow=True),
    Case("changed-candle-overwrite", "5",
         ["ingest", "--source", "files", "--path", "{tmp}/in", "--overwrite"], 0, (),
         _edit_sample(1000, 5, lambda v: str(float(v) + 1)), mutates=True, flow=True, check=_one_row_updated),
    # 6: commands that would succeed having done nothing
    Case("ingest-start-after-end", "6", ["ingest", "--start", "2025-01-02", "--end", "2025-01-01"], 2,
         ("--start", "--end")),
    Case("features-start-after-end", "6",
         ["features", "--out", "{tmp}/f.parquet", "--start", "2025-01-02", "--end", "2025-01-01"], 2,
         ("--start", "--end")),
    Case("header-only-csv", "6", ["ingest", "--source", "files", "--path", "{tmp}/in"], 0, ("no candles",),
         header_only, flow=True),
    Case("registry-bogus-market", "6", ["registry", "list", "--market", "bogus"], 2, ("bogus",)),
    Case("registry-bad-interval", "6", ["registry", "list", "--interval", "7x"], 2, ("7x",)),
    # 7: tracebacks where a clear exit 2 was due
    Case("features-out-unwritable", "7", ["features", "--out", "/proc/qt-nowhere/f.parquet"], 2, ("--out",)),
    Case("sentiment-binary", "7", ["features", "--out", "{tmp}/f.parquet", "--sentiment", BAD_SENTIMENT], 2,
         ("scores.csv",), binary_file),
    Case("model-artifacts-missing", "7", ["evaluate", "--model", "2"], 2, ("v2", "artifacts"),
         broken_artifacts),
    Case("mlflow-db-truncated", "7", ["registry", "list"], 2, ("mlflow.db",), truncated_mlflow_db),
    Case("deploy-dead-api", "7", ["deploy", "--no-serve"], 2, ("http://127.0.0.1:9/api",),
         env={"PREFECT_API_URL": "http://127.0.0.1:9/api"}),
    Case("retrain-too-little-data", "7", ["retrain", "--models", "xgb", "--source", "store"], 2,
         ("days",), little_data, flow=True),
    # 8: usage errors under --json
    Case("unknown-option", "8", ["ingest", "--bogus"], 2, ("--bogus",)),
    Case("wrong-type", "8", ["ingest", "--top", "many"], 2, ("--top",)),
    # more of the same kinds
    Case("missing-path", "+", ["ingest", "--source", "files", "--path", "{tmp}/nope.csv"], 2, ("nope.csv",)),
    Case("bad-source", "+", ["ingest", "--source", "ftp"], 2, ("--source",)),
    Case("bad-symbol", "+", ["features", "--out", "{tmp}/f.parquet", "--symbols", "BTC-USD!"], 2,
         ("BTC-USD!",)),
    Case("bad-date", "+", ["features", "--out", "{tmp}/f.parquet", "--start", "yesterday-ish"], 2,
         ("--start",)),
    Case("unknown-version-show", "+", ["registry", "show", "99"], 2, ("99",)),
    Case("unknown-version-promote", "+", ["registry", "promote", "99"], 2, ("99",)),
    Case("bad-model-ref", "+", ["evaluate", "--model", "newest"], 2, ("newest",)),
    Case("bad-window", "+", ["walkforward", "--window", "sliding"], 2, ("--window",)),
    Case("bad-profile", "+", ["retrain", "--profile", "huge"], 2, ("--profile",)),
    Case("bad-env-setting", "+", ["validate"], 2, ("http_max_retries",), env={"QT_HTTP_MAX_RETRIES": "-1"}),
    Case("empty-store-validate", "+", ["validate"], 2, ("qt ingest",),
         lambda h, t: shutil.rmtree(h / "store")),
]  # fmt: skip


def _copy_home(base: Path, tmp: Path) -> Path:
    """A private copy of the base home."""
    home = tmp / "home"
    shutil.copytree(base, home)
    return home


def _without_root_override() -> list[str]:
    """A command prefix under which permission bits bind this process, even as root.

    Root ignores a folder's mode; without CAP_DAC_OVERRIDE (and DAC_READ_SEARCH) it obeys
    it, as any user would, so a chmod 555 home is read-only for the command.
    """
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv (util-linux): cannot make a home read-only")
    return [setpriv, "--bounding-set", "-dac_override,-dac_read_search", "--"]


def _make_read_only(home: Path) -> None:
    for path in [home, *home.rglob("*")]:
        if path.is_dir():
            os.chmod(path, 0o555)
        else:
            os.chmod(path, 0o444)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_and_faults(case: Case, base_home: Path, prefect_api: str, tmp_path: Path) -> None:
    home = _copy_home(base_home, tmp_path)
    if case.setup is not None:
        case.setup(home, tmp_path)
    prefix = _without_root_override() if case.read_only else []
    if case.read_only:
        _make_read_only(home)
    env = {**os.environ, "QT_HOME": str(home), "COLUMNS": "200", **case.env}
    env.pop("PREFECT_API_URL", None)
    if case.flow:
        env["PREFECT_API_URL"] = prefect_api
    env.update(case.env)

    def qt(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*prefix, *QT, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
        )

    before = store_hash(home) if home.is_dir() else ""
    args = [a.format(tmp=tmp_path, home=home) for a in case.args]
    result = qt(*args, "--json")
    names = [n.format(tmp=tmp_path, home=home) for n in case.names]
    words = [a for a in case.args[:2] if not a.startswith("-")][: 2 if case.args[0] == "registry" else 1]
    row = {"finding": case.finding, "case": case.id, "command": "qt " + " ".join(words)}
    row["expected"], row["exit"] = case.expect, result.returncode
    row["no_traceback"] = "Traceback" not in result.stderr
    row["names_it"] = all(n in result.stderr for n in names)
    try:
        doc = json.loads(result.stdout)
        row["json"] = isinstance(doc, dict) and (
            result.returncode == 0 or (doc.get("exit_code") == result.returncode and bool(doc.get("error")))
        )
    except json.JSONDecodeError:
        doc, row["json"] = {}, False
    after = store_hash(home) if home.is_dir() else ""
    row["store_intact"] = case.mutates or before == after
    RESULTS.append(row)
    try:
        assert result.returncode == case.expect, result.stderr[-3000:]
        assert row["no_traceback"], result.stderr[-3000:]
        assert row["names_it"], f"expected {names} in stderr:\n{result.stderr[-3000:]}"
        assert row["json"], result.stdout[-2000:]
        assert row["store_intact"], "the store changed"
        if case.check is not None:
            case.check(doc, home, qt)
    finally:
        if case.read_only:  # let pytest clean the copy up
            for path in [home, *home.rglob("*")]:
                os.chmod(path, 0o755)


# -- Ctrl-C: exit 130 within seconds, say what was stored, leave nothing running ----------
def _interrupt_when(
    args: list[str], env: dict[str, str], ready: Callable[[Any], bool], wait_s: float = 240
) -> tuple[int | None, float, str, str, list[str]]:
    """Start ``qt`` in its own process group, Ctrl-C the group once ``ready(proc)``.

    Returns the exit code (None: still running 20 s after the signal), the seconds it took
    to exit, stdout, stderr, and the command lines of the group still alive afterwards.
    """
    import psutil

    proc = subprocess.Popen(
        [*QT, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + wait_s
    while not ready(proc) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert proc.poll() is None, f"finished before the interrupt: {proc.communicate()[1][-2000:]}"
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
    sent = time.monotonic()
    try:
        out, err = proc.communicate(timeout=20)
        code: int | None = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        code = None
    took = time.monotonic() - sent
    time.sleep(0.5)
    left = [
        p
        for p in psutil.process_iter(["pid", "cmdline", "status"])
        if _pgid(p.pid) == proc.pid and p.info["status"] != psutil.STATUS_ZOMBIE  # exited, unreaped
    ]
    for p in left:
        p.kill()
    return code, took, out, err, [" ".join(p.info["cmdline"] or [])[:200] for p in left]


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def _cpu_seconds(proc: subprocess.Popen[str]) -> float:
    import psutil

    try:
        times = psutil.Process(proc.pid).cpu_times()
    except psutil.NoSuchProcess:
        return 0.0
    return float(times.user + times.system)


def _has_children(proc: subprocess.Popen[str], at_least: int = 1) -> bool:
    import psutil

    try:
        return len(psutil.Process(proc.pid).children(recursive=True)) >= at_least
    except psutil.NoSuchProcess:
        return False


def _record_interrupt(
    case: str, command: str, code: int | None, took: float, out: str, left: list[str]
) -> None:
    try:
        doc = json.loads(out)
        valid = doc.get("interrupted") is True and doc.get("exit_code") == 130
    except json.JSONDecodeError:
        valid = False
    RESULTS.append(
        {"finding": "2", "case": case, "command": command, "expected": 130, "exit": code,
         "no_traceback": True, "names_it": True, "json": valid, "store_intact": True,
         "seconds_to_exit": round(took, 1), "processes_left": len(left)}
    )  # fmt: skip
    assert code == 130, f"exit {code} after {took:.0f} s"
    assert took < 15, f"took {took:.0f} s to exit"
    assert valid, out[-2000:]
    assert not left, f"processes left running: {left}"


def test_ctrl_c_during_ingest_exits_130_and_keeps_the_store(tmp_path: Path) -> None:
    """Ephemeral Prefect (no server named): the signal kills its server too; we still exit."""
    from tasks.store import CandleStore

    home = tmp_path / "home"
    env = {**os.environ, "QT_HOME": str(home)}
    env.pop("PREFECT_API_URL", None)
    files = [str(p) for p in sorted(SAMPLE_DIR.glob("*-1h.zip"))]
    args = ["ingest", "--source", "files", *[a for f in files for a in ("--path", f)], "--json"]
    store = home / "store" / "spot" / "1h"
    code, took, out, _, left = _interrupt_when(args, env, lambda p: any(store.glob("*.parquet")))
    _record_interrupt("ctrl-c-ingest (ephemeral Prefect)", "qt ingest", code, took, out, left)
    doc = json.loads(out)
    assert set(doc["completed"]) | set(doc["not_completed"]) == {
        f"spot {Path(f).name.split('-')[0]} 1h" for f in files
    }
    for symbol in CandleStore(home / "store").symbols("1h"):  # whatever is stored reads whole
        assert len(CandleStore(home / "store").read(symbol, "1h")) == 10968


def test_ctrl_c_during_retrain_stops_its_workers(base_home: Path, prefect_api: str, tmp_path: Path) -> None:
    home = _copy_home(base_home, tmp_path)
    env = {**os.environ, "QT_HOME": str(home), "PREFECT_API_URL": prefect_api}
    args = ["retrain", "--models", "xgb,lgbm", "--source", "store", "--workers", "2", "--json"]
    before = store_hash(home)
    code, took, out, _, left = _interrupt_when(args, env, lambda p: _has_children(p, 2))
    _record_interrupt("ctrl-c-retrain (fit workers running)", "qt retrain", code, took, out, left)
    assert store_hash(home) == before


def test_ctrl_c_during_walkforward(base_home: Path, tmp_path: Path) -> None:
    home = _copy_home(base_home, tmp_path)
    env = {**os.environ, "QT_HOME": str(home)}
    # N-HiTS fits keep it busy for a minute or more; 8 s of CPU is well inside the fits
    args = ["walkforward", "--models", "xgb,nhits", "--test-days", "300", "--folds", "6", "--no-track"]
    code, took, out, _, left = _interrupt_when([*args, "--json"], env, lambda p: _cpu_seconds(p) > 8)
    _record_interrupt("ctrl-c-walkforward", "qt walkforward", code, took, out, left)


# -- docs/reliability.md's table -----------------------------------------------------------
@pytest.fixture(scope="module", autouse=True)
def _write_table() -> Iterator[None]:
    yield
    target = os.environ.get("QT_ROBUSTNESS_TABLE")
    if not target or not RESULTS:
        return
    ok = [r for r in RESULTS if r["exit"] == r["expected"]]
    clean = [r for r in RESULTS if r["no_traceback"] and r["names_it"] and r["json"]]
    intact = [r for r in RESULTS if r["store_intact"]]
    lines = [
        f"{len(RESULTS)} cases: {len(ok)} with the documented exit code, {len(clean)} clean "
        f"(no traceback, the path/option/field named, valid JSON), {len(intact)} stores intact.",
        "",
        "| finding | case | command | exit (expected) | clean error | JSON | store intact |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in RESULTS:
        mark = {True: "yes", False: "**no**"}
        lines.append(
            f"| {r['finding']} | {r['case']} | `{r['command']}` | {r['exit']} ({r['expected']}) | "
            f"{mark[r['no_traceback'] and r['names_it']]} | {mark[r['json']]} | {mark[r['store_intact']]} |"
        )
    Path(target).write_text("\n".join(lines) + "\n")
    buffer = io.StringIO()
    json.dump(RESULTS, buffer, indent=1)
    Path(target).with_suffix(".json").write_text(buffer.getvalue())
