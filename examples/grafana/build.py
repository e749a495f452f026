#!/usr/bin/env python3
"""Writes the two Grafana dashboards of tor2influxdb2 (dashboards/*.json) from the panel list below.

    python3 examples/grafana/build.py            # rewrite dashboards/tor-fleet.json, tor-detail.json
    python3 examples/grafana/build.py --check    # exit 1 if the committed files differ from the output

The JSON files are what Grafana loads (the compose demo provisions them); this script only keeps
them consistent: one datasource uid, one query style, one way to say which metric set a panel needs.
Edit the panels here and run it again; tests/test_dashboards.py checks the committed files.

Every query is Flux for the InfluxDB 2 datasource, with Grafana's variables: ${bucket}, ${service}
and ${host} (template variables, substituted by Grafana before the query is sent), v.timeRangeStart,
v.timeRangeStop, v.windowPeriod and $__interval_ms (filled in by Grafana's InfluxDB backend).
Every panel description ends with a "Needs:" line naming the metric set (METRIC_SETS) or the
MetricsPort whose data it shows; without it the panel shows "No data".
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "dashboards"

DATASOURCE = {"type": "influxdb", "uid": "tor2influxdb2-influxdb"}
FLEET_UID, DETAIL_UID = "tor2influxdb2-fleet", "tor2influxdb2-tor"
SCHEMA_VERSION = 39
TAGS = ["tor2influxdb2", "tor"]

# ------------------------------------------------------------------------------ Flux, in pieces

SOURCE = 'from(bucket: "${bucket}")\n  |> range(start: v.timeRangeStart, stop: v.timeRangeStop)'
#: The host and service variables (multi-value, "All" = .*). Points written with
#: INFLUX_SERVICE_TAG empty have no service tag: they match any service selection.
SELECTED = ('  |> filter(fn: (r) => r.host =~ /^${host:regex}$/ and '
            '(not exists r.service or r.service =~ /^${service:regex}$/))')
SERIES = ["service", "host"]


def _names(values: list[str]) -> str:
    return ", ".join(json.dumps(v) for v in values)


def where(measurement: str, fields: list[str] | None = None, extra: str = "") -> str:
    """The filter lines: one measurement, some of its fields, the selected tors."""
    cond = f'r._measurement == "{measurement}"'
    if fields:
        alternatives = " or ".join(f'r._field == "{f}"' for f in fields)
        cond += f" and ({alternatives})" if len(fields) > 1 else f" and {alternatives}"
    if extra:
        cond += f" and {extra}"
    return f"{SOURCE}\n  |> filter(fn: (r) => {cond})\n{SELECTED}"


def where_any(measurements: list[str], field: str) -> str:
    """The filter lines for one field of several measurements (MetricsPort families)."""
    alternatives = " or ".join(f'r._measurement == "{m}"' for m in measurements)
    return f"{SOURCE}\n  |> filter(fn: (r) => ({alternatives}) and r._field == \"{field}\")\n{SELECTED}"


def tidy(by: list[str]) -> str:
    """Regroup per series (merging the version tag's series of one tor), in time order, with only
    the labels the legend shows."""
    return (f"  |> group(columns: [{_names(by + ['_field'])}])\n"
            f"  |> sort(columns: [\"_time\"])\n"
            f"  |> keep(columns: [{_names(['_time', '_value', '_field'] + by)}])")


def rate(filters: str, by: list[str] = SERIES) -> str:
    """Per-second rate of counters (bytes, onionskins, ...): the last value of each window, then a
    non-negative derivative, so a tor restart (its counters start again from 0) is no dip."""
    return (f"{filters}\n"
            "  |> aggregateWindow(every: v.windowPeriod, fn: last, createEmpty: false)\n"
            "  |> derivative(unit: 1s, nonNegative: true)\n"
            f"{tidy(by)}")


def rate_total(filters: str, by: list[str]) -> str:
    """The rate summed over the selected tors, per `by` (e.g. per _field or per DoS type)."""
    return (f"{filters}\n"
            "  |> aggregateWindow(every: v.windowPeriod, fn: last, createEmpty: false)\n"
            "  |> derivative(unit: 1s, nonNegative: true)\n"
            f"  |> group(columns: [{_names(by + ['_time'])}])\n"
            "  |> sum()\n"
            f"  |> group(columns: [{_names(by)}])\n"
            "  |> sort(columns: [\"_time\"])")


def gauge(filters: str, fn: str = "mean", by: list[str] = SERIES) -> str:
    """A value as it was (circuits, flags, weight), one point per window."""
    return (f"{filters}\n"
            f"  |> aggregateWindow(every: v.windowPeriod, fn: {fn}, createEmpty: false)\n"
            f"{tidy(by)}")


def latest(by: list[str]) -> str:
    """The last point per `by`: last() per series first (InfluxDB does it in its storage engine),
    then the latest of a tor's series (one per version tag), in time order."""
    return (f"  |> last()\n  |> group(columns: [{_names(by)}])\n  |> sort(columns: [\"_time\"])\n"
            "  |> last()")


def latest_table(filters: str, columns: list[str], row_key: tuple[str, ...] = ("version",)) -> str:
    """One row per tor with the last value of each field (and the tor's version tag)."""
    return (f"{filters}\n"
            f"{latest(['service', 'host', '_field'])}\n"
            "  |> duplicate(column: \"_stop\", as: \"_time\")\n"
            # INFLUX_SEND_VERSION_TAG=false: no version tag, and pivot needs its row key columns
            "  |> map(fn: (r) => ({r with version: if exists r.version then r.version else \"\"}))\n"
            f"  |> pivot(rowKey: [{_names(['_time', *row_key])}], columnKey: [\"_field\"], valueColumn: \"_value\")\n"
            "  |> group()\n"
            f"  |> keep(columns: [{_names(['service', 'host', *row_key] + columns)}])")


def last_value(filters: str) -> str:
    """The last value of each field of the selected tor (stat panels)."""
    return f"{filters}\n{latest(['_field'])}\n  |> keep(columns: [\"_time\", \"_value\", \"_field\"])"


#: Seconds since the last point of each selected tor: the daemon's own health as InfluxDB sees it
#: (the daemon writes no measurement about itself; a tor it cannot poll gets no points).
AGE = (where("traffic", ["read"]) + "\n" + latest(["service", "host"]) + "\n"
       "  |> map(fn: (r) => ({r with _value: float(v: int(v: now()) - int(v: r._time)) / 1000000000.0}))\n"
       "  |> group()\n"
       "  |> keep(columns: [\"service\", \"host\", \"_value\"])")

#: Points that reached InfluxDB per minute and tor: a tor polled every RUN_EVERY_SECONDS has
#: 60 / RUN_EVERY_SECONDS; a gap means polls that failed or points that never arrived.
POINTS_PER_MINUTE = (where("traffic", ["read"]) + "\n"
                     "  |> aggregateWindow(every: v.windowPeriod, fn: count, createEmpty: true)\n"
                     "  |> map(fn: (r) => ({r with _value: float(v: r._value) * 60000.0 / float(v: $__interval_ms)}))\n"
                     + tidy(SERIES))

# ------------------------------------------------------------------------------ what panels need

CORE = "Needs: METRIC_SETS=core (the default)."


def needs(metric_set: str) -> str:
    return (f"Needs: METRIC_SETS={metric_set} (off by default: add it to METRIC_SETS, or set "
            "METRIC_SETS=all). No data while it is off.")


METRICSPORT = ("Needs: tor's MetricsPort, polled by tor2influxdb2 (MetricsPort points: measurement = "
               "tor's metric family, one float field `counter` or `gauge`). No data for tors without one.")
RELAY_ONLY = " Relays and bridges only: clients write no `relay` points."

# ------------------------------------------------------------------------------ panels


def _mappings_01(zero: str, one: str, zero_color: str = "red", one_color: str = "green") -> list:
    return [{"type": "value", "options": {
        "0": {"text": zero, "color": zero_color, "index": 0},
        "1": {"text": one, "color": one_color, "index": 1}}}]


VERSION_STATUS = [{"type": "value", "options": {
    "recommended": {"text": "recommended", "color": "green", "index": 0},
    "new": {"text": "new", "color": "green", "index": 1},
    "new in series": {"text": "new in series", "color": "green", "index": 2},
    "old": {"text": "old", "color": "orange", "index": 3},
    "unrecommended": {"text": "unrecommended", "color": "orange", "index": 4},
    "obsolete": {"text": "obsolete", "color": "red", "index": 5},
    "unknown": {"text": "unknown", "color": "text", "index": 6}}}]


def _panel(kind: str, title: str, description: str, queries: list[str], w: int, h: int,
           unit: str | None = None, **extra) -> dict:
    panel = {
        "type": kind, "title": title, "description": description, "datasource": DATASOURCE,
        "targets": [{"refId": chr(ord("A") + i), "datasource": DATASOURCE, "query": q}
                    for i, q in enumerate(queries)],
        "fieldConfig": {"defaults": {}, "overrides": []}, "options": {}, "_size": (w, h),
    }
    if unit:
        panel["fieldConfig"]["defaults"]["unit"] = unit
    for key, value in extra.items():
        if key in ("displayName", "mappings", "min", "max", "decimals", "noValue", "thresholds", "custom"):
            panel["fieldConfig"]["defaults"][key] = value
        elif key == "overrides":
            panel["fieldConfig"]["overrides"] = value
        else:
            panel[key] = value
    return panel


def timeseries(title, description, query, unit, w=12, h=8, display="${__field.labels.host}", **extra) -> dict:
    custom = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10, "showPoints": "never",
              "spanNulls": False, "stacking": {"mode": "none", "group": "A"}}
    panel = _panel("timeseries", title, description, [query], w, h, unit, displayName=display,
                   custom=custom, **extra)
    panel["options"] = {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                        "tooltip": {"mode": "multi", "sort": "desc"}}
    return panel


