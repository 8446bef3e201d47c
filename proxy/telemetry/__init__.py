"""Metrics, logs, response statistics and memory: the floor everything reports to."""
