"""tor's MetricsPort as a second source: Prometheus text over plain HTTP, one scrape per connection.

On tor 0.4.9 the figures that matter for a relay are only here: ntor v3 handshakes, relayed
circuits, connections, DoS defenses, exit DNS, and per-onion-service activity.

``address``  TOR_METRICS_PORTS / TOR_METRICS_PORTS_FILE, METRICSPORT_FAMILIES, ONION_LABEL
``parse``    selection of the wanted families and parsing of a page into samples
``schema``   every family tor 0.4.9 serves (SCHEMA, for --schema)
``session``  one non-blocking scrape, driven by the poll loop

prometheus_client is imported only when a page is parsed.
"""

from .address import (MetricsAddress, parse_address, parse_families, parse_metrics_ports, parse_onion_label,
                      split_file, split_pairs)
from .parse import ALL_SELECTION, DEFAULT_SELECTION, FamilySelection, PageParser, onion_hash
from .schema import DEFAULT_FAMILIES, SCHEMA
from .session import MetricsSession

__all__ = ["MetricsAddress", "parse_address", "parse_families", "parse_metrics_ports", "parse_onion_label",
           "split_file", "split_pairs", "ALL_SELECTION", "DEFAULT_SELECTION", "FamilySelection", "PageParser",
           "onion_hash", "DEFAULT_FAMILIES", "SCHEMA", "MetricsSession"]