def timeline(title, description, query, mappings, w=12, h=8, display="${__field.name}", **extra) -> dict:
    panel = _panel("state-timeline", title, description, [query], w, h, None, displayName=display,
                   mappings=mappings, **extra)
    panel["options"] = {"mergeValues": True, "showValue": "auto", "alignValue": "left", "rowHeight": 0.9,
                        "legend": {"displayMode": "list", "placement": "bottom", "showLegend": False},
                        "tooltip": {"mode": "single", "sort": "none"}}
    return panel


def stat(title, description, queries, unit=None, w=4, h=4, text=False, graph="none", **extra) -> dict:
    panel = _panel("stat", title, description, queries if isinstance(queries, list) else [queries], w, h,
                   unit, **extra)
    panel["options"] = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "/.*/" if text else "",
                                          "values": False},
                        "colorMode": "value", "graphMode": graph, "justifyMode": "auto", "orientation": "auto",
                        "textMode": "auto", "wideLayout": True, "showPercentChange": False}
    panel["fieldConfig"]["defaults"].setdefault("thresholds", {"mode": "absolute",
                                                               "steps": [{"color": "text", "value": None}]})
    return panel


def table(title, description, query, renames: dict, w=24, h=8, overrides=(), sort=None, **extra) -> dict:
    panel = _panel("table", title, description, [query], w, h, None, overrides=list(overrides), **extra)
    panel["options"] = {"showHeader": True, "cellHeight": "sm",
                        "footer": {"show": False, "reducer": ["sum"], "countRows": False, "fields": ""}}
    if sort:
        panel["options"]["sortBy"] = [{"displayName": sort, "desc": True}]
    panel["transformations"] = [{"id": "organize", "options": {
        "excludeByName": {}, "indexByName": {name: i for i, name in enumerate(renames)},
        "renameByName": renames}}]
    return panel


