"""A small Prometheus text-format registry (counters, gauges, histograms with labels).

Own code rather than `prometheus_client` so the server needs no extra package and each app instance
(tests start several) has its own registry. Updates happen on the event loop and in inference
threads, so every metric guards its values with a lock.
"""
from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence

LabelValues = tuple[str, ...]

LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


def _format_value(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels_text(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    pairs = [f'{name}="{_escape(value)}"' for name, value in zip(names, values)]
    if extra:
        pairs.append(extra)
    return "{" + ",".join(pairs) + "}" if pairs else ""


class _Metric:
    kind = "untyped"

    def __init__(self, name: str, help: str, label_names: Sequence[str] = ()) -> None:
        self.name = name
        self.help = help
        self.label_names = tuple(label_names)
        self._lock = threading.Lock()

    def _key(self, labels: dict[str, str]) -> LabelValues:
        if set(labels) != set(self.label_names):
            raise ValueError(f"{self.name} takes labels {self.label_names}, got {tuple(labels)}")
        return tuple(str(labels[name]) for name in self.label_names)

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]


class Counter(_Metric):
    kind = "counter"

    def __init__(self, name: str, help: str, label_names: Sequence[str] = ()) -> None:
        super().__init__(name, help, label_names)
        self._values: dict[LabelValues, float] = {}

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, **labels: str) -> float:
        with self._lock:
            return self._values.get(self._key(labels), 0.0)

    def render(self) -> list[str]:
        with self._lock:
            items = sorted(self._values.items())
        if not items and not self.label_names:
            items = [((), 0.0)]
        return self.header() + [f"{self.name}{_labels_text(self.label_names, k)} {_format_value(v)}" for k, v in items]


class Gauge(_Metric):
    """A value set directly, or read at scrape time from `source` (a callable)."""

    kind = "gauge"

    def __init__(self, name: str, help: str, source: Callable[[], float] | None = None) -> None:
        super().__init__(name, help)
        self._value = 0.0
        self._source = source

    def set(self, value: float) -> None:
        with self._lock:
            self._value = float(value)

    def set_source(self, source: Callable[[], float]) -> None:
        """Read the value from `source()` at scrape time from now on."""
        self._source = source

    def value(self) -> float:
        if self._source is not None:
            return float(self._source())
        with self._lock:
            return self._value

    def render(self) -> list[str]:
        return self.header() + [f"{self.name} {_format_value(self.value())}"]


class Histogram(_Metric):
    kind = "histogram"

    def __init__(self, name: str, help: str, label_names: Sequence[str] = (),
                 buckets: Sequence[float] = LATENCY_BUCKETS_S) -> None:
        super().__init__(name, help, label_names)
        self.buckets = tuple(sorted(buckets)) + (math.inf,)
        self._series: dict[LabelValues, tuple[list[int], list[float]]] = {}

    def observe(self, value: float, **labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            counts, total = self._series.setdefault(key, ([0] * len(self.buckets), [0.0]))
            for index, bound in enumerate(self.buckets):
                if value <= bound:
                    counts[index] += 1
            total[0] += value

    def count(self, **labels: str) -> int:
        with self._lock:
            series = self._series.get(self._key(labels))
            return series[0][-1] if series else 0

    def render(self) -> list[str]:
        lines = self.header()
        with self._lock:
            items = sorted((k, (list(c), t[0])) for k, (c, t) in self._series.items())
        if not items and not self.label_names:  # as Prometheus clients do: an unlabelled series exists from the start
            items = [((), ([0] * len(self.buckets), 0.0))]
        for key, (counts, total) in items:
            for bound, count in zip(self.buckets, counts):
                le = f'le="{_format_value(bound)}"'
                lines.append(f"{self.name}_bucket{_labels_text(self.label_names, key, le)} {count}")
            lines.append(f"{self.name}_sum{_labels_text(self.label_names, key)} {_format_value(total)}")
            lines.append(f"{self.name}_count{_labels_text(self.label_names, key)} {counts[-1]}")
        return lines


class Registry:
    """Holds the metrics of one server; `render()` gives the Prometheus text exposition."""

    content_type = "text/plain; version=0.0.4; charset=utf-8"

    def __init__(self) -> None:
        self._metrics: list[_Metric] = []

    def add(self, metric: _Metric) -> _Metric:
        self._metrics.append(metric)
        return metric

    def render(self) -> str:
        lines: list[str] = []
        for metric in self._metrics:
            lines.extend(metric.render())  # type: ignore[attr-defined]
        return "\n".join(lines) + "\n"


class ServerMetrics:
    """The server's metrics; the engine and the middleware update them."""

    def __init__(self) -> None:
        self.registry = Registry()
        add = self.registry.add
        self.requests = add(Counter("segany_requests_total", "HTTP requests by route and status",
                                    ("route", "status")))
        self.latency = add(Histogram("segany_request_duration_seconds", "HTTP request latency", ("route",)))
        self.queue_depth = add(Gauge("segany_queue_depth", "inference jobs waiting or running"))
        self.cache_hits = add(Counter("segany_embedding_cache_hits_total", "embedding cache hits"))
        self.cache_misses = add(Counter("segany_embedding_cache_misses_total", "embedding cache misses"))
        self.cache_bytes = add(Gauge("segany_embedding_cache_bytes", "bytes held by the embedding cache"))
        self.embed_seconds = add(Histogram("segany_embed_seconds", "time to embed one micro-batch"))
        self.embed_batch = add(Histogram("segany_embed_batch_size", "images per embed micro-batch",
                                         buckets=BATCH_BUCKETS))
        self.decode_seconds = add(Histogram("segany_decode_seconds", "time to decode one prompt batch"))
        self.decode_batch = add(Histogram("segany_decode_batch_size", "prompts per decode batch",
                                          buckets=BATCH_BUCKETS))
        self.auto_seconds = add(Histogram("segany_auto_seconds", "time for one automatic mask generation"))
        self.rejected = add(Counter("segany_rejected_total", "requests refused for load", ("reason",)))
        self.models_loaded = add(Gauge("segany_models_loaded", "models currently loaded"))
