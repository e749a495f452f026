"""tor2influxdb2: poll the control ports (and MetricsPorts) of Tor daemons and write their
statistics to InfluxDB 2, Prometheus or line protocol on stdout.

The package is split by role. Imports point one way: the daemon knows sources and sinks, which
never import each other; ``settings`` (above both) validates their options with their parsers;
everything may use the last row.

=====================  =====================================================================
``daemon``             the schedule, the daemon's run, ``-t``, ``--schema``: the only module that
                       knows both sources and sinks
``poller``             the event loop that polls every tor's sources concurrently, with backoff
``sources.control``    the control-port source: connection, authentication, metric sets
``sources.metricsport``  tor's MetricsPort (Prometheus text) as a second source
``sinks.*``            line protocol, the buffer, delivery to InfluxDB, stdout, Prometheus, ``-t``
``health``, ``logs``   the health file and its watchdog; logging through the redaction step
``settings``           every environment variable, validated, all problems reported at once
``targets``            TOR_HOSTS entries, tag values, shards (``sources.metricsport.address``
                       parses TOR_METRICS_PORTS)
``model``, ``errors``, ``redact``, ``files``   the neutral sample model, typed failures, secret
                       masking, files written safely
=====================  =====================================================================
"""

__version__ = "3.0.0"
