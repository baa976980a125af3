"""Alerting rules and dashboard: well formed, and every metric and label they use is exported."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest
import yaml

from _readme import names_in, table
from jackpot import JackpotEngine

from .conftest import samples

OPS = Path(__file__).resolve().parents[2] / "ops"
ALERTS = OPS / "prometheus" / "alerts.yml"
ALERT_TESTS = OPS / "prometheus" / "alerts_test.yml"
DASHBOARD = OPS / "grafana" / "jackpot.json"

# Labels Prometheus adds or PromQL makes, not the exporter.
SCRAPE_LABELS = {"instance", "job", "le"}

METRIC = re.compile(r"\bjackpot_[a-z_]+\b")
GROUPING = re.compile(r"\b(?:by|on|ignoring|without)\s*\(([^)]*)\)")
SELECTOR = re.compile(r"(\bjackpot_[a-z_]+)\{([^}]*)\}")


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory,
             blinded: Callable[[], AbstractContextManager[None]]) -> dict[str, set[str]]:
    """Every series name an engine exports, with its label names, after exercising each one."""
    path = tmp_path_factory.mktemp("alerts") / "pools.db"
    with JackpotEngine.open(path) as a, JackpotEngine.open(path) as b:
        b.contribute("1", groups="minor")
        a.contribute("1", groups="minor")            # a reload as the lock is taken
        with blinded():
            b.contribute("1", groups="minor")
            a.contribute("1", groups="minor")        # a version conflict and a retry
        a._pools["mega"].actor_ref.stop()
        a.contribute("1", groups="mega")             # an actor restart
        a.process_win("major")
        found: dict[str, set[str]] = {}
        for name, labels in samples(a):
            found.setdefault(name, set()).update(k for k, _ in labels)
    return found


def _rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def _dashboard_exprs() -> list[str]:
    doc = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in doc["panels"] for t in p["targets"]]


def test_the_exporter_exposes_the_documented_series(exported: dict[str, set[str]]) -> None:
    expected = {
        "jackpot_operations_total": {"operation", "outcome"},
        "jackpot_retries_total": {"operation", "level"},
        "jackpot_version_conflicts_total": {"operation", "level"},
        "jackpot_cache_reloads_total": {"operation", "level"},
        "jackpot_busy_incidents_total": {"operation"},
        "jackpot_lock_timeouts_total": {"operation"},
        "jackpot_actor_restarts_total": {"actor"},
        "jackpot_operation_duration_seconds_bucket": {"operation", "le"},
        "jackpot_operation_duration_seconds_count": {"operation"},
        "jackpot_operation_duration_seconds_sum": {"operation"},
        "jackpot_lock_wait_seconds_bucket": {"lock", "operation", "le"},
        "jackpot_lock_wait_seconds_count": {"lock", "operation"},
        "jackpot_lock_wait_seconds_sum": {"lock", "operation"},
        "jackpot_level_amount": {"level"},
        "jackpot_level_reserve": {"level"},
        "jackpot_level_version": {"level"},
        "jackpot_health_status": {"status"},
    }
    assert {k: v for k, v in exported.items() if not k.endswith("_created")} == expected


def test_the_readmes_metrics_table_is_what_the_engine_exports(
        exported: dict[str, set[str]]) -> None:
    series = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_count", "_sum")}
    documented: dict[str, set[str]] = {}
    for names, kind, labels, _ in table("metric", "type", "labels", "meaning"):
        for name in names_in(names):
            for suffix in series[kind]:
                documented[name.removesuffix("_total") + suffix] = {
                    *labels.split(", "), *({"le"} if suffix == "_bucket" else ())}
    assert {k: v for k, v in exported.items() if not k.endswith("_created")} == documented


def test_the_rules_are_well_formed() -> None:
    rules = _rules()
    assert {r["alert"] for r in rules} == {
        "JackpotHealthFailing", "JackpotHealthDegraded", "JackpotHighRetryRate",
        "JackpotHighConflictRate", "JackpotOperationsFailingOnConflict", "JackpotBusyIncidents",
        "JackpotLockTimeouts", "JackpotLockWaitP99High", "JackpotOperationLatencyP99High",
        "JackpotOperationErrors", "JackpotOperationOutcomeUnknown", "JackpotActorRestarts"}
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        assert rule["expr"].count("(") == rule["expr"].count(")"), rule["alert"]


@pytest.mark.parametrize("source", ["alerts", "dashboard"])
def test_every_metric_and_label_used_is_exported(exported: dict[str, set[str]],
                                                 source: str) -> None:
    exprs = [r["expr"] for r in _rules()] if source == "alerts" else _dashboard_exprs()
    assert exprs
    for expr in exprs:
        names = set(METRIC.findall(expr))
        assert names, expr
        assert names <= exported.keys(), (expr, names - exported.keys())
        labels = set().union(*(exported[n] for n in names)) | SCRAPE_LABELS
        for group in GROUPING.findall(expr):
            used = {label.strip() for label in group.split(",") if label.strip()}
            assert used <= labels, (expr, used - labels)
        for name, matchers in SELECTOR.findall(expr):
            used = {m.split("=")[0].strip().rstrip("!~") for m in matchers.split(",")}
            assert used <= exported[name] | SCRAPE_LABELS, (expr, used)


def test_the_alerts_cover_what_operators_asked_for() -> None:
    exprs = {r["alert"]: r["expr"] for r in _rules()}
    assert "jackpot_retries_total" in exprs["JackpotHighRetryRate"]
    assert "jackpot_version_conflicts_total" in exprs["JackpotHighConflictRate"]
    assert "jackpot_busy_incidents_total" in exprs["JackpotBusyIncidents"]
    assert "histogram_quantile(0.99" in exprs["JackpotLockWaitP99High"]
    assert "jackpot_lock_wait_seconds_bucket" in exprs["JackpotLockWaitP99High"]
    assert 'jackpot_health_status{status="failing"}' in exprs["JackpotHealthFailing"]


def test_the_dashboard_shows_amounts_rates_latencies_conflicts_retries() -> None:
    doc = json.loads(DASHBOARD.read_text())
    assert doc["uid"] == "jackpot-engine"
    assert [v["name"] for v in doc["templating"]["list"]] == ["datasource", "instance"]
    panels = {p["title"]: " ".join(t["expr"] for t in p["targets"]) for p in doc["panels"]}
    wanted = {
        "Pool amounts": "jackpot_level_amount",
        "Operations per second by outcome": "rate(jackpot_operations_total",
        "Operation latency (p50, p99)": "jackpot_operation_duration_seconds_bucket",
        "Lock wait p99": "jackpot_lock_wait_seconds_bucket",
        "Version conflicts per second": "rate(jackpot_version_conflicts_total",
        "Retries per second": "rate(jackpot_retries_total",
        "Health": "jackpot_health_status",
    }
    for title, metric in wanted.items():
        assert metric in panels[title], title
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids))


def test_promtool_accepts_the_rules_and_their_unit_tests() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("CI", "").lower() in ("true", "1", "yes"):
            pytest.fail("promtool is not on the PATH: CI must run the rules' unit tests "
                        "(.ci/run takes it out of Debian's prometheus package)", pytrace=False)
        pytest.skip("promtool is not on the PATH (it comes with Prometheus); the YAML checks "
                    "above still ran")
    check = subprocess.run([promtool, "check", "rules", str(ALERTS)], capture_output=True, text=True,
                timeout=60, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS: 12 rules found" in check.stdout
    unit = subprocess.run([promtool, "test", "rules", str(ALERT_TESTS)], capture_output=True, text=True,
               timeout=60, check=False)
    assert unit.returncode == 0, unit.stdout + unit.stderr