def column(name: str, *properties: tuple[str, object]) -> dict:
    return {"matcher": {"id": "byName", "options": name},
            "properties": [{"id": key, "value": value} for key, value in properties]}


def colored(name: str, mappings: list) -> dict:
    return column(name, ("mappings", mappings), ("custom.cellOptions", {"type": "color-text"}))


def host_link(dashboard_uid: str) -> dict:
    """A link from a table's host column to the tor's detail dashboard."""
    return column("host", ("links", [{
        "title": "Details of ${__value.raw}",
        "url": f"/d/{dashboard_uid}?var-bucket=${{bucket}}&var-service=${{__data.fields.service}}"
               "&var-host=${__value.raw}&${__url_time_range}"}]))


def row(title: str) -> dict:
    return {"type": "row", "title": title, "collapsed": False, "panels": [], "_size": (24, 1)}


AGE_COLORS = {"mode": "absolute", "steps": [{"color": "green", "value": None}, {"color": "orange", "value": 60},
                                            {"color": "red", "value": 300}]}

# ------------------------------------------------------------------------------ the fleet dashboard

TRAFFIC = where("traffic", ["read", "written"])


def fleet_panels() -> list[dict]:
    count_tors = "\n" + latest(["service", "host"]) + "\n  |> group()\n  |> count()\n"
    reporting = ('from(bucket: "${bucket}")\n  |> range(start: -5m)\n'
                 '  |> filter(fn: (r) => r._measurement == "traffic" and r._field == "read")\n' + SELECTED
                 + count_tors + '  |> rename(columns: {_value: "last 5 minutes"})')
    seen = where("traffic", ["read"]) + count_tors + '  |> rename(columns: {_value: "in the time range"})'
    status_fields = ["network_liveness", "circuit_established", "dormant", "enough_dir_info",
                     "bootstrap_progress", "version_status", "uptime"]
    relay_fields = ["nickname", "in_consensus", "consensus_weight", "flag_running", "flag_valid", "flag_fast",
                    "flag_stable", "flag_guard", "flag_exit", "flag_hsdir", "flag_v2dir", "flag_badexit",
                    "flag_middleonly", "flag_staledesc", "reachable_or", "reachable_dir", "effective_rate"]
    relay_table = latest_table(where("relay", relay_fields[1:]), relay_fields[1:], ("version", "nickname"))
    accounting_fields = ["enabled", "hibernating", "read_bytes", "written_bytes", "read_left", "written_left",
                         "interval_end"]
    yes_no = _mappings_01("no", "yes", "text", "green")
    flag = _mappings_01("-", "yes", "text", "green")
    return [
        row("Fleet"),
        stat("Tors reporting", "Tors with a point in the last 5 minutes (A) and in the whole time range (B). "
             "A tor the daemon cannot poll gets no points.\n\n" + CORE, [reporting, seen], w=4,
             displayName="${__field.displayName}", overrides=[
                 column("_value", ("displayName", "now")),
             ]),
        stat("Fleet traffic now", "Read and written by all selected tors together, bytes per second.\n\n" + CORE,
             rate_total(TRAFFIC, ["_field"]), "Bps", w=5, graph="area", displayName="${__field.name}"),
        stat("Circuits built (fleet)", "Circuits the selected tors built themselves (not relayed ones: "
             "see the MetricsPort row).\n\n" + CORE,
             (where("connections", ["circuits_active"]) + "\n" + latest(["service", "host"])
              + "\n  |> group()\n  |> sum()"), "short", w=5),
        stat("Oldest last point", "Seconds since the last point of the tor that has gone longest without one "
             "(daemon health: the daemon writes no measurement about itself, so this is the age of the "
             "tors' data in InfluxDB). Green < 1 min, orange < 5 min.\n\n" + CORE,
             AGE + "\n  |> max()", "s", w=5, thresholds=AGE_COLORS),
        stat("Relays in the consensus", "Relays whose last poll found them in the consensus."
             + RELAY_ONLY + "\n\n" + needs("relay"),
             (where("relay", ["in_consensus"]) + "\n" + latest(["service", "host"])
              + "\n  |> group()\n  |> sum()"), "short", w=5),
        row("Traffic"),
        timeseries("Read per tor", "Bytes per second tor read, from the `traffic` counters (a non-negative "
                   "derivative: a tor restart resets them).\n\n" + CORE,
                   rate(where("traffic", ["read"])), "Bps"),
        timeseries("Written per tor", "Bytes per second tor wrote, from the `traffic` counters.\n\n" + CORE,
                   rate(where("traffic", ["written"])), "Bps"),
        timeseries("Fleet traffic", "Read and written by all selected tors together.\n\n" + CORE,
                   rate_total(TRAFFIC, ["_field"]), "Bps", display="${__field.name}"),
        timeseries("Per-second peaks per tor", "The busiest second (read or written, whichever is higher is "
                   "shown per tor and direction) since the previous poll, from tor's bandwidth events.\n\n"
                   + needs("bandwidth"),
                   gauge(where("bandwidth", ["read_rate_max", "written_rate_max"]), fn="max"), "Bps",
                   display="${__field.labels.host} ${__field.name}"),
        row("Circuits and streams"),
        timeseries("Circuits built per tor", "Circuits this tor built itself (`circuit-status`), not the ones "
                   "it relays for others (MetricsPort row).\n\n" + CORE,
                   gauge(where("connections", ["circuits_active"])), "short"),
        timeseries("Streams per tor", "This tor's own client streams (`stream-status`).\n\n" + CORE,
                   gauge(where("connections", ["streams_active"])), "short"),
        row("Status"),
        table("Status per tor", "The last status of each tor: network liveness, circuit established, "
              "dormant, directory info, bootstrap, whether its version is recommended, uptime. Click a host "
              "for its details.\n\n" + needs("status"),
              latest_table(where("status", status_fields), status_fields),
              {"service": "Service", "host": "host", "version": "Version", "network_liveness": "Network",
               "circuit_established": "Circuit", "dormant": "Dormant", "enough_dir_info": "Dir info",
               "bootstrap_progress": "Bootstrap", "version_status": "Version status", "uptime": "Uptime"},
              h=8, overrides=[
                  host_link(DETAIL_UID),
                  colored("network_liveness", _mappings_01("down", "up")),
                  colored("circuit_established", _mappings_01("no", "yes")),
                  colored("dormant", _mappings_01("no", "dormant", "green", "orange")),
                  colored("enough_dir_info", _mappings_01("no", "yes")),
                  column("bootstrap_progress", ("unit", "percent")),
                  colored("version_status", VERSION_STATUS),
                  column("uptime", ("unit", "dtdurations")),
              ]),
        row("Relays"),
        timeseries("Consensus weight per relay", "The relay's weight in the consensus (`w Bandwidth=`), "
                   "refreshed every 5 minutes; absent while the relay is not in the consensus."
                   + RELAY_ONLY + "\n\n" + needs("relay"),
                   gauge(where("relay", ["consensus_weight"]), fn="last"), "short", w=24),
        table("Flags per relay", "The flags the last consensus gives each relay, its reachability and the "
              "rate it advertises." + RELAY_ONLY + "\n\n" + needs("relay"), relay_table,
              {"service": "Service", "host": "host", "nickname": "Nickname", "version": "Version",
               "in_consensus": "In consensus", "consensus_weight": "Weight", "flag_running": "Running",
               "flag_valid": "Valid", "flag_fast": "Fast", "flag_stable": "Stable", "flag_guard": "Guard",
               "flag_exit": "Exit", "flag_hsdir": "HSDir", "flag_v2dir": "V2Dir", "flag_badexit": "BadExit",
               "flag_middleonly": "MiddleOnly", "flag_staledesc": "StaleDesc", "reachable_or": "ORPort reachable",
               "reachable_dir": "DirPort reachable", "effective_rate": "Advertised rate"},
              overrides=[host_link(DETAIL_UID), colored("in_consensus", yes_no),
                         *(colored(f, flag) for f in relay_fields if f.startswith("flag_") and f != "flag_badexit"),
                         colored("flag_badexit", _mappings_01("-", "BadExit", "text", "red")),
                         colored("reachable_or", _mappings_01("no", "yes")),
                         colored("reachable_dir", _mappings_01("no", "yes")),
                         column("effective_rate", ("unit", "Bps"))]),
        row("Accounting and guards"),
        table("Accounting per tor", "tor's accounting (AccountingMax): bytes used and left in this interval, "
              "when it ends, whether tor hibernates. Tors without AccountingMax show `enabled` = no and "
              "nothing else.\n\n" + needs("accounting"),
              latest_table(where("accounting", accounting_fields), accounting_fields),
              {"service": "Service", "host": "host", "version": "Version", "enabled": "Enabled",
               "hibernating": "Hibernating", "read_bytes": "Read", "written_bytes": "Written",
               "read_left": "Read left", "written_left": "Written left", "interval_end": "Interval ends"},
              w=14, overrides=[host_link(DETAIL_UID), colored("enabled", yes_no),
                               *(column(f, ("unit", "decbytes")) for f in accounting_fields if "_" in f
                                 and f != "interval_end"),
                               column("interval_end", ("unit", "dateTimeAsIso"))]),
        timeseries("Usable guards per client", "Entry guards in state `up` per client tor (`entry-guards`). "
                   "Clients only: relays and bridges write no `guards` points.\n\n" + needs("guards"),
                   gauge(where("guards", ["up"]), fn="last"), "short", w=10),
        row("MetricsPort"),
        timeseries("ntor v3 onionskins per relay", "Circuit-creation handshakes (ntor v3, what tor 0.4.9 "
                   "clients use) processed and dropped per second, from "
                   "`tor_relay_load_onionskins_total{type=\"ntor_v3\"}`. Drops mean an overloaded relay.\n\n"
                   + METRICSPORT,
                   rate(where("tor_relay_load_onionskins_total", ["counter"], 'r.type == "ntor_v3"'),
                        SERIES + ["action"]), "short", display="${__field.labels.host} ${__field.labels.action}"),
        timeseries("Relayed circuits per relay", "Circuits the relay carries for others "
                   "(`tor_relay_circuits_total{state=\"opened\"}`).\n\n" + METRICSPORT,
                   gauge(where("tor_relay_circuits_total", ["gauge"], 'r.state == "opened"')), "short"),
        timeseries("DoS mitigation (fleet)", "What tor's DoS defences refused or closed, per second, by type, "
                   "all selected relays together (`tor_relay_dos_total`).\n\n" + METRICSPORT,
                   rate_total(where("tor_relay_dos_total", ["counter"]), ["type"]), "short",
                   display="${__field.labels.type}"),
        timeseries("Onion service introductions and rendezvous", "Introductions received and rendezvous "
                   "circuits created per second, per onion service (`tor_hs_intro_num_total`, "
                   "`tor_hs_rdv_num_total`; the onion label is what the daemon writes for the address).\n\n"
                   + METRICSPORT,
                   rate(where_any(["tor_hs_intro_num_total", "tor_hs_rdv_num_total"], "counter") + "\n"
                        "  |> map(fn: (r) => ({r with _field: if r._measurement == \"tor_hs_intro_num_total\" "
                        "then \"introductions\" else \"rendezvous\"}))", SERIES + ["onion"]), "short",
                   display="${__field.labels.host} ${__field.labels.onion} ${__field.name}"),
        row("Daemon health"),
        table("Age of the last point per tor", "Seconds since each tor's last point in InfluxDB. The daemon "
              "writes no measurement about itself yet, so this is how its health shows here: a tor it cannot "
              "poll, or a daemon that stopped, ages. Green < 1 min, orange < 5 min.\n\n" + CORE, AGE,
              {"service": "Service", "host": "host", "_value": "Age of last point"}, w=10,
              sort="Age of last point", overrides=[
                  host_link(DETAIL_UID),
                  column("_value", ("unit", "s"), ("thresholds", AGE_COLORS),
                         ("custom.cellOptions", {"type": "color-background"}))]),
        timeseries("Points per minute per tor", "Points of each tor that reached InfluxDB per minute: "
                   "60 / RUN_EVERY_SECONDS when every poll succeeds (6 by default); dips are failed polls or "
                   "lost points.\n\n" + CORE, POINTS_PER_MINUTE, "short", w=14),
    ]


