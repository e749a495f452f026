"""Every metric family tor 0.4.9 serves on its MetricsPort, and what each one writes.

The relay families are those of two real relays (an exit and a middle) of tor 0.4.9.11; the
onion-service families (``tor_hs_*``) are those of tor's source (src/feature/hs/hs_metrics_entry.c),
one set per onion service, each series labelled with the service's address (label ``onion``).

A family becomes one measurement named exactly as tor's ``# TYPE`` line names it, as InfluxDB 2
scrapers and Telegraf's ``inputs.prometheus`` (metric_version 1) do: its labels become tags and
its value one float field named by its type (``counter``, ``gauge``; ``value`` when untyped). A
histogram writes ``count``, ``sum`` and one field per bucket, named by its upper bound.
"""

from __future__ import annotations

from ...model import FieldSpec, MeasurementSpec

COMMON_TAGS = ("host", "service", "version")
SOURCE = "metricsport"
GROUP = "metricsport"
RELAY_KINDS = ("relay", "bridge")
ALL_KINDS = ("relay", "bridge", "client")

#: The upper bounds (ms) of tor's circuit build time histograms, as field names.
HS_BUILD_TIME_BUCKETS = ("1000", "5000", "10000", "30000", "60000", "+Inf")

#: name -> (type, labels, kinds, description). Tor's own HELP texts, some completed.
FAMILIES: dict[str, tuple[str, tuple[str, ...], tuple[str, ...], str]] = {
    "tor_bug_reached_count": ("counter", (), ALL_KINDS, "BUG() and similar assertions reached"),
    "tor_relay_circ_proto_violation_total": ("counter", (), RELAY_KINDS, "circuit protocol violations"),
    "tor_relay_circuits_total": ("gauge", ("state",), RELAY_KINDS,
                                 "circuits open now (a gauge despite its name), relayed ones included"),
    "tor_relay_congestion_control": ("gauge", ("state", "action"), RELAY_KINDS, "congestion control gauges"),
    "tor_relay_congestion_control_total": ("counter", ("state", "action"), RELAY_KINDS,
                                           "congestion control counters"),
    "tor_relay_connections": ("gauge", ("type", "direction", "state", "family"), RELAY_KINDS,
                              "connections open now; by default only OR connections (type=OR)"),
    "tor_relay_connections_total": ("counter", ("type", "direction", "state", "family"), RELAY_KINDS,
                                    "connections created or rejected"),
    "tor_relay_destroy_cell_total": ("counter", (), RELAY_KINDS, "DESTROY cells received"),
    "tor_relay_dos_total": ("counter", ("type",), RELAY_KINDS, "denial-of-service defenses"),
    "tor_relay_drop_cell_total": ("counter", (), RELAY_KINDS, "DROP cells received"),
    "tor_relay_est_intro_total": ("counter", ("action",), RELAY_KINDS, "EST_INTRO cells received"),
    "tor_relay_est_rend_total": ("counter", ("action",), RELAY_KINDS, "EST_REND cells received"),
    "tor_relay_exit_dns_error_total": ("counter", ("reason",), RELAY_KINDS, "DNS errors of this exit"),
    "tor_relay_exit_dns_query_total": ("counter", (), RELAY_KINDS, "DNS queries of this exit"),
    "tor_relay_flag": ("gauge", ("type",), RELAY_KINDS, "flags the consensus gives this relay (1/0)"),
    "tor_relay_intro1_total": ("counter", ("action",), RELAY_KINDS, "INTRO1 cells received"),
    "tor_relay_load_global_rate_limit_reached_total": ("counter", ("side",), RELAY_KINDS,
                                                       "times the global bandwidth bucket ran empty"),
    "tor_relay_load_onionskins_total": ("counter", ("type", "action"), RELAY_KINDS,
                                        "circuit handshakes processed or dropped, ntor v3 included"),
    "tor_relay_load_oom_bytes_total": ("counter", ("subsys",), RELAY_KINDS, "bytes the OOM handler freed"),
    "tor_relay_load_socket_total": ("gauge", ("state",), RELAY_KINDS,
                                    "sockets: open now (state=opened) and the limit (no label)"),
    "tor_relay_load_tcp_exhaustion_total": ("counter", (), RELAY_KINDS, "times tor ran out of TCP ports"),
    "tor_relay_rend1_total": ("counter", ("action",), RELAY_KINDS, "REND1 cells received"),
    "tor_relay_streams_total": ("counter", ("type",), RELAY_KINDS, "streams (BEGIN, BEGIN_DIR, RESOLVE)"),
    "tor_relay_traffic_bytes": ("counter", ("direction",), RELAY_KINDS, "bytes read and written"),
    # one set per onion service, every series labelled onion=<address> (see ONION_LABEL)
    "tor_hs_app_read_bytes_total": ("counter", ("onion", "port"), ALL_KINDS, "bytes read from the application"),
    "tor_hs_app_write_bytes_total": ("counter", ("onion", "port"), ALL_KINDS, "bytes written to the application"),
    "tor_hs_intro_circ_build_time": ("histogram", ("onion",), ALL_KINDS, "introduction circuit build time (ms)"),
    "tor_hs_intro_established_count": ("gauge", ("onion",), ALL_KINDS, "established introduction circuits"),
    "tor_hs_intro_num_total": ("counter", ("onion",), ALL_KINDS, "introductions received"),
    "tor_hs_intro_rejected_intro_req_count": ("counter", ("onion", "reason"), ALL_KINDS,
                                              "introduction requests rejected"),
    "tor_hs_pow_suggested_effort": ("gauge", ("onion",), ALL_KINDS, "suggested proof-of-work effort"),
    "tor_hs_rdv_error_count": ("counter", ("onion", "reason"), ALL_KINDS, "rendezvous circuit errors"),
    "tor_hs_rdv_established_count": ("gauge", ("onion",), ALL_KINDS, "established rendezvous circuits"),
    "tor_hs_rdv_num_total": ("counter", ("onion",), ALL_KINDS, "rendezvous circuits created"),
    "tor_hs_rdv_pow_pqueue_count": ("gauge", ("onion",), ALL_KINDS, "requests waiting in the PoW queue"),
    "tor_hs_rend_circ_build_time": ("histogram", ("onion",), ALL_KINDS, "rendezvous circuit build time (ms)"),
}

