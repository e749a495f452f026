"""The Grafana dashboards of examples/grafana and their provisioning in the compose demo.

No Grafana or InfluxDB can run here, so what a person would see is checked in parts:
* every Flux query of every panel and variable, with Grafana's variables filled in as Grafana fills
  them, is parsed and type-checked by InfluxData's own Flux front end (npm @influxdata/flux, its
  WebAssembly build; tests/flux/check.mjs);
* every measurement, field and tag a query names exists in the daemon's `--schema` (MetricsPort
  families: in tor's own MetricsPort bodies, tests/data/metricsport/) for the metric set the
  panel's description says it needs, and every panel says which;
* the dashboards are valid dashboards (uids, datasource, grid, schemaVersion), the provisioning
  files load and point at what the compose file mounts;
* the data is there for real: the daemon polls real tors (DisableNetwork 1) with METRIC_SETS=all
  and writes to a real VictoriaMetrics, and every control-port series the panels read exists for
  each kind of node that writes it.
What cannot be checked here: that InfluxDB runs the queries and returns the shapes the panels
expect (no Flux engine runs offline), and how Grafana draws them.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from support import ROOT, Daemon, Tor, VictoriaMetrics, free_port

GRAFANA = ROOT / "examples" / "grafana"
COMPOSE_DIR = ROOT / "examples" / "compose"
FLUX_DIR = ROOT / "tests" / "flux"
DATASOURCE_UID = "tor2influxdb2-influxdb"
DASHBOARD_FILES = sorted((GRAFANA / "dashboards").glob("*.json"))
CONTROL_SETS = ("core", "status", "relay", "accounting", "guards", "bandwidth")

# --------------------------------------------------------------------------- the daemon's schema


@functools.cache
def schema() -> dict:
    proc = subprocess.run([sys.executable, str(ROOT / "tor_to_influxdb2.py"), "--schema"],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def parse_prometheus(text: str) -> dict[str, dict]:
    """Families of a Prometheus text body as Telegraf's metric_version=1 writes them to InfluxDB:
    measurement = family name, tags = labels, one field named after the type."""
    families: dict[str, dict] = {}
    sample = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? \S+$')
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            families[name] = {"type": kind, "labels": {}}
        elif line and not line.startswith("#"):
            m = sample.match(line)
            assert m, f"not a sample line: {line!r}"
            family = families.get(m.group(1))
            if family is None:
                continue  # _bucket/_sum/_count of a histogram
            for key, value in re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', m.group(2) or ""):
                family["labels"].setdefault(key, set()).add(value)
    return families


@functools.cache
def metricsport_from_bodies() -> dict[str, dict]:
    """The MetricsPort measurements the panels may read, from tor's own bodies."""
    out = {}
    for path in sorted((ROOT / "tests" / "data" / "metricsport").glob("*.prom")):
        for name, family in parse_prometheus(path.read_text()).items():
            if family["type"] not in ("counter", "gauge"):
                continue
            out[name] = {"measurement": name, "source": "metricsport", "set": "metricsport",
                         "tags": sorted(set(family["labels"]) | {"host", "service", "version"}),
                         "fields": [{"name": family["type"], "type": "float"}],
                         "tag_values": family["labels"]}
    return out


def schema_metricsport() -> dict[str, dict]:
    return {m["measurement"]: m for m in schema()["measurements"] if m["source"] == "metricsport"}


def measurements_for(need: str) -> dict[str, dict]:
    """What a panel that declares `need` (a set name, or "metricsport") may read."""
    if need == "metricsport":
        from_schema, bodies = schema_metricsport(), metricsport_from_bodies()
        if not from_schema:
            return bodies
        # the daemon's schema says what it writes; tor's bodies say which label values occur
        return {m: {**spec, "tag_values": bodies.get(m, {}).get("tag_values", {})} for m, spec in from_schema.items()}
    return {m["measurement"]: m for m in schema()["measurements"]
            if m["source"] == "control-port" and m["set"] == need}


# --------------------------------------------------------------------------- the dashboards


@functools.cache
def dashboards() -> dict[str, dict]:
    return {path.name: json.loads(path.read_text()) for path in DASHBOARD_FILES}


