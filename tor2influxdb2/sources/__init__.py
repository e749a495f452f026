"""Sources: what a tor is asked and how its answers become samples.

``control``      the control port (GETINFO/GETCONF on one kept-open, authenticated connection)
``metricsport``  tor's MetricsPort (Prometheus text over HTTP)

Sources import only the model, errors, targets and the redactor, never a sink.
"""
