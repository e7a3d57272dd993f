"""The deploy kit (deploy/): systemd units, Prometheus alert rules, the Grafana dashboard.

Every metric name that a dashboard panel or an alert rule uses must be one the code exports.
The exported names come from the code itself: the metric classes of METRIC_MODULES are
built on a fresh registry and their families expanded the way prometheus_client exposes
them (counter -> _total, histogram -> _bucket/_sum/_count). A misspelt name in a panel or
a rule fails here; a rule whose expression is wrong fails its promtool unit test.

promtool (Debian package prometheus) and systemd-analyze (package systemd) are required:
in CI a missing one fails (.ci/run installs both); elsewhere those tests are skipped.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import re
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from needs import missing
from prometheus_client import CollectorRegistry

from ocspd.config import ENV_OVERRIDES, CrlConfig, ResponderConfig

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
EXAMPLE_CONFIG = DEPLOY / "ocspd.example.toml"
RULES = DEPLOY / "prometheus" / "ocspd-rules.yml"
RULE_TESTS = DEPLOY / "prometheus" / "tests" / "ocspd-rules.test.yml"
SCRAPE_CONFIG = DEPLOY / "prometheus" / "prometheus.example.yml"
DASHBOARD = DEPLOY / "grafana" / "ocspd.json"
UNITS = DEPLOY / "systemd"
INSTALL_BIN = "/opt/ocspd/venv/bin/"

# The modules whose classes create Prometheus metrics on a registry passed in.
# test_every_metric_definition_is_read fails when metrics appear anywhere else.
METRIC_MODULES = ("ocspd.metrics", "crlgen.metrics")

# Series Prometheus makes itself for every target.
FROM_PROMETHEUS = frozenset({"up"})


# --- exported metric names, from the code ---


def _series_names(family: str, kind: str) -> set[str]:
    """The series names prometheus_client exposes for a metric family (text format 0.0.4;
    _created series left out: the multiprocess collector of `ocspd serve` has none)."""
    if kind == "counter":
        return {family + "_total"}
    if kind == "histogram":
        return {family + "_bucket", family + "_sum", family + "_count"}
    if kind == "summary":
        return {family, family + "_sum", family + "_count"}
    if kind == "info":
        return {family + "_info"}
    return {family}  # gauge, stateset, unknown


def _metric_classes(module_name: str) -> Iterator[type]:
    """Classes of the module that can be built from a registry alone."""
    module = importlib.import_module(module_name)
    for value in vars(module).values():
        if not (inspect.isclass(value) and value.__module__ == module_name):
            continue
        parameters = inspect.signature(value).parameters
        others = [
            p
            for name, p in parameters.items()
            if name != "registry"
            and p.default is p.empty
            and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        ]
        if "registry" in parameters and not others:
            yield value


def exported_families() -> dict[str, str]:
    """Family name -> type, for every metric the code's metric classes create."""
    families: dict[str, str] = {}
    for module_name in METRIC_MODULES:
        classes = list(_metric_classes(module_name))
        assert classes, f"{module_name} has no class that takes a registry and nothing else"
        for cls in classes:
            registry = CollectorRegistry()
            cls(registry=registry)
            families.update((family.name, family.type) for family in registry.collect())
    return families


@pytest.fixture(scope="module")
def exported() -> frozenset[str]:
    names: set[str] = set()
    for family, kind in exported_families().items():
        names |= _series_names(family, kind)
    return frozenset(names)


# --- metric names in PromQL ---

