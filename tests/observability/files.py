"""Readers for deploy/prometheus, deploy/grafana and the metrics contract of docs/design.md."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = REPO / "deploy" / "prometheus"
PROMETHEUS_CONFIG = PROMETHEUS_DIR / "prometheus.yml"
RULE_FILES = sorted((PROMETHEUS_DIR / "rules").glob("*.yml"))
RULE_TESTS = sorted((PROMETHEUS_DIR / "tests").glob("*.yml"))
GRAFANA_DIR = REPO / "deploy" / "grafana"
DASHBOARD = GRAFANA_DIR / "dashboards" / "creditledger.json"
DESIGN = REPO / "docs" / "design.md"

# The scrape job the rules and the dashboard select, and the compose target.
JOB = "creditledger"
COMPOSE_TARGET = "ledger:9464"

# Labels Prometheus itself adds or that histograms carry, beside the contract's.
BUILTIN_LABELS = frozenset({"job", "instance", "le", "__name__"})
_SERIES_SUFFIXES = ("_bucket", "_sum", "_count", "_created")
# A metric name of ours, not part of a recording rule name (those contain ':').
_METRIC = re.compile(r"(?<![\w:])((?:grpc_server|ledger)_\w+)(?![\w:])")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)")
_MATCHER_LABEL = re.compile(r"[{,]\s*(\w+)\s*(?:=~|!~|!=|=)")
_LEGEND_LABEL = re.compile(r"\{\{\s*(\w+)\s*\}\}")
_VARIABLE = re.compile(r"\$\{(\w+)\}|\$(\w+)")


def load_yaml(path: Path) -> dict[str, Any]:
    """One YAML document that must be a mapping."""
    doc = yaml.safe_load(path.read_text())
    if not isinstance(doc, dict):
        raise TypeError(f"{path}: not a YAML mapping")
    return doc


def rules(kind: str) -> list[dict[str, Any]]:
    """Every rule of deploy/prometheus/rules with the key `kind` ("alert" or "record")."""
    found: list[dict[str, Any]] = []
    for path in RULE_FILES:
        for group in load_yaml(path)["groups"]:
            found.extend(rule for rule in group["rules"] if kind in rule)
    return found


@dataclass(frozen=True)
class PanelQuery:
    """One query of one dashboard panel."""

    panel: str
    ref_id: str
    expr: str
    legend: str


def dashboard() -> dict[str, Any]:
    """The dashboard JSON."""
    value = json.loads(DASHBOARD.read_text())
    if not isinstance(value, dict):
        raise TypeError(f"{DASHBOARD}: not a JSON object")
    return value


def panels(dash: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, including those nested in collapsed rows."""
    out: list[dict[str, Any]] = []
    for panel in dash["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def panel_queries(dash: dict[str, Any]) -> list[PanelQuery]:
    """Every Prometheus query of every panel, in dashboard order."""
    return [
        PanelQuery(p["title"], t["refId"], t["expr"], t.get("legendFormat", ""))
        for p in panels(dash)
        for t in p.get("targets", [])
    ]


def expand_variables(expr: str, values: dict[str, str]) -> str:
    """expr with Grafana's $name / ${name} replaced; KeyError names one missing from values."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in values:
            raise KeyError(f"no value for the dashboard variable ${name} in {expr!r}")
        return values[name]

    return _VARIABLE.sub(value, expr)


def contract() -> dict[str, set[str]]:
    """The metric names of docs/design.md's Metrics table, each with its label names."""
    text = DESIGN.read_text()
    section = text.split("## Metrics", 1)[1].split("\n## ", 1)[0]
    found: dict[str, set[str]] = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not re.match(r"(?:grpc_server|ledger)_", cells[0]):
            continue
        labels = set(re.findall(r"(?:^|,\s*)([a-z_]+)", re.sub(r"\([^)]*\)", "", cells[2])))
        for name in re.findall(r"(?:grpc_server|ledger)_\w+", cells[0]):
            found[name] = labels
    return found


def pushed_contract() -> set[str]:
    """The metric names of docs/design.md's table of metrics pushed by the scheduled verify.

    A batch job pushes them to a Pushgateway; the ledger process never serves them,
    so the dashboard (run against a live ledger) does not show them; alerts read them.
    """
    text = DESIGN.read_text()
    section = text.split("## Metrics pushed by `ledger verify`", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"\bledger_verify_\w+", section))


def metric_names(expr: str) -> set[str]:
    """The contract metric names an expression reads (histogram series mapped to their base)."""
    names = set()
    for name in _METRIC.findall(expr):
        for suffix in _SERIES_SUFFIXES:
            if name.endswith(suffix) and not name.endswith("_total"):
                name = name.removesuffix(suffix)
                break
        names.add(name)
    return names


def label_names(expr: str, legend: str = "") -> set[str]:
    """The label names an expression groups or matches by, and those its legend shows."""
    names: set[str] = set()
    for group in _GROUPING.findall(expr):
        names.update(part.strip() for part in group.split(",") if part.strip())
    names.update(_MATCHER_LABEL.findall(expr))
    names.update(_LEGEND_LABEL.findall(legend))
    return names


def prometheus_config_for(target: str, interval: str) -> dict[str, Any]:
    """deploy/prometheus/prometheus.yml pointed at `target`, scraping and evaluating every `interval`.

    Rule files become absolute so the config can be written anywhere.
    """
    config = load_yaml(PROMETHEUS_CONFIG)
    config["global"]["scrape_interval"] = interval
    config["global"]["evaluation_interval"] = interval
    config["rule_files"] = [str(PROMETHEUS_DIR / path) for path in config["rule_files"]]
    jobs = [job for job in config["scrape_configs"] if job["job_name"] == JOB]
    if len(jobs) != 1:
        raise LookupError(
            f"{PROMETHEUS_CONFIG}: expected one scrape job {JOB!r}, found {len(jobs)}"
        )
    static = jobs[0]["static_configs"]
    if [s["targets"] for s in static] != [[COMPOSE_TARGET]]:
        raise LookupError(f"{PROMETHEUS_CONFIG}: expected the one target {COMPOSE_TARGET}")
    static[0]["targets"] = [target]
    # Prometheus refuses a scrape timeout longer than the interval.
    jobs[0]["scrape_timeout"] = interval
    return config
