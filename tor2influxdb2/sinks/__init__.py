"""Sinks: where samples go. They import only the model, errors and the redactor, never a source.

``lineprotocol``  samples as InfluxDB line protocol (shared by the InfluxDB sink and stdout)
``buffer``        points waiting for InfluxDB: compact memory, durable SQLite, fallback between them
``influx``        the InfluxDB v2 write API over urllib3 (TLS, proxies) and the delivery thread
``report``        the ``-t`` report, in the original's layout
``prometheus``    /metrics for Prometheus: the current state of every tor (Basic auth, TLS)
"""
