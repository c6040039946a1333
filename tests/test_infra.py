"""infra/compose.yaml and its files agree with each other and with the code, checked without docker.

Every service has an image, every reference (service, volume, file) exists, the published
ports are those infra/README.md lists, the commands parse with the real CLIs (qt, prefect,
mlflow, dask), the QT_* names are Settings fields, Prometheus scrapes the port qt serve
listens on, and the Grafana dashboard queries only metrics /metrics really exports. One
test runs ``docker compose config`` itself where docker compose is installed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from core.settings import Settings
from tests.test_cli import ROOT

INFRA = ROOT / "infra"
COMPOSE = INFRA / "compose.yaml"
#: Host port → what listens there; infra/README.md lists each as http://localhost:PORT.
PORTS = {4200: "Prefect UI", 5000: "MLflow", 8000: "API", 3000: "Grafana", 9090: "Prometheus"}
SECRETS = ("POSTGRES_PASSWORD", "GRAFANA_ADMIN_PASSWORD")
BINANCE_KEYS = ("QT_BINANCE_API_KEY", "QT_BINANCE_API_SECRET")
_VARIABLE = re.compile(r"\$(?:\$|\{(?P<name>\w+)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\})")


def _dotenv(path: Path) -> dict[str, str]:
    """``NAME=value`` lines of an env file (comments and blank lines skipped)."""
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {name.strip(): value.strip() for name, value in pairs if not name.lstrip().startswith("#")}


def _interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's ``${VAR}``, ``${VAR:-default}``, ``${VAR:?error}`` and ``$$`` in each string of ``value``."""
    if isinstance(value, dict):
        return {key: _interpolate(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [_interpolate(item, env) for item in value]
    if not isinstance(value, str):
        return value

    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, op, arg = match.group("name"), match.group("op"), match.group("arg")
        found = env.get(name)
        missing = found is None or (found == "" and op is not None and op.startswith(":"))
        if missing and op in (":?", "?"):
            raise KeyError(f"{name}: {arg}")
        if missing and op in (":-", "-"):
            return str(arg)
        return found or ""

    return _VARIABLE.sub(one, value)


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    """compose.yaml as written (anchors merged by the YAML loader, variables not substituted)."""
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


@pytest.fixture(scope="module")
def project(raw: dict[str, Any]) -> dict[str, Any]:
    """compose.yaml with the variables of infra/.env.example substituted, as compose reads it."""
    resolved: dict[str, Any] = _interpolate(raw, _dotenv(INFRA / ".env.example"))
    return resolved


def _services(project: dict[str, Any], *, profiles: bool = False) -> dict[str, dict[str, Any]]:
    """The services ``docker compose up`` starts (``profiles``: the optional ones too)."""
    return {name: s for name, s in project["services"].items() if profiles or not s.get("profiles")}


def _command(service: dict[str, Any]) -> list[str]:
    command = service["command"]
    assert isinstance(command, list), "commands are exec form: no shell between compose and the program"
    return [str(part) for part in command]


def _option(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def _needs(service: dict[str, Any]) -> list[str]:
    return list(service.get("depends_on", []))  # the short form (a list) or the long one (a mapping)


def test_every_service_has_an_image_and_names_only_what_exists(project: dict[str, Any]) -> None:
    services = _services(project, profiles=True)
    declared = set(project["volumes"])
    used: set[str] = set()
    for name, service in services.items():
        assert "image" in service or "build" in service, f"{name}: no image nor build"
        for needed in _needs(service):
            assert needed in services, f"{name} depends on {needed}, which is no service"
            if "profiles" not in service:
                assert "profiles" not in services[needed], f"{name} needs {needed}, started only by a profile"
        for mount in service.get("volumes", []):
            source = mount.split(":")[0]
            if source.startswith((".", "/")):
                assert (INFRA / source).exists(), f"{name}: bind mount {source} does not exist"
            else:
                assert source in declared, f"{name}: volume {source} is not declared"
                used.add(source)
        if "build" in service:
            context = INFRA / service["build"]["context"]
            assert (context / service["build"]["dockerfile"]).is_file()
            assert (context / "pyproject.toml").is_file(), "the build context is the repository root"
    assert used == declared, f"declared but unused: {declared - used}"


def test_the_published_ports_are_the_ones_the_readme_lists(project: dict[str, Any]) -> None:
    published: dict[int, str] = {}
    for name, service in _services(project).items():
        for port in service.get("ports", []):
            address, host, container = str(port).split(":")
            assert address == "127.0.0.1", f"{name}: binds {address} by default, not loopback"
            published[int(host)] = name
            assert host == container
    assert set(published) == set(PORTS)
    readme = (INFRA / "README.md").read_text()
    for port, what in PORTS.items():
        assert f"http://localhost:{port}" in readme, f"infra/README.md does not list {what} on :{port}"


def test_the_app_commands_parse_with_qt_prefect_mlflow_and_dask(project: dict[str, Any]) -> None:
    """Each command's options exist in the installed CLI (parsed, not run)."""
    import typer.main
    from distributed.cli import dask_scheduler, dask_worker
    from mlflow.cli import cli as mlflow_cli
    from prefect.cli._app import _app as prefect_cli  # the cyclopts app behind the prefect command

    import cli.main

    qt = typer.main.get_command(cli.main.app)
    services = _services(project, profiles=True)
    parsers = {
        ("qt",): lambda args: qt.commands[args[0]].make_context(args[0], args[1:]),
        ("mlflow",): lambda args: mlflow_cli.commands[args[0]].make_context(args[0], args[1:]),
        ("prefect",): lambda args: prefect_cli.parse_args(args, exit_on_error=False, print_error=False),
        ("dask", "worker"): lambda args: dask_worker.main.make_context("worker", args[1:]),
        ("dask", "scheduler"): lambda args: dask_scheduler.main.make_context("scheduler", args[1:]),
    }
    parsed = set()
    for name, service in services.items():
        if "build" not in service:
            continue
        args = _command(service)
        for prefix, parse in parsers.items():
            if tuple(args[: len(prefix)]) == prefix:
                parse(args[1:])  # raises on an unknown option or a bad value
                parsed.add(name)
    assert parsed == {n for n, s in services.items() if "build" in s}

    deploy, worker = _command(services["deploy"]), _command(services["worker"])
    assert _option(deploy, "--work-pool") == _option(worker, "--pool")
    assert "--no-serve" in deploy and _option(worker, "--type") == "process"
    mlflow = _command(services["mlflow"])
    assert _option(mlflow, "--workers") == "1"
    assert services["mlflow"]["environment"]["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    assert services["prefect-server"]["environment"]["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"


def test_the_stores_are_postgres_databases_the_init_script_creates(project: dict[str, Any]) -> None:
    services = project["services"]
    urls = {
        "journal": services["api"]["environment"]["QT_JOURNAL_URL"],
        "prefect": services["prefect-server"]["environment"]["PREFECT_SERVER_DATABASE_CONNECTION_URL"],
        "mlflow": services["mlflow"]["environment"]["MLFLOW_BACKEND_STORE_URI"],
    }
    init = (INFRA / "postgres" / "init-databases.sql").read_text()
    created = set(re.findall(r"CREATE DATABASE (\w+);", init))
    assert created == set(urls)
    for database, url in urls.items():
        assert re.fullmatch(rf"postgresql\+(psycopg|asyncpg)://\w+:[^@]+@postgres:5432/{database}", url), url
    assert urls["prefect"].startswith("postgresql+asyncpg://")  # Prefect's server is async
    mounts = services["postgres"]["volumes"]
    assert "./postgres/init-databases.sql:/docker-entrypoint-initdb.d/10-databases.sql:ro" in mounts


def test_every_qt_variable_is_a_settings_field_and_the_services_share_them(project: dict[str, Any]) -> None:
    services = _services(project, profiles=True)
    for name, service in services.items():
        for variable in service.get("environment") or {}:
            if variable.startswith("QT_"):
                assert variable[3:].lower() in Settings.model_fields, f"{name}: {variable} is no setting"
    app = [n for n, s in services.items() if "QT_HOME" in (s.get("environment") or {})]
    assert set(app) == {"deploy", "worker", "api", "dask-worker"}
    for name in app:  # one home, one MLflow, one journal for everything that runs flows or serves
        env = services[name]["environment"]
        assert env["QT_HOME"] == "/data/qt" and "qt-home:/data/qt" in services[name]["volumes"]
        assert env["QT_MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
        assert env["PREFECT_API_URL"] == "http://prefect-server:4200/api"  # Dask workers report there too
    # the MLflow server reads the artifacts the worker writes under QT_HOME, at the same path
    assert "qt-home:/data/qt" in services["mlflow"]["volumes"]
    artifact_root = Settings(home=Path("/data/qt")).artifact_root
    assert _option(_command(services["mlflow"]), "--default-artifact-root") == artifact_root


def test_secrets_come_only_from_the_environment(raw: dict[str, Any]) -> None:
    text = COMPOSE.read_text()
    for secret in SECRETS:
        uses = re.findall(rf"\$\{{{secret}([^}}]*)\}}", text)
        assert uses and all(use.startswith(":?") for use in uses), f"{secret} must be required: {uses}"
    without = {k: v for k, v in _dotenv(INFRA / ".env.example").items() if k not in SECRETS}
    with pytest.raises(KeyError, match="POSTGRES_PASSWORD"):
        _interpolate(raw, without)
    for name, service in raw["services"].items():
        env = service.get("environment") or {}
        for key in BINANCE_KEYS:  # passed through when set, never a value in the file
            assert env.get(key) is None, f"{name}: {key} has a value in compose.yaml"
    ignored = subprocess.run(["git", "check-ignore", "-q", "infra/.env"], cwd=ROOT, check=False)
    assert ignored.returncode == 0, "infra/.env (the passwords) is not git-ignored"
    assert "infra/.env" in (INFRA / "Dockerfile.dockerignore").read_text().splitlines()


def test_prometheus_scrapes_the_api_on_the_port_qt_serve_uses(project: dict[str, Any]) -> None:
    api = _command(project["services"]["api"])
    assert api[:2] == ["qt", "serve"] and _option(api, "--host") == "0.0.0.0"
    config = yaml.safe_load((INFRA / "prometheus.yml").read_text())
    [job] = [j for j in config["scrape_configs"] if j["job_name"] == "quantum-trader-api"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    assert [t for s in job["static_configs"] for t in s["targets"]] == [f"api:{_option(api, '--port')}"]
    prometheus = project["services"]["prometheus"]
    assert "./prometheus.yml:/etc/prometheus/prometheus.yml:ro" in prometheus["volumes"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """Names of the series the API's /metrics exports (in-process app, an empty journal: every family)."""
    from fastapi.testclient import TestClient
    from prometheus_client.parser import text_string_to_metric_families

    from core.settings import configure_environment, load_settings
    from serving.api import create_app
    from serving.journal import Journal

    settings = load_settings(tmp_path_factory.mktemp("metrics") / "home")
    configure_environment(settings)
    Journal.open(settings).close()  # with a journal the collector reports all its families
    with TestClient(create_app(settings, "1h", "spot")) as client:
        client.get("/health")  # one request: the latency histogram has a sample
        scrape = client.get("/metrics")
    assert scrape.status_code == 200
    suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_count", "_sum", "_created")}
    names = set()
    for family in text_string_to_metric_families(scrape.text):
        names.add(family.name)
        names.update(family.name + suffix for suffix in suffixes.get(family.type, ()))
        names.update(sample.name for sample in family.samples)
    return names


#: PromQL words that are not series: functions are followed by "(", these are not.
_PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
                 "unless", "offset"}  # fmt: skip
#: Series Prometheus makes itself for every scrape target.
_PROMETHEUS_SERIES = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}


def _series(expr: str) -> set[str]:
    """The metric names an expression reads (label matchers, groupings, ranges and strings removed)."""
    bare = re.sub(r'"[^"]*"', "", expr)
    bare = re.sub(r"\{[^}]*\}|\[[^\]]*\]", "", bare)
    bare = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", bare)
    names = set(re.findall(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()", bare))
    return names - _PROMQL_WORDS


def test_the_grafana_dashboard_queries_only_metrics_the_api_exports(exported: set[str]) -> None:
    dashboards = sorted((INFRA / "grafana" / "dashboards").glob("*.json"))
    assert dashboards
    for path in dashboards:
        dashboard = json.loads(path.read_text())
        exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
        assert exprs, f"{path.name}: no queries"
        read = set().union(*(_series(e) for e in exprs))
        unknown = read - exported - _PROMETHEUS_SERIES
        assert not unknown, f"{path.name} queries {sorted(unknown)}, which /metrics does not export"
        assert {n for n in read if n.startswith("qt_")}, f"{path.name} reads none of the API's metrics"
        for panel in dashboard["panels"]:
            assert panel["datasource"]["uid"] == "prometheus"


def test_the_dashboard_expression_parser_finds_the_series() -> None:
    expr = 'histogram_quantile(0.9, sum by (le, endpoint) (rate(qt_api_request_seconds_bucket{job="x"}[5m])))'
    assert _series(expr) == {"qt_api_request_seconds_bucket"}
    assert _series("qt_risk_mode == 1 or up") == {"qt_risk_mode", "up"}


def test_grafana_is_provisioned_with_prometheus_and_the_dashboard_folder(project: dict[str, Any]) -> None:
    provisioning = INFRA / "grafana" / "provisioning"
    [source] = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert source["type"] == "prometheus" and source["uid"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"
    [provider] = yaml.safe_load((provisioning / "dashboards" / "quantum-trader.yml").read_text())["providers"]
    mounts = {m.split(":")[0]: m.split(":")[1] for m in project["services"]["grafana"]["volumes"]}
    assert mounts["./grafana/dashboards"] == provider["options"]["path"]
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"


def test_the_image_installs_torch_cpu_first_and_the_package_with_its_pins() -> None:
    dockerfile = (INFRA / "Dockerfile").read_text()
    assert dockerfile.startswith("#") and "\nFROM python:3.11-slim\n" in dockerfile
    torch = dockerfile.index("pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu")
    assert torch < dockerfile.index("pip install -c constraints.txt .")
    ignore = (INFRA / "Dockerfile.dockerignore").read_text().splitlines()
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = [p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]]
    for package in packages:  # the context sends every package the image installs
        assert f"!{package}/" in ignore and f"COPY {package} {package}" in dockerfile
    assert pyproject["project"]["readme"] == "README.md" and "!README.md" in ignore


def _docker_compose() -> str | None:
    """Why ``docker compose`` cannot run here, or None when it can."""
    if shutil.which("docker") is None:
        return "no docker command on PATH"
    try:
        found = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"docker compose version: {err}"
    if found.returncode != 0:
        said = (found.stderr or found.stdout).strip().splitlines()
        return f"docker compose is not installed ({said[0] if said else f'exit {found.returncode}'})"
    return None


def test_docker_compose_accepts_the_file() -> None:
    reason = _docker_compose()
    if reason is not None:
        pytest.skip(reason)
    env = {**os.environ, **_dotenv(INFRA / ".env.example")}
    for profile in ([], ["--profile", "dask"]):
        checked = subprocess.run(
            ["docker", "compose", "-f", str(COMPOSE), *profile, "config", "-q"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert checked.returncode == 0, checked.stderr