HS_PREFIX = "tor_hs_"

#: The families written when METRICSPORT_FAMILIES is not set (plus every tor_hs_* family).
DEFAULT_FAMILIES = (
    "tor_relay_load_onionskins_total", "tor_relay_circuits_total", "tor_relay_streams_total",
    "tor_relay_dos_total", "tor_relay_flag", "tor_relay_traffic_bytes", "tor_relay_exit_dns_query_total",
    "tor_relay_exit_dns_error_total", "tor_relay_load_oom_bytes_total", "tor_relay_load_tcp_exhaustion_total",
    "tor_relay_load_global_rate_limit_reached_total", "tor_relay_connections",
)


def is_default(name: str) -> bool:
    return name in DEFAULT_FAMILIES or name.startswith(HS_PREFIX)


def _fields(type_: str, name: str) -> tuple[FieldSpec, ...]:
    origin = f"MetricsPort {name}"
    if type_ == "histogram":
        return (FieldSpec("count", "float", origin, "", "observations"),
                FieldSpec("sum", "float", origin, "ms", "sum of the observations"),
                *(FieldSpec(b, "float", origin, "", f"observations <= {b} ms (cumulative)")
                  for b in HS_BUILD_TIME_BUCKETS))
    field = {"counter": "counter", "gauge": "gauge"}.get(type_, "value")
    return (FieldSpec(field, "float", origin),)


def _spec(name: str) -> MeasurementSpec:
    type_, labels, kinds, description = FAMILIES[name]
    if name == "tor_relay_connections":
        description += "; in the default selection only state=opened, type=OR"
    if "onion" in labels:
        description += "; the onion tag per ONION_LABEL (hash by default)"
    return MeasurementSpec(name, SOURCE, GROUP, _fields(type_, name), COMMON_TAGS + labels, kinds=kinds,
                           description=f"{type_}: {description}", default=is_default(name))


SCHEMA = tuple(_spec(name) for name in sorted(FAMILIES))