# ------------------------------------------------------------------------------ the per-tor dashboard

def detail_panels() -> list[dict]:
    status = ["network_liveness", "circuit_established", "dormant", "enough_dir_info"]
    flags = ["in_consensus", "flag_running", "flag_valid", "flag_fast", "flag_stable", "flag_guard", "flag_exit",
             "flag_hsdir", "flag_v2dir", "flag_badexit", "flag_middleonly", "flag_staledesc", "flag_noedconsensus",
             "flag_sybil", "flag_authority"]
    version_tag = (where("traffic", ["read"]) + "\n" + latest([]) + "\n"
                   "  |> map(fn: (r) => ({r with _value: r.version}))\n  |> keep(columns: [\"_time\", \"_value\"])")
    traffic_in_range = (TRAFFIC + "\n  |> group(columns: [\"_field\"])\n  |> sort(columns: [\"_time\"])\n"
                        "  |> increase()\n  |> last()\n  |> keep(columns: [\"_time\", \"_value\", \"_field\"])")
    onoff = _mappings_01("no", "yes")
    return [
        row("This tor"),
        stat("Uptime", "Seconds since tor started.\n\n" + needs("status"),
             last_value(where("status", ["uptime"])), "dtdurations", w=4),
        stat("Network", "tor's view of the network (`network-liveness`).\n\n" + needs("status"),
             last_value(where("status", ["network_liveness"])), w=3, mappings=_mappings_01("down", "up")),
        stat("Circuit established", "Whether tor could build a circuit (`status/circuit-established`).\n\n"
             + needs("status"), last_value(where("status", ["circuit_established"])), w=3, mappings=onoff),
        stat("Dormant", "A dormant tor builds no circuits until it is used again.\n\n" + needs("status"),
             last_value(where("status", ["dormant"])), w=3,
             mappings=_mappings_01("no", "dormant", "green", "orange")),
        stat("Version status", "Whether the directory authorities recommend this tor's version "
             "(`status/version/current`).\n\n" + needs("status"),
             last_value(where("status", ["version_status"])), w=4, text=True, mappings=VERSION_STATUS),
        stat("tor version", "The version tag of the tor's last point.\n\n" + CORE, version_tag, w=3, text=True),
        stat("Age of last point", "Seconds since this tor's last point in InfluxDB (daemon health: the daemon "
             "writes no measurement about itself). Green < 1 min, orange < 5 min.\n\n" + CORE, AGE, "s", w=4,
             thresholds=AGE_COLORS),
        row("Traffic"),
        timeseries("Traffic", "Bytes per second read and written, from the `traffic` counters (a non-negative "
                   "derivative: a restart resets them).\n\n" + CORE, rate(TRAFFIC), "Bps", w=16,
                   display="${__field.name}"),
        stat("Traffic in the time range", "Bytes read and written in the selected time range (restarts "
             "counted, not subtracted).\n\n" + CORE, traffic_in_range, "decbytes", w=8, h=8,
             displayName="${__field.name}"),
        timeseries("Per-second peaks and means", "The busiest second and the mean since the previous poll, "
                   "from tor's bandwidth events (`bw-event-cache`).\n\n" + needs("bandwidth"),
                   gauge(where("bandwidth", ["read_rate_max", "written_rate_max", "read_rate_mean",
                                             "written_rate_mean"]), fn="max"), "Bps", w=24,
                   display="${__field.name}"),
        row("Circuits, streams, handshakes"),
        timeseries("Circuits and streams", "Circuits this tor built itself and its own client streams (not "
                   "relayed ones: see the MetricsPort row).\n\n" + CORE,
                   gauge(where("connections", ["circuits_active", "streams_active"])), "short",
                   display="${__field.name}"),
        timeseries("Handshakes (per heartbeat window)", "Circuit-creation handshakes this relay got from other "
                   "relays (`stats/ntor/*`, `stats/tap/*`), reset at every heartbeat. On tor 0.4.9 ntor counts "
                   "only ntor v1 and TAP is gone: see ntor v3 in the MetricsPort row.\n\n" + CORE,
                   gauge(where("handshakes", ["ntor_requested", "ntor_assigned", "tap_requested",
                                              "tap_assigned"]), fn="last"), "short", display="${__field.name}"),
        row("Status"),
        timeline("Status over time", "Network liveness, circuit established, dormant, enough directory info."
                 "\n\n" + needs("status"), gauge(where("status", status), fn="last"), onoff, w=8),
        timeline("Version status over time", "Whether this tor's version is recommended.\n\n" + needs("status"),
                 gauge(where("status", ["version_status"]), fn="last"), VERSION_STATUS, w=8),
        timeseries("Bootstrap", "Bootstrap progress in percent.\n\n" + needs("status"),
                   gauge(where("status", ["bootstrap_progress"]), fn="last"), "percent", w=8,
                   display="${__field.name}", min=0, max=100),
        row("Relay"),
        timeseries("Consensus weight", "The relay's weight in the consensus, refreshed every 5 minutes; absent "
                   "while it is not in the consensus." + RELAY_ONLY + "\n\n" + needs("relay"),
                   gauge(where("relay", ["consensus_weight"]), fn="last", by=SERIES + ["nickname"]), "short",
                   w=8, display="${__field.labels.nickname}"),
        timeseries("Advertised bandwidth", "The rate and burst tor advertises (BandwidthRate, "
                   "RelayBandwidthRate, MaxAdvertisedBandwidth, bursts)." + RELAY_ONLY + "\n\n" + needs("relay"),
                   gauge(where("relay", ["effective_rate", "effective_burst"]), fn="last"), "Bps", w=8,
                   display="${__field.name}"),
        timeline("Reachability", "Whether tor found its ORPort and DirPort reachable from outside."
                 + RELAY_ONLY + "\n\n" + needs("relay"),
                 gauge(where("relay", ["reachable_or", "reachable_dir"]), fn="last"), onoff, w=8),
        timeline("Flags over time", "The flags the consensus gives this relay (1 = has it), and whether it is "
                 "in the consensus at all." + RELAY_ONLY + "\n\n" + needs("relay"),
                 gauge(where("relay", flags), fn="last"), _mappings_01("-", "yes", "transparent", "green"),
                 w=24, h=10),
        row("Accounting and guards"),
        timeseries("Accounting", "Bytes used and left in the accounting interval (AccountingMax); tors "
                   "without accounting write only `enabled` = 0.\n\n" + needs("accounting"),
                   gauge(where("accounting", ["read_bytes", "written_bytes", "read_left", "written_left"]),
                         fn="last"), "decbytes", w=8, display="${__field.name}"),
        timeline("Hibernation", "awake, soft (accepting no new connections) or hard (hibernating).\n\n"
                 + needs("accounting"), gauge(where("accounting", ["hibernating"]), fn="last"), [
                     {"type": "value", "options": {"awake": {"text": "awake", "color": "green", "index": 0},
                                                   "soft": {"text": "soft", "color": "orange", "index": 1},
                                                   "hard": {"text": "hard", "color": "red", "index": 2}}}], w=8),
        stat("Accounting interval ends", "When the current accounting interval ends.\n\n" + needs("accounting"),
             (last_value(where("accounting", ["interval_end"]))
              + "\n  |> map(fn: (r) => ({r with _value: r._value * 1000}))"), "dateTimeFromNow", w=8, h=8),
        timeseries("Entry guards", "This client's entry guards by state (`entry-guards`). Clients only.\n\n"
                   + needs("guards"), gauge(where("guards", ["up", "down", "never_connected", "unusable",
                                                             "total"]), fn="last"), "short", w=24,
                   display="${__field.name}"),
        row("MetricsPort"),
        timeseries("ntor v3 onionskins", "ntor v3 circuit-creation handshakes processed and dropped per second "
                   "(`tor_relay_load_onionskins_total{type=\"ntor_v3\"}`).\n\n" + METRICSPORT,
                   rate(where("tor_relay_load_onionskins_total", ["counter"], 'r.type == "ntor_v3"'),
                        SERIES + ["action"]), "short", w=8, display="${__field.labels.action}"),
        timeseries("Relayed circuits", "Circuits this relay carries for others "
                   "(`tor_relay_circuits_total{state=\"opened\"}`).\n\n" + METRICSPORT,
                   gauge(where("tor_relay_circuits_total", ["gauge"], 'r.state == "opened"')), "short", w=8,
                   display="opened"),
        timeseries("DoS mitigation", "What tor's DoS defences refused or closed per second, by type "
                   "(`tor_relay_dos_total`).\n\n" + METRICSPORT,
                   rate(where("tor_relay_dos_total", ["counter"]), SERIES + ["type"]), "short", w=8,
                   display="${__field.labels.type}"),
        timeseries("Onion service traffic", "Bytes per second between each onion service and its application, "
                   "per virtual port (`tor_hs_app_read_bytes_total`, `tor_hs_app_write_bytes_total`).\n\n"
                   + METRICSPORT,
                   rate(where_any(["tor_hs_app_read_bytes_total", "tor_hs_app_write_bytes_total"], "counter")
                        + "\n  |> map(fn: (r) => ({r with _field: if r._measurement == "
                        "\"tor_hs_app_read_bytes_total\" then \"read\" else \"written\"}))",
                        SERIES + ["onion", "port"]), "Bps", w=8,
                   display="${__field.labels.onion}:${__field.labels.port} ${__field.name}"),
        timeseries("Onion service introductions and rendezvous", "Introductions received and rendezvous "
                   "circuits created per second, per onion service (`tor_hs_intro_num_total`, "
                   "`tor_hs_rdv_num_total`).\n\n" + METRICSPORT,
                   rate(where_any(["tor_hs_intro_num_total", "tor_hs_rdv_num_total"], "counter") + "\n"
                        "  |> map(fn: (r) => ({r with _field: if r._measurement == \"tor_hs_intro_num_total\" "
                        "then \"introductions\" else \"rendezvous\"}))", SERIES + ["onion"]), "short", w=8,
                   display="${__field.labels.onion} ${__field.name}"),
        timeseries("Onion service circuits", "Established introduction and rendezvous circuits per onion "
                   "service (`tor_hs_intro_established_count`, `tor_hs_rdv_established_count`).\n\n"
                   + METRICSPORT,
                   gauge(where_any(["tor_hs_intro_established_count", "tor_hs_rdv_established_count"], "gauge")
                         + "\n  |> map(fn: (r) => ({r with _field: if r._measurement == "
                         "\"tor_hs_intro_established_count\" then \"introduction\" else \"rendezvous\"}))",
                         fn="last", by=SERIES + ["onion"]), "short", w=8,
                   display="${__field.labels.onion} ${__field.name}"),
        row("Daemon health"),
        timeseries("Points per minute", "This tor's points that reached InfluxDB per minute: 60 / "
                   "RUN_EVERY_SECONDS when every poll succeeds (6 by default); dips are failed polls or lost "
                   "points. (The daemon writes no measurement about itself yet.)\n\n" + CORE,
                   POINTS_PER_MINUTE, "short", w=24, display="points per minute", min=0),
    ]


