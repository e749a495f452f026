"""The control-port source: a bounded reply reader, authentication, the metric sets."""
