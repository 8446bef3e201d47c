"""The per-response stats exported at scrape time read like ordinary Prometheus metrics."""

from __future__ import annotations

from proxy.telemetry.metrics import Metrics
from proxy.telemetry.stats import DURATION_BUCKETS


def test_response_stats_export_counts_by_code_and_a_cumulative_histogram() -> None:
    metrics = Metrics()
    for status, duration in [(200, 0.001), (200, 0.003), (502, 0.001), (200, 99.0)]:
        metrics.responses.observe(status, duration)
    value = metrics.registry.get_sample_value
    assert value("drain_proxy_requests_total", {"code": "200"}) == 3
    assert value("drain_proxy_requests_total", {"code": "502"}) == 1
    bucket = "drain_proxy_request_duration_seconds_bucket"
    assert value(bucket, {"le": "0.001"}) == 2, "le is inclusive"
    assert value(bucket, {"le": "0.005"}) == 3
    assert value(bucket, {"le": repr(DURATION_BUCKETS[-1])}) == 3
    assert value(bucket, {"le": "+Inf"}) == 4
    assert value("drain_proxy_request_duration_seconds_count") == 4
    assert value("drain_proxy_request_duration_seconds_sum") == 0.001 + 0.003 + 0.001 + 99.0