def panels(board: dict) -> list[dict]:
    out = []
    for panel in board["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))  # panels inside a collapsed row
    return out


NEEDS_RE = re.compile(r"Needs: (?:METRIC_SETS=(?P<sets>[a-z]+(?:,[a-z]+)*)|(?P<mp>tor's MetricsPort))")


def declared_needs(panel: dict) -> set[str]:
    """The metric sets (or "metricsport") a panel's description says it needs."""
    found = NEEDS_RE.findall(panel.get("description", ""))
    needs = set()
    for sets, metricsport in found:
        needs |= set(sets.split(",")) if sets else {"metricsport"}
    return needs


def queries() -> list[tuple[str, str, dict, str]]:
    """(id, dashboard, panel or variable, Flux query) of everything Grafana will send."""
    out = []
    for name, board in dashboards().items():
        for var in board["templating"]["list"]:
            if var["type"] == "query":
                out.append((f"{name} variable {var['name']}", name, var, var["query"]))
        for panel in panels(board):
            for target in panel.get("targets", []):
                out.append((f"{name} panel {panel['id']} {panel['title']!r} {target['refId']}", name, panel,
                            target["query"]))
    return out


# --------------------------------------------------------------------------- Grafana's substitution

def grafana_regex_escape(value: str) -> str:
    """Grafana's escaping for the :regex format (its regexEscape)."""
    return re.sub(r"([\\^$*+?.()|\[\]{}/])", r"\\\1", value)


def format_value(value, fmt: str | None, all_value: str | None) -> str:
    if value == "$__all":
        return all_value  # a custom "All" value is used as it is, in every format
    values = value if isinstance(value, list) else [value]
    if fmt == "regex":
        escaped = [grafana_regex_escape(v) for v in values]
        return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"
    if fmt in (None, "raw"):
        return ",".join(values) if len(values) > 1 else values[0]
    raise AssertionError(f"format :{fmt} is not emulated by this test")


def substitute(query: str, selection: dict, variables: dict) -> str:
    """The query as Grafana's InfluxDB (Flux) backend sends it: template variables first (the
    frontend), then the backend's macros, replaced the way pkg/tsdb/influxdb/flux/macros.go does
    (any `word.timeRangeStart`, `word.windowPeriod`, ..., then $__interval_ms and $__interval)."""

    def template(m: re.Match) -> str:
        name = m.group("braced") or m.group("plain")
        if name.startswith("__"):
            return m.group(0)  # Grafana's own ($__interval_ms, ...): the backend's turn
        assert name in selection, f"query uses the variable {name!r}, which the dashboard does not define"
        return format_value(selection[name], m.group("fmt"), variables[name].get("allValue"))

    text = re.sub(r"\$\{(?P<braced>[A-Za-z0-9_]+)(?::(?P<fmt>[a-z]+))?\}|\$(?P<plain>[A-Za-z_][A-Za-z0-9_]*)",
                  template, query)
    macros = {"timeRangeStart": "2026-12-01T10:00:00Z", "timeRangeStop": "2026-12-01T16:00:00.25Z",
              "windowPeriod": "1m0s", "bucket": '"tor"', "defaultBucket": '"tor"', "organization": '"tor2influxdb2"'}
    text = re.sub(r"([a-zA-Z]+)\.([a-zA-Z]+)", lambda m: macros.get(m.group(2), m.group(0)), text)
    text = text.replace("$__interval_ms", "60000").replace("$__interval", "1m")
    leftover = re.search(r"\$\{|\$[A-Za-z_]|\[\[", text)
    assert not leftover, f"unsubstituted variable syntax at {text[leftover.start():leftover.start() + 30]!r}"
    return text


SELECTIONS = {
    # what a person picks: everything, or a few tors with names that need escaping
    "all": {"bucket": "tor", "service": "$__all", "host": "$__all"},
    "some": {"bucket": "tor", "service": ["tor", "relays-eu"], "host": ["relay-1", "exit.home", "my relay/2"]},
}


def selection_for(board: dict, kind: str) -> dict:
    chosen = dict(SELECTIONS[kind])
    for var in board["templating"]["list"]:
        if not var.get("multi") and isinstance(chosen.get(var["name"]), list):
            chosen[var["name"]] = chosen[var["name"]][-1]
        if not var.get("includeAll") and chosen.get(var["name"]) == "$__all":
            chosen[var["name"]] = "exit.home"
    return chosen


# --------------------------------------------------------------------------- the Flux checker

def npm_modules() -> Path:
    """tests/flux/node_modules, installed once with `npm ci` from the pinned lock file."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        pytest.skip("node and npm are needed to run InfluxData's Flux parser (@influxdata/flux); "
                    "install them (apt-get install nodejs npm) to check the dashboards' queries")
    package = FLUX_DIR / "node_modules" / "@influxdata" / "flux"
    lock = json.loads((FLUX_DIR / "package-lock.json").read_text())
    wanted = lock["packages"]["node_modules/@influxdata/flux"]["version"]
    installed = package / "package.json"
    if not installed.is_file() or json.loads(installed.read_text()).get("version") != wanted:
        proc = subprocess.run([npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund"], cwd=FLUX_DIR,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, f"npm ci failed in {FLUX_DIR}:\n{proc.stdout}{proc.stderr}"
    return package


def flux_check(items: list[dict]) -> dict[str, dict]:
    package = npm_modules()
    proc = subprocess.run(["node", str(FLUX_DIR / "check.mjs"), str(package)], input=json.dumps(items),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return {r["id"]: r for r in json.loads(proc.stdout)}


@functools.cache
def checked() -> dict[str, dict]:
    """Every query, under every selection, through the Flux parser and type checker."""
    items = []
    for qid, name, _, query in queries():
        board = dashboards()[name]
        variables = {v["name"]: v for v in board["templating"]["list"]}
        for kind in SELECTIONS:
            items.append({"id": f"{qid} [{kind}]", "query": substitute(query, selection_for(board, kind), variables)})
    return flux_check(items)


def test_the_checker_catches_what_influxdb_would_refuse():
    """The checker itself: a typo in a function, an argument or a type, and a syntax error."""
    bad = {
        "syntax": 'from(bucket: "tor" |> range(start: -1h)',
        "function": 'from(bucket: "tor") |> range(start: -1h) |> derivitive(unit: 1s)',
        "argument": 'from(bucket: "tor") |> range(start: -1h) |> derivative(unt: 1s)',
        "type": 'from(bucket: "tor") |> range(start: -1h) |> map(fn: (r) => ({r with _value: float(v: 1) - 1}))',
        "interpolation": 'from(bucket: "${bucket}") |> range(start: -1h)',  # a variable Grafana did not fill
    }
    good = 'from(bucket: "tor") |> range(start: -1h) |> derivative(unit: 1s, nonNegative: true)'
    results = flux_check([{"id": k, "query": q} for k, q in bad.items()] + [{"id": "good", "query": good}])
    assert results["syntax"]["errors"], results["syntax"]
    for key in ("function", "argument", "type", "interpolation"):
        assert not results[key]["errors"] and results[key]["analysis"], (key, results[key])
    assert not results["good"]["errors"] and results["good"]["analysis"] is None, results["good"]


def test_every_query_parses_and_type_checks():
    results = checked()
    assert len(results) == len(queries()) * len(SELECTIONS)
    failed = {qid: r["errors"] or r["analysis"] for qid, r in results.items() if r["errors"] or r["analysis"]}
    assert not failed, json.dumps(failed, indent=1)


# --------------------------------------------------------------------------- names in the queries

BUILTIN_COLUMNS = {"_time", "_value", "_field", "_measurement", "_start", "_stop"}
COLUMN_ARGS = {  # function -> arguments that name existing columns
    "group": ("columns",), "keep": ("columns",), "drop": ("columns",), "sort": ("columns",),
    "pivot": ("rowKey", "columnKey", "valueColumn"), "duplicate": ("column",), "distinct": ("column",),
    "rename": (), "aggregateWindow": ("column",), "derivative": ("columns",),
}


def _strings(node) -> list[str]:
    if node.get("type") == "StringLiteral":
        return [node["value"]]
    if node.get("type") == "ArrayExpression":
        return [v for e in node["elements"] for v in _strings(e)]
    return []


def _regex_alternatives(pattern: str) -> list[str] | None:
    m = re.fullmatch(r"\^\(?([A-Za-z0-9_|]+)\)?\$", pattern)
    return m.group(1).split("|") if m else None


class Names:
    """What one query names: measurements and fields compared with literals, tags compared with
    literals, columns it reads (r.x, columns: [...]) and columns it creates."""

    def __init__(self, ast: dict):
        self.measurements: set[str] = set()
        self.fields: set[str] = set()
        self.read: set[str] = set()
        self.created: set[str] = set()
        self.tag_literals: set[tuple[str, str]] = set()
        self._walk(ast, params=frozenset())

    def _walk(self, node, params):
        if isinstance(node, list):
            for item in node:
                self._walk(item, params)
            return
        if not isinstance(node, dict):
            return
        kind = node.get("type")
        if kind == "FunctionExpression":
            params = params | {p["key"]["name"] for p in node.get("params", [])}
        elif kind == "MemberExpression" and node["object"].get("name") in params:
            prop = node["property"]
            self.read.add(prop.get("name") or prop.get("value"))
        elif kind == "BinaryExpression" and node["left"].get("type") == "MemberExpression" \
                and node["left"]["object"].get("name") in params:
            prop = node["left"]["property"]
            column, right = prop.get("name") or prop.get("value"), node["right"]
            values = ([right["value"]] if right.get("type") == "StringLiteral" and node["operator"] == "=="
                      else _regex_alternatives(right["value"]) if right.get("type") == "RegexpLiteral"
                      and column in ("_measurement", "_field") else [])
            if column == "_measurement":
                assert values, f"cannot tell the measurements of: {node['location']['source']}"
                self.measurements |= set(values)
            elif column == "_field":
                assert values, f"cannot tell the fields of: {node['location']['source']}"
                self.fields |= set(values)
            elif values:
                self.tag_literals |= {(column, v) for v in values}
        elif "callee" in node:  # a CallExpression (as the call of a pipe it has no "type")
            self._call(node)
        elif kind == "ObjectExpression" and node.get("with") is not None:
            self.created |= {p["key"].get("name") or p["key"].get("value") for p in node["properties"]}
        for key, value in node.items():
            if key != "location":
                self._walk(value, params)

    def _call(self, node):
        callee = node["callee"]
        name = callee.get("name") or callee.get("property", {}).get("name")
        args = {p["key"]["name"]: p["value"] for a in node.get("arguments") or [] for p in a.get("properties", [])}
        for arg in COLUMN_ARGS.get(name, ()):
            if arg in args:
                self.read |= set(_strings(args[arg]))
        if name == "duplicate" and "as" in args:
            self.created |= set(_strings(args["as"]))
        if name == "rename" and args.get("columns", {}).get("type") == "ObjectExpression":
            for prop in args["columns"]["properties"]:
                self.read.add(prop["key"].get("name") or prop["key"].get("value"))
                self.created |= set(_strings(prop["value"]))
        if name == "map":  # a record without `with` replaces the row: its keys are the new columns
            body = args.get("fn", {}).get("body", {})
            if body.get("type") == "ObjectExpression":
                self.created |= {p["key"].get("name") or p["key"].get("value") for p in body["properties"]}


def names_of(qid: str) -> Names:
    return Names(checked()[f"{qid} [all]"]["ast"])


def test_every_panel_names_the_metric_set_it_needs():
    """A person must learn from the panel why it is empty: every panel with a query says which
    metric set (or the MetricsPort) it needs, and it needs exactly what its queries read."""
    for qid, _, item, _ in queries():
        if "targets" not in item:
            continue  # a variable
        needs = declared_needs(item)
        assert needs, f"{qid}: the description names no metric set (a 'Needs: METRIC_SETS=...' line)"
        assert needs <= set(CONTROL_SETS) | {"metricsport"}, f"{qid}: unknown need {needs}"
        used = set()
        for m in names_of(qid).measurements:
            owner = [need for need in needs if m in measurements_for(need)]
            assert owner, f"{qid}: measurement {m!r} is not in the schema of {sorted(needs)}"
            used |= set(owner)
        assert used == needs, f"{qid}: says it needs {sorted(needs)} but reads {sorted(used)}"
        if "metricsport" not in needs:
            assert "off by default" in item["description"] or needs == {"core"}, qid
            assert "No data" in item["description"] or needs == {"core"}, \
                f"{qid}: say what the panel shows while its set is off"


def name_problems(names: Names, needs: set[str]) -> list[str]:
    """What in one query's names the daemon never writes, for a panel that needs `needs`."""
    known = {}
    for need in needs:
        known.update(measurements_for(need))
    if not names.measurements:
        return ["reads no measurement"]
    problems = [f"measurement {m!r} is not in the schema of {sorted(needs)}"
                for m in sorted(names.measurements - set(known))]
    specs = [known[m] for m in names.measurements if m in known]
    fields = {f["name"] for s in specs for f in s["fields"]}
    tags = {t for s in specs for t in s["tags"]}
    if not names.fields:
        problems.append(f"reads every field of {sorted(names.measurements)}: name the ones it shows")
    problems += [f"field {f!r} is not in {sorted(names.measurements)}" for f in sorted(names.fields - fields)]
    problems += [f"reads column {c!r}, which neither the schema nor the query makes"
                 for c in sorted(names.read - BUILTIN_COLUMNS - tags - fields - names.created)]
    for tag, value in sorted(names.tag_literals):
        if tag not in tags:
            problems.append(f"compares {tag!r}, not a tag of {sorted(names.measurements)}")
            continue
        values = set().union(*(s.get("tag_values", {}).get(tag, set()) for s in specs))
        if values and value not in values:
            problems.append(f"{tag}={value!r} never occurs (tor has {sorted(values)})")
    return problems


def test_every_name_a_query_uses_is_written_by_the_daemon():
    """Measurements, fields, tags and tag values: all in the schema (or tor's own MetricsPort
    bodies), for the metric set the panel needs; no query reads a column nothing makes."""
    problems = {}
    for qid, _, item, _ in queries():
        names = names_of(qid)
        if "targets" not in item and not names.measurements:
            assert re.match(r"buckets\(\)", item["query"]), f"{qid}: reads no measurement"
            continue  # the bucket list
        found = name_problems(names, declared_needs(item) or {"core"})  # variables read core
        if found:
            problems[qid] = found
    assert not problems, json.dumps(problems, indent=1)


def test_the_name_check_catches_a_wrong_name():
    """The name check itself: a query naming what the daemon does not write is refused."""
    good = ('from(bucket: "tor") |> range(start: -1h) |> filter(fn: (r) => r._measurement == "{m}" '
            'and r._field == "{f}" and r.{tag} == "{value}") |> group(columns: ["host", "{column}"])')
    cases = {
        "good": dict(m="tor_relay_dos_total", f="counter", tag="type", value="conn_rejected", column="type"),
        "measurement": dict(m="tor_relay_dos", f="counter", tag="type", value="conn_rejected", column="type"),
        "field": dict(m="tor_relay_dos_total", f="gauge", tag="type", value="conn_rejected", column="type"),
        "tag": dict(m="tor_relay_dos_total", f="counter", tag="kind", value="conn_rejected", column="type"),
        "tag value": dict(m="tor_relay_dos_total", f="counter", tag="type", value="conn_refused", column="type"),
        "column": dict(m="tor_relay_dos_total", f="counter", tag="type", value="conn_rejected", column="hostname"),
    }
    results = flux_check([{"id": k, "query": good.format(**v)} for k, v in cases.items()])
    assert name_problems(Names(results["good"]["ast"]), {"metricsport"}) == []
    for case in cases.keys() - {"good"}:
        assert name_problems(Names(results[case]["ast"]), {"metricsport"}), case
    core = flux_check([{"id": "q", "query": 'from(bucket: "tor") |> range(start: -1h) |> filter(fn: (r) => '
                                                 'r._measurement == "traffic" and r._field == "read")'}])["q"]
    assert name_problems(Names(core["ast"]), {"core"}) == []
    assert name_problems(Names(core["ast"]), {"status"}), "traffic is not in the status set"


def test_metricsport_panels_match_the_daemons_schema():
    """Once the daemon's MetricsPort source lands, its --schema must have every family and label
    the MetricsPort panels read (until then they are checked against tor's bodies only)."""
    if not schema_metricsport():
        pytest.skip("the daemon's --schema has no MetricsPort measurements yet: the MetricsPort panels "
                    "were checked against tor 0.4.9's own bodies (tests/data/metricsport) instead")
    from_bodies = metricsport_from_bodies()
    for qid, _, item, _ in queries():
        if "metricsport" in declared_needs(item):
            for m in names_of(qid).measurements:
                assert m in schema_metricsport(), f"{qid}: {m} is not in the daemon's MetricsPort schema"
                assert set(from_bodies[m]["tags"]) <= set(schema_metricsport()[m]["tags"]), (qid, m)


# --------------------------------------------------------------------------- the dashboard JSON

def test_dashboards_are_valid_and_consistent():
    boards = dashboards()
    assert {"tor-fleet.json", "tor-detail.json"} <= set(boards), boards.keys()
    uids = [b["uid"] for b in boards.values()]
    assert len(set(uids)) == len(uids), uids
    for name, board in boards.items():
        assert isinstance(board.get("schemaVersion"), int) and board["schemaVersion"] >= 36, name
        assert board["title"] and re.fullmatch(r"[A-Za-z0-9_-]{1,40}", board["uid"]), name
        assert "id" not in board or board["id"] is None, f"{name}: a provisioned dashboard carries no id"
        ids = [p["id"] for p in panels(board)]
        assert len(set(ids)) == len(ids), f"{name}: duplicate panel ids"
        variables = [v["name"] for v in board["templating"]["list"]]
        assert len(set(variables)) == len(variables) and {"bucket", "host", "service"} <= set(variables), name
        for var in board["templating"]["list"]:
            if var["type"] == "query":
                assert var["datasource"]["uid"] == DATASOURCE_UID, (name, var["name"])
            if var.get("includeAll"):
                assert var.get("allValue") == ".*", (name, var["name"])
        cells = set()
        for panel in board["panels"]:
            g = panel["gridPos"]
            assert g["w"] >= 1 and g["h"] >= 1 and g["x"] >= 0 and g["y"] >= 0, (name, panel["title"])
            assert g["x"] + g["w"] <= 24, f"{name}: {panel['title']!r} is wider than 24 columns"
            mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
            assert not mine & cells, f"{name}: {panel['title']!r} overlaps another panel"
            cells |= mine
        for panel in panels(board):
            if panel["type"] == "row":
                continue
            assert panel["title"] and panel.get("description"), (name, panel["id"])
            assert panel["datasource"]["uid"] == DATASOURCE_UID, (name, panel["title"])
            assert panel["targets"], (name, panel["title"])
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == DATASOURCE_UID, (name, panel["title"])
        # every datasource reference anywhere in the file is the provisioned one
        refs = re.findall(r'"datasource":\s*(\{[^{}]*\})', json.dumps(board))
        assert refs and all(json.loads(r)["uid"] == DATASOURCE_UID for r in refs), name


def test_dashboards_are_what_build_py_writes():
    proc = subprocess.run([sys.executable, str(GRAFANA / "build.py"), "--check"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_links_between_the_dashboards_point_at_existing_ones():
    uids = {b["uid"] for b in dashboards().values()}
    for name, board in dashboards().items():
        for url in re.findall(r'"url":\s*"(/d/[^"?]+)', json.dumps(board)):
            assert url[len("/d/"):] in uids, f"{name}: link to {url}, no such dashboard"


# --------------------------------------------------------------------------- provisioning, compose

def compose() -> dict:
    return yaml.safe_load((COMPOSE_DIR / "compose.yaml").read_text())


def host_path(service: dict, container_path: str) -> Path:
    """The file or directory of this repository that the compose service mounts at container_path."""
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith(".") and (container_path == target or container_path.startswith(target + "/")):
            return (COMPOSE_DIR / source / os.path.relpath(container_path, target)).resolve()
    raise AssertionError(f"nothing of the repository is mounted at {container_path}")


def test_provisioning_loads_and_points_at_what_compose_mounts():
    stack = compose()
    grafana, influx = stack["services"]["grafana"], stack["services"]["influxdb"]
    datasources = yaml.safe_load((GRAFANA / "provisioning/datasources/tor2influxdb2.yaml").read_text())
    assert datasources["apiVersion"] == 1
    (source,) = datasources["datasources"]
    assert source["uid"] == DATASOURCE_UID and source["type"] == "influxdb"
    assert source["jsonData"]["version"] == "Flux"
    assert source["jsonData"]["organization"] == influx["environment"]["DOCKER_INFLUXDB_INIT_ORG"]
    assert source["jsonData"]["defaultBucket"] == influx["environment"]["DOCKER_INFLUXDB_INIT_BUCKET"]
    assert source["url"] == "http://influxdb:8086"
    # the token comes from a secret file that the grafana service has, never inline
    token = source["secureJsonData"]["token"]
    m = re.fullmatch(r"\$__file\{/run/secrets/([a-z_]+)\}", token)
    assert m and m.group(1) in grafana["secrets"], token
    assert stack["secrets"][m.group(1)]["file"] == stack["secrets"]["influx_token"]["file"]
    # Grafana finds the provisioning files where compose mounts them
    assert host_path(grafana, "/etc/grafana/provisioning/datasources") == GRAFANA / "provisioning/datasources"
    providers = yaml.safe_load((GRAFANA / "provisioning/dashboards/tor2influxdb2.yaml").read_text())
    assert providers["apiVersion"] == 1
    (provider,) = providers["providers"]
    assert provider["type"] == "file"
    assert host_path(grafana, "/etc/grafana/provisioning/dashboards") == GRAFANA / "provisioning/dashboards"
    assert host_path(grafana, provider["options"]["path"]) == GRAFANA / "dashboards"
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert host_path(grafana, home).is_file(), home
    assert json.loads(host_path(grafana, home).read_text())["uid"] == "tor2influxdb2-fleet"


def test_compose_grafana_service():
    stack = compose()
    grafana = stack["services"]["grafana"]
    image, _, tag = grafana["image"].partition(":")
    assert image in ("grafana/grafana", "grafana/grafana-oss") and re.fullmatch(r"\d+\.\d+\.\d+", tag), \
        f"pin the Grafana image to a release: {grafana['image']}"
    assert grafana["ports"] == ["127.0.0.1:3000:3000"], "Grafana must be reachable from this machine only"
    env = grafana["environment"]
    assert env["GF_SECURITY_ADMIN_PASSWORD__FILE"] == "/run/secrets/grafana_admin_password"
    assert "GF_SECURITY_ADMIN_PASSWORD" not in env
    assert "grafana_admin_password" in grafana["secrets"]
    password = COMPOSE_DIR / stack["secrets"]["grafana_admin_password"]["file"]
    assert password.is_file() and password.read_text().strip(), password
    assert password.stat().st_mode & 0o004, "Grafana (uid 472) must be able to read the secret"
    assert grafana["depends_on"]["influxdb"]["condition"] == "service_healthy"
    assert stack["services"]["tor2influxdb2"]["environment"]["METRIC_SETS"] == "all"
    # nothing but the two UIs is published, and those on loopback only
    for name, service in stack["services"].items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), (name, port)
    assert not stack["services"]["tor"].get("ports")


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose is not installed")
def test_compose_file_validates():
    proc = subprocess.run(["docker-compose", "-f", "compose.yaml", "config", "-q"], cwd=COMPOSE_DIR,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def readme_sharding_snippet() -> dict:
    text = (COMPOSE_DIR / "README.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", text, re.S)
    shard_blocks = [b for b in blocks if "SHARD" in b]
    assert len(shard_blocks) == 1, "examples/compose/README.md: one yaml block with SHARD=i/N"
    return yaml.safe_load(shard_blocks[0])


def test_readme_sharding_example_runs_n_shards_with_their_own_buffers(tmp_path):
    """examples/compose/README.md's example: N services from one x- anchor, SHARD=i/N for i in
    0..N-1, every replica the same tors and its own buffer volume; it replaces the demo's single
    tor2influxdb2 service and the result is a valid compose file."""
    snippet = readme_sharding_snippet()
    anchors = [k for k in snippet if k.startswith("x-")]
    assert anchors, "the shared settings live in an x- extension field"
    shards = dict(snippet["services"])
    count = len(shards)
    assert count >= 2
    seen, volumes = set(), set()
    for name, service in shards.items():
        env = service["environment"]
        index, _, total = env["SHARD"].partition("/")
        assert int(total) == count, f"{name}: SHARD={env['SHARD']} but {count} services"
        seen.add(int(index))
        assert env["TOR_HOSTS_FILE"] == "/run/secrets/tor_hosts", "every shard polls its share of the same list"
        (buffer,) = [v for v in service["volumes"] if v.endswith(":/var/lib/tor2influxdb2")]
        volumes.add(buffer.split(":")[0])
    assert seen == set(range(count)), seen
    assert len(volumes) == count, "each shard needs its own buffer volume"
    assert volumes <= set(snippet["volumes"])
    stack = compose()
    del stack["services"]["tor2influxdb2"]
    stack["services"].update(shards)
    stack["volumes"].update(snippet["volumes"])
    for service in shards.values():
        service.get("build", {}).update(context=str(ROOT))
    path = tmp_path / "compose.yaml"
    for name, spec in stack["secrets"].items():
        spec["file"] = str((COMPOSE_DIR / spec["file"]).resolve())
    for service in stack["services"].values():
        if isinstance(service.get("build"), str):
            service["build"] = str((COMPOSE_DIR / service["build"]).resolve())
        service["volumes"] = [str((COMPOSE_DIR / v.split(":")[0]).resolve()) + v[len(v.split(":")[0]):]
                              if v.startswith(".") else v for v in service.get("volumes", [])]
    path.write_text(yaml.safe_dump(stack))
    if shutil.which("docker-compose"):
        proc = subprocess.run(["docker-compose", "-f", str(path), "config", "-q"], cwd=tmp_path,
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr


# --------------------------------------------------------------------------- the data is there

#: Fields the panels read that a tor with DisableNetwork 1 never has: it is in no consensus, so a
#: weight and flags cannot be checked here (tests/tornet.py's private network could).
NOT_CHECKABLE_OFFLINE = {("relay", "consensus_weight")} | {("relay", f"flag_{flag}") for flag in (
    "authority", "badexit", "exit", "fast", "guard", "hsdir", "middleonly", "noedconsensus", "running",
    "stable", "staledesc", "sybil", "v2dir", "valid")}


def panel_series() -> set[tuple[str, str]]:
    """(measurement, field) of every control-port series a panel or variable reads."""
    control = {m["measurement"] for m in schema()["measurements"] if m["source"] == "control-port"}
    out = set()
    for qid, *_ in queries():
        names = names_of(qid)
        for m in names.measurements & control:
            spec = next(s for s in schema()["measurements"] if s["measurement"] == m)
            out |= {(m, f["name"]) for f in spec["fields"] if f["name"] in names.fields}
    return out


def expected_on(kind: str, accounting: bool) -> set[tuple[str, str]]:
    """The panels' series a node of this kind writes, as the schema describes them."""
    out = set()
    specs = {m["measurement"]: m for m in schema()["measurements"]}
    for m, f in panel_series() - NOT_CHECKABLE_OFFLINE:
        spec = specs[m]
        field = next(x for x in spec["fields"] if x["name"] == f)
        text = field.get("description", "")
        if kind not in spec["written_by"]:
            continue
        if "relays only" in text and kind != "relay":
            continue
        if "only when enabled" in text and not accounting:
            continue
        out.add((m, f))
    return out


@pytest.fixture(scope="module")
def fleet_in_vm(tmp_path_factory):
    """A relay (ORPort, AccountingMax), a bridge, a client, and a client nobody else watches, all
    with DisableNetwork 1, polled by the daemon with METRIC_SETS=all into VictoriaMetrics."""
    import stem.control
    base = tmp_path_factory.mktemp("dash")
    tors = {
        "relay": Tor(base / "relay", extra=(f"ORPort 127.0.0.1:{free_port()}", "AssumeReachable 1",
                                            "Nickname dashrelay", "ContactInfo none", "AccountingMax 10 GBytes")),
        "bridge": Tor(base / "bridge", extra=(f"ORPort 127.0.0.1:{free_port()}", "BridgeRelay 1",
                                              "AssumeReachable 1", "Nickname dashbridge", "ContactInfo none")),
        "client": Tor(base / "client"),
        "quiet-client": Tor(base / "quiet"),
    }
    vm = VictoriaMetrics(base / "vm")
    listeners, daemon = [], None
    try:
        for tor in tors.values():
            tor.start()
        vm.start()
        # tor fills bw-event-cache (the bandwidth set) only while a controller listens to BW events,
        # as nyx does; the quiet client has no such listener.
        for kind in ("relay", "bridge", "client"):
            controller = tors[kind].controller()
            controller.add_event_listener(lambda event: None, stem.control.EventType.BW)
            listeners.append(controller)
        token = base / "token"
        token.write_text("dashboard-test-token-0123456789\n")
        daemon = Daemon({
            "TOR_HOSTS": ",".join(tor.entry(kind) for kind, tor in tors.items()),
            "INFLUX_URL": vm.url, "INFLUX_ORGANIZATION": "tor2influxdb2", "INFLUX_BUCKET": "tor",
            "INFLUX_TOKEN_FILE": str(token), "RUN_EVERY_SECONDS": "1", "METRIC_SETS": "all",
            "HEALTHCHECK_FILE": str(base / "health"), "VERBOSE": "true"}).start()
        daemon.wait_for_line(r"cycle \d+ done .*: 4/4 hosts ok", timeout=40, count=3)
        series = {(s["metric"]["__name__"], s["metric"].get("host")) for s in vm.export()}
        yield series
    finally:
        if daemon is not None:
            daemon.stop()
        for controller in listeners:
            controller.close()
        vm.stop()
        for tor in tors.values():
            tor.stop()


def test_the_series_the_panels_read_are_written(fleet_in_vm):
    """What Grafana would query, the daemon writes: every control-port (measurement, field) of the
    panels exists as a series for every kind of node that writes it (relay, bridge, client)."""
    assert panel_series(), "the panels read no control-port series"
    for host, kind, accounting in (("relay", "relay", True), ("bridge", "bridge", False),
                                   ("client", "client", False)):
        want = expected_on(kind, accounting)
        missing = sorted(f"{m}_{f}" for m, f in want if (f"{m}_{f}", host) not in fleet_in_vm)
        assert not missing, f"{kind}: the panels read series the daemon did not write: {missing}"
    # and nothing written for a kind the schema says does not write it
    assert ("guards_up", "relay") not in fleet_in_vm and ("relay_in_consensus", "client") not in fleet_in_vm


def test_bandwidth_panels_have_data_without_another_controller(fleet_in_vm):
    want = {(m, f) for m, f in panel_series() if m == "bandwidth"}
    assert want
    missing = sorted(f"{m}_{f}" for m, f in want if (f"{m}_{f}", "quiet-client") not in fleet_in_vm)
    assert not missing, missing