# ------------------------------------------------------------------------------ variables, layout


def variable(name: str, label: str, query: str, multi: bool, description: str, default: str | None = None,
             refresh: int = 2) -> dict:
    var = {"name": name, "label": label, "type": "query", "datasource": DATASOURCE, "query": query,
           "definition": query, "description": description, "refresh": refresh, "sort": 1, "hide": 0,
           "regex": "", "skipUrlSync": False, "options": [], "multi": multi, "includeAll": multi}
    if multi:
        var["allValue"] = ".*"
        var["current"] = {"selected": True, "text": ["All"], "value": ["$__all"]}
    elif default is not None:
        var["current"] = {"selected": True, "text": default, "value": default}
    return var


BUCKETS = 'buckets()\n  |> filter(fn: (r) => r.name !~ /^_/)\n  |> rename(columns: {name: "_value"})\n  |> keep(columns: ["_value"])'


def tag_values(tag: str, service_filter: bool) -> str:
    """The values of a tag among the tors' traffic series in the time range (last() is pushed down to
    the storage engine: one row per series, not every point)."""
    query = (f'{SOURCE}\n  |> filter(fn: (r) => r._measurement == "traffic" and r._field == "read")\n'
             "  |> last()\n")
    if service_filter:
        query += "  |> filter(fn: (r) => not exists r.service or r.service =~ /^${service:regex}$/)\n"
    else:
        query += f"  |> filter(fn: (r) => exists r.{tag})\n"
    return query + f'  |> keep(columns: ["{tag}"])\n  |> group()\n  |> distinct(column: "{tag}")'