_TOKEN = re.compile(
    r"""
      "(?:[^"\\]|\\.)*" | '(?:[^'\\]|\\.)*' | `[^`]*`   # strings
    | \{[^{}]*\}                                       # label matchers
    | \[[^\]]*\]                                       # ranges, subqueries
    | \d[\w.]*                                         # numbers, durations
    | [A-Za-z_:][\w:]*                                 # identifiers
    | \S
    """,
    re.VERBOSE,
)
_IDENTIFIER = re.compile(r"[A-Za-z_:][\w:]*")
# Followed by a label list in parentheses.
_GROUPING = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
_KEYWORDS = _GROUPING | {"and", "or", "unless", "bool", "offset", "atan2", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: identifiers that are not functions or
    aggregations (followed by '(', by or without), keywords, label names in by/without/on/
    ignoring lists, or inside label matchers, ranges or strings (Grafana's $variables only
    appear in those)."""
    tokens = _TOKEN.findall(expr)
    names = set()
    i = 0
    while i < len(tokens):
        token = tokens[i]
        following = tokens[i + 1] if i + 1 < len(tokens) else ""
        if token.lower() in _GROUPING and following == "(":
            i = tokens.index(")", i) + 1  # a label list holds no parentheses
            continue
        selector = following != "(" and following.lower() not in ("by", "without")
        if _IDENTIFIER.fullmatch(token) and selector and token.lower() not in _KEYWORDS:
            names.add(token)
        i += 1
    return names


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ('up{job="ocspd"} == 0', {"up"}),
        (
            "histogram_quantile(0.99, sum by (instance, le) "
            "(rate(ocspd_request_duration_seconds_bucket[5m]))) > 0.25",
            {"ocspd_request_duration_seconds_bucket"},
        ),
        (
            'sum by (outcome) (rate(ocspd_requests_total{instance=~"$instance", '
            'outcome!~"successful|not_modified"}[$__rate_interval]))',
            {"ocspd_requests_total"},
        ),
        ("time() - max by (issuer) (a_seconds) > 25 * 3600", {"a_seconds"}),
        ("sum(b) < 1 or absent(b)", {"b"}),
        ("sum(x) without (le) / on (instance) group_left (issuer) y offset 5m", {"x", "y"}),
        ("rate(c_total[5m] offset 1h) > 1e3 and bool d", {"c_total", "d"}),
        ("sum(rate(e[1h])) by (issuer, stage)", {"e"}),
    ],
)
def test_metric_names_finds_selectors_only(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


# --- the exported names themselves ---


def test_exported_names_follow_the_exposition_format(exported: frozenset[str]) -> None:
    assert "ocspd_requests_total" in exported  # Counter("ocspd_requests_total", ...)
    assert "ocspd_requests" not in exported
    assert {
        "ocspd_request_duration_seconds_bucket",
        "ocspd_request_duration_seconds_sum",
        "ocspd_request_duration_seconds_count",
    } <= exported
    assert "ocspd_request_duration_seconds" not in exported
    assert "ocspd_crl_next_update_seconds" in exported  # crlgen's, a gauge


def _metric_constructions(path: Path) -> list[str]:
    """First arguments of prometheus_client metric constructors called in a source file."""
    tree = ast.parse(path.read_text(), str(path))
    kinds = {"Counter", "Gauge", "Histogram", "Summary", "Info", "Enum"}
    constructors: set[str] = set()  # from prometheus_client import Gauge [as G]
    modules: set[str] = set()  # import prometheus_client [as pc]
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("prometheus_client"):
            constructors |= {a.asname or a.name for a in node.names if a.name in kinds}
        elif isinstance(node, ast.Import):
            modules |= {a.asname or a.name for a in node.names if a.name == "prometheus_client"}
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        direct = isinstance(func, ast.Name) and func.id in constructors
        qualified = (
            isinstance(func, ast.Attribute)
            and func.attr in kinds
            and isinstance(func.value, ast.Name)
            and func.value.id in modules
        )
        if direct or qualified:
            first = node.args[0] if node.args else None
            found.append(first.value if isinstance(first, ast.Constant) else "<computed>")
    return found


def test_every_metric_definition_is_read() -> None:
    """Metrics defined outside METRIC_MODULES would be missing from the exported names."""
    defined: dict[str, list[str]] = {}
    for package in ("ocspd", "crlgen"):
        for path in sorted((ROOT / package).rglob("*.py")):
            names = _metric_constructions(path)
            if names:
                module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
                defined[module] = names
    elsewhere = sorted(set(defined) - set(METRIC_MODULES))
    assert not elsewhere, (
        f"{elsewhere} define Prometheus metrics: add them to METRIC_MODULES in "
        "tests/test_deploy.py so the dashboard and the rules are checked against them"
    )
    families = exported_families()
    for module, names in defined.items():
        for name in names:
            family = name.removesuffix("_total")
            assert family in families, f"{module} defines {name}, which building it did not show"


# --- the Grafana dashboard ---


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def dashboard_exprs() -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target and every query variable."""
    data = dashboard()
    found = []
    for panel in data["panels"]:
        for target in panel.get("targets", []):
            found.append((f"panel {panel['title']!r}", target["expr"]))
    for variable in data["templating"]["list"]:
        if variable["type"] != "query":
            continue
        query = variable["query"]
        query = query["query"] if isinstance(query, dict) else query
        match = re.fullmatch(r"\s*label_values\((.+),\s*\w+\s*\)\s*", query)
        assert match, f"variable {variable['name']}: only label_values(SELECTOR, LABEL) is read"
        found.append((f"variable {variable['name']!r}", match[1]))
    return found


def test_dashboard_uses_only_exported_metrics(exported: frozenset[str]) -> None:
    allowed = exported
    unknown = [
        f"{where}: {name}"
        for where, expr in dashboard_exprs()
        for name in sorted(metric_names(expr) - allowed)
    ]
    assert not unknown, f"metrics the code does not export: {unknown}"


def test_dashboard_has_a_panel_for_each_subject() -> None:
    used = set().union(*(metric_names(expr) for _, expr in dashboard_exprs()))
    subjects = {
        "request rate by outcome": "ocspd_requests_total",
        "latency percentiles": "ocspd_request_duration_seconds_bucket",
        "cache hit ratio": "ocspd_cache_lookups_total",
        "signing latency": "ocspd_signing_duration_seconds_bucket",
        "signatures in flight": "ocspd_signing_in_flight",
        "database pool use": "ocspd_db_pool_connections_in_use",
        "responder certificate expiry": "ocspd_responder_certificate_expiry_seconds",
        "oldest cached response": "ocspd_cache_oldest_response_age_seconds",
        "CRL age": "ocspd_crl_last_signed_timestamp_seconds",
        "time to CRL nextUpdate": "ocspd_crl_next_update_seconds",
        "pending revocation requests": "ocspd_revocation_request_oldest_pending_seconds",
        "audit backlog": "ocspd_audit_pending_records",
    }
    lacking = [subject for subject, metric in subjects.items() if metric not in used]
    assert not lacking, f"no panel shows: {lacking}"
    percentiles = [e for _, e in dashboard_exprs() if "ocspd_request_duration_seconds_bucket" in e]
    assert all("histogram_quantile(" in e for e in percentiles)


def test_dashboard_is_importable() -> None:
    data = dashboard()
    assert data["uid"] and data["title"] and isinstance(data["schemaVersion"], int)
    variables = {v["name"]: v for v in data["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [panel["id"] for panel in data["panels"]]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    cells: dict[tuple[int, int], str] = {}
    for panel in data["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{panel['title']!r} overlaps {cells[x, y]!r}"
                cells[x, y] = panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], panel["title"]
        refs = [target["refId"] for target in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"]
            assert target["expr"].strip()


# --- the Prometheus alert rules ---


@dataclass(frozen=True)
class AlertRule:
    name: str
    expr: str
    fields: dict[str, str]
    # Line numbers (0-based, end exclusive) of the expression's text in the file.
    expr_lines: tuple[int, int]


def _value(lines: list[str], at: int) -> tuple[str, int]:
    """The value of the `key:` line at `at`: inline, or a block scalar (>-, |) on the more
    indented lines that follow. Returns it with the index after its last line."""
    line = lines[at]
    indent = len(line) - len(line.lstrip())
    value = line.split(":", 1)[1].strip()
    if value not in (">", ">-", "|", "|-"):
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        return value, at + 1
    end = at + 1
    while end < len(lines) and (
        not lines[end].strip() or len(lines[end]) - len(lines[end].lstrip()) > indent
    ):
        end += 1
    joiner = "\n" if value.startswith("|") else " "
    return joiner.join(line.strip() for line in lines[at + 1 : end]).strip(), end


def alert_rules() -> list[AlertRule]:
    """The alerts of the rules file, read line by line (PyYAML is not a dependency; promtool
    checks the structure, and test_promtool_check_rules compares the count with its own)."""
    lines = RULES.read_text().splitlines()
    starts = [i for i, line in enumerate(lines) if re.match(r"\s*- (alert|record):", line)]
    rules = []
    for n, start in enumerate(starts):
        end = starts[n + 1] if n + 1 < len(starts) else len(lines)
        name = lines[start].split(":", 1)[1].strip()
        fields: dict[str, str] = {}
        expr_lines = (0, 0)
        i = start + 1
        while i < end:
            match = re.match(r"\s*([a-z_]+):", lines[i])
            if not match:
                i += 1
                continue
            value, after = _value(lines, i)
            fields[match[1]] = value
            if match[1] == "expr":
                expr_lines = (i, after)
            i = after
        rules.append(AlertRule(name, fields.get("expr", ""), fields, expr_lines))
    return rules


def test_rules_use_only_exported_metrics(exported: frozenset[str]) -> None:
    allowed = exported | FROM_PROMETHEUS
    unknown = [
        f"{rule.name}: {name}"
        for rule in alert_rules()
        for name in sorted(metric_names(rule.expr) - allowed)
    ]
    assert not unknown, f"metrics the code does not export: {unknown}"


def test_rules_carry_severity_summary_description_and_runbook() -> None:
    rules = alert_rules()
    assert rules
    for rule in rules:
        assert rule.expr, rule.name
        assert rule.fields.get("severity") in ("critical", "warning"), rule.name
        for annotation in ("summary", "description", "runbook"):
            assert rule.fields.get(annotation), f"{rule.name} has no {annotation}"


def test_rules_cover_the_deploy_kit_conditions() -> None:
    names = {rule.name for rule in alert_rules()}
    wanted = {
        "OcspdResponderDown",  # up == 0 for the ocspd job
        "OcspdNotReady",  # /readyz failing: the change feed is stuck
        "OcspdServerErrors",  # tryLater + internalError over all requests
        "OcspdRequestsNotSuccessful",  # every non-successful outcome over all requests
        "OcspdLatencyHigh",  # p99 from the histogram
        "CrlNextUpdateSoon",  # nextUpdate within 3 days
        "CrlNotSignedRecently",  # no CRL for 25 hours
        "OcspdResponderCertificateExpiring",  # within 30 days
        "RevocationRequestsPending",  # 30 minutes
        "AuditBacklog",
    }
    assert wanted <= names, f"missing: {sorted(wanted - names)}"


def _promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        missing("promtool is not installed (apt-get install prometheus)")
    return path


def _run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, timeout=120, check=False
    )


def test_promtool_check_rules() -> None:
    result = _run(_promtool(), "check", "rules", RULES)
    assert result.returncode == 0, result.stdout + result.stderr
    counted = re.search(r"SUCCESS: (\d+) rules found", result.stdout)
    assert counted, result.stdout
    assert int(counted[1]) == len(alert_rules()), "the line reader here missed a rule"


def test_promtool_unit_tests_pass() -> None:
    result = _run(_promtool(), "test", "rules", RULE_TESTS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_unit_test() -> None:
    tested = set(re.findall(r"alertname(?:=\"|=~\"|: )([\w|]+)", RULE_TESTS.read_text()))
    tested = {name for names in tested for name in names.split("|")}
    untested = sorted({rule.name for rule in alert_rules()} - tested)
    assert not untested, f"no promtool unit test for {untested}"


def test_unit_tests_catch_a_misspelt_metric(tmp_path: Path) -> None:
    """Each metric name in the rules, misspelt in its expressions only: promtool's tests must
    fail every time (so no rule passes its tests whatever its expression selects)."""
    promtool = _promtool()
    lines = RULES.read_text().splitlines(keepends=True)
    (tmp_path / "tests").mkdir()
    shutil.copy(RULE_TESTS, tmp_path / "tests" / RULE_TESTS.name)
    names = set().union(*(metric_names(rule.expr) for rule in alert_rules()))
    unnoticed = []
    for name in sorted(names):
        mutated = list(lines)
        for rule in alert_rules():
            for i in range(*rule.expr_lines):
                mutated[i] = re.sub(rf"\b{name}\b", name + "_typo", mutated[i])
        assert mutated != lines, name
        (tmp_path / RULES.name).write_text("".join(mutated))
        result = _run(promtool, "test", "rules", tmp_path / "tests" / RULE_TESTS.name)
        if result.returncode == 0:
            unnoticed.append(name)
    assert not unnoticed, f"the unit tests still pass with these misspelt: {unnoticed}"


def test_scrape_config_is_valid_and_names_the_rules_jobs() -> None:
    result = _run(_promtool(), "check", "config", SCRAPE_CONFIG)
    assert result.returncode == 0, result.stdout + result.stderr
    jobs = set(re.findall(r"job_name:\s*(\S+)", SCRAPE_CONFIG.read_text()))
    used = {job for rule in alert_rules() for job in re.findall(r'job="([^"]+)"', rule.expr)}
    assert used and used <= jobs, f"rules name jobs {used}, the scrape config has {jobs}"


# --- the systemd units ---

UNIT_COMMANDS = {"ocspd.service": "ocspd serve", "crlgen.service": "crlgen run"}


def unit(name: str) -> dict[str, dict[str, list[str]]]:
    """Section -> key -> values in order (systemd allows a key more than once)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for raw in (UNITS / name).read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def _seconds(value: str) -> float:
    units = {"ms": 0.001, "s": 1, "sec": 1, "min": 60, "m": 60, "h": 3600}
    total = 0.0
    for number, suffix in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value):
        total += float(number) * units[suffix or "s"]
    return total


def _example_config() -> dict[str, Any]:
    with EXAMPLE_CONFIG.open("rb") as f:
        return tomllib.load(f)


@pytest.mark.parametrize("name", sorted(UNIT_COMMANDS))
def test_unit_is_hardened(name: str) -> None:
    service = unit(name)["Service"]

    def last(key: str) -> str:
        assert key in service, f"{name}: {key}= is not set"
        return service[key][-1]

    sysusers = (UNITS / "ocspd.sysusers").read_text()
    assert re.search(r"^u ocspd\b", sysusers, re.MULTILINE)
    assert last("User") == last("Group") == "ocspd"
    assert "DynamicUser" not in service
    assert last("ExecStart") == INSTALL_BIN + UNIT_COMMANDS[name]
    assert last("EnvironmentFile").startswith("/etc/ocspd/")
    assert "OCSPD_CONFIG=/etc/ocspd/ocspd.toml" in service["Environment"]
    for key, value in {
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "NoNewPrivileges": "yes",
        "Restart": "on-failure",
        "KillSignal": "SIGTERM",
        "CapabilityBoundingSet": "",
    }.items():
        assert last(key) == value, f"{name}: {key}={last(key)}"
    families = set(last("RestrictAddressFamilies").split())
    assert families == {"AF_INET", "AF_INET6", "AF_UNIX"}
    assert service["SystemCallFilter"][0] == "@system-service"
    assert int(last("LimitNOFILE")) >= 65536


def test_ocspd_stop_timeout_covers_the_drain() -> None:
    """SIGTERM: /readyz says 503 for drain_seconds, then the supervisor waits drain_seconds
    plus its grace (ocspd/serve.py) for workers before killing them; systemd must wait
    longer than that (plus 5 s for the kill itself) before its own SIGKILL."""
    grace = re.search(r"drain_seconds\s*\+\s*(\d+)", (ROOT / "ocspd" / "serve.py").read_text())
    assert grace, "ocspd/serve.py no longer waits drain_seconds + N: update this test"
    drain = max(
        float(_example_config()["responder"]["drain_seconds"]),
        ResponderConfig().drain_seconds,
    )
    timeout = _seconds(unit("ocspd.service")["Service"]["TimeoutStopSec"][-1])
    assert timeout >= drain + int(grace[1]) + 5, timeout
    assert unit("ocspd.service")["Service"]["KillMode"][-1] == "mixed"


def test_capabilities_match_the_example_listen_port() -> None:
    port = int(_example_config()["responder"]["listen"].rsplit(":", 1)[1])
    service = unit("ocspd.service")["Service"]
    ambient = service.get("AmbientCapabilities", [""])[-1]
    bounding = service["CapabilityBoundingSet"][-1]
    if port < 1024:
        assert "CAP_NET_BIND_SERVICE" in ambient and "CAP_NET_BIND_SERVICE" in bounding
    else:
        assert ambient == "" and bounding == "", "no capability is needed for port {port}"
    assert "#   AmbientCapabilities=CAP_NET_BIND_SERVICE" in (UNITS / "ocspd.service").read_text()


def test_ocspd_may_write_the_audit_spool() -> None:
    from ocspd.config import AuditConfig

    service = unit("ocspd.service")["Service"]
    directory = _example_config()["audit"]["spool_dir"]
    assert directory == AuditConfig().spool_dir
    assert directory in service["ReadWritePaths"][-1].split()
    assert "/var/lib/" + service["StateDirectory"][-1] == directory


def test_crlgen_may_write_the_crl_directory() -> None:
    service = unit("crlgen.service")["Service"]
    directory = _example_config()["crl"]["directory"]
    assert directory == CrlConfig().directory
    assert directory in service["ReadWritePaths"][-1].split()
    assert "/var/lib/" + service["StateDirectory"][-1] == directory


def test_environment_example_names_known_variables() -> None:
    text = (UNITS / "ocspd.env.example").read_text()
    names = re.findall(r"^#?([A-Z][A-Z0-9_]*)=", text, re.MULTILINE)
    assert names
    unknown = sorted(set(names) - set(ENV_OVERRIDES))
    assert not unknown, f"not read by ocspd/config.py: {unknown}"


def test_systemd_analyze(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        # systemd-analyze verify works offline, without systemd as PID 1.
        missing("systemd-analyze is not installed (apt-get install systemd)")
    # verify checks that ExecStart= exists: point it at stand-ins for the installed commands.
    (tmp_path / "bin").mkdir()
    for command in ("ocspd", "crlgen"):
        stub = tmp_path / "bin" / command
        stub.write_text("#!/bin/sh\n")
        stub.chmod(0o755)
    for name in UNIT_COMMANDS:
        text = (UNITS / name).read_text().replace(INSTALL_BIN, f"{tmp_path}/bin/")
        (tmp_path / name).write_text(text)
    units = [tmp_path / name for name in sorted(UNIT_COMMANDS)]
    result = _run(analyze, "verify", *units)
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr
    # Exposure 0 (locked down) to 10; ocspd's units score 1.5 ("OK"). Fail above 2.0.
    for path in units:
        result = _run(analyze, "security", "--offline=true", "--threshold=20", path)
        assert result.returncode == 0, result.stdout[-1500:] + result.stderr
