"""Monitoring: Prometheus metrics, alert rules and their notification."""
