"""The Prometheus text registry."""
from __future__ import annotations

import pytest

from segany.server.http.metrics import Counter, Gauge, Histogram, Registry


def test_text_exposition():
    registry = Registry()
    requests = registry.add(Counter("t_requests_total", "requests", ("route", "status")))
    depth = registry.add(Gauge("t_depth", "depth"))
    registry.add(Gauge("t_live", "read at scrape", source=lambda: 7))
    latency = registry.add(Histogram("t_seconds", "latency", ("route",), buckets=(0.1, 1.0)))
    requests.inc(route='/a"b', status="200")
    requests.inc(2, route='/a"b', status="200")
    depth.set(3)
    for value in (0.05, 0.5, 5.0):
        latency.observe(value, route="/a")
    text = registry.render()
    assert '# TYPE t_requests_total counter' in text
    assert 't_requests_total{route="/a\\"b",status="200"} 3' in text
    assert "t_depth 3" in text and "t_live 7" in text
    assert 't_seconds_bucket{route="/a",le="0.1"} 1' in text
    assert 't_seconds_bucket{route="/a",le="1"} 2' in text
    assert 't_seconds_bucket{route="/a",le="+Inf"} 3' in text
    assert 't_seconds_sum{route="/a"} 5.55' in text and 't_seconds_count{route="/a"} 3' in text
    assert latency.count(route="/a") == 3


def test_labels_must_match():
    counter = Counter("c", "c", ("route",))
    with pytest.raises(ValueError):
        counter.inc(path="/x")
