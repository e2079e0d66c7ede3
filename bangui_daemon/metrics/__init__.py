"""Prometheus exposition: the text format over HTTP and as a node_exporter textfile."""