def variables(multi_host: bool) -> list[dict]:
    return [
        variable("bucket", "Bucket", BUCKETS, False, "The InfluxDB bucket tor2influxdb2 writes to (INFLUX_BUCKET).",
                 default="tor", refresh=1),
        variable("service", "Service", tag_values("service", False), True,
                 "The service tag (INFLUX_SERVICE_TAG) of the tors to show."),
        variable("host", "Tor" if not multi_host else "Tors", tag_values("host", True), multi_host,
                 "The tors (the NAME of their TOR_HOSTS entry) seen in the time range."),
    ]


def layout(panels: list[dict]) -> list[dict]:
    """Place panels left to right, 24 columns wide, a new line when one does not fit or at a row."""
    x = y = line_height = 0
    for number, panel in enumerate(panels, 1):
        w, h = panel.pop("_size")
        if panel["type"] == "row" or x + w > 24:
            x, y, line_height = 0, y + line_height, 0
        panel["gridPos"] = {"h": h, "w": w, "x": x, "y": y}
        panel["id"] = number
        x += w
        line_height = max(line_height, h)
        if panel["type"] == "row":
            x, y, line_height = 0, y + h, 0
    return panels


def dashboard(uid: str, title: str, description: str, panels: list[dict], multi_host: bool) -> dict:
    return {
        "uid": uid, "title": title, "description": description, "tags": TAGS, "editable": True,
        "schemaVersion": SCHEMA_VERSION, "version": 1, "graphTooltip": 1, "timezone": "browser",
        "time": {"from": "now-6h", "to": "now"}, "refresh": "1m", "fiscalYearStartMonth": 0,
        "liveNow": False, "weekStart": "", "timepicker": {},
        "annotations": {"list": []},
        "links": [{"title": "tor2influxdb2", "type": "dashboards", "tags": ["tor2influxdb2"], "asDropdown": False,
                   "includeVars": False, "keepTime": True, "icon": "external link", "targetBlank": False,
                   "tooltip": "", "url": ""}],
        "templating": {"list": variables(multi_host)},
        "panels": layout(panels),
    }


def build() -> dict[str, str]:
    fleet = dashboard(FLEET_UID, "Tor fleet (tor2influxdb2)",
                      "Every tor tor2influxdb2 polls: traffic, circuits, status, relay flags, accounting, "
                      "guards, MetricsPort series and the data's freshness.", fleet_panels(), True)
    detail = dashboard(DETAIL_UID, "Tor details (tor2influxdb2)",
                       "One tor: everything tor2influxdb2 writes about it.", detail_panels(), False)
    return {name: json.dumps(board, indent=2, ensure_ascii=False) + "\n"
            for name, board in (("tor-fleet.json", fleet), ("tor-detail.json", detail))}


def main(argv: list[str]) -> int:
    outputs = build()
    if argv[1:] == ["--check"]:
        stale = [name for name, text in outputs.items()
                 if not (OUT / name).is_file() or (OUT / name).read_text() != text]
        for name in stale:
            print(f"{OUT / name} differs from what {Path(__file__).name} writes: run it", file=sys.stderr)
        return 1 if stale else 0
    if argv[1:]:
        print(__doc__, file=sys.stderr)
        return 2
    OUT.mkdir(exist_ok=True)
    for name, text in outputs.items():
        (OUT / name).write_text(text)
        print(f"wrote {OUT / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
