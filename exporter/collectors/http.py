"""`caffe_exporter_http_*`: how the HTTP server is coping (descriptor exhaustion, caps, failed renders).

The server is started after the pipeline is built, so its counters arrive through a callable; they are plain
ints read without a lock (each is one attribute read).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

FAMILIES: dict[str, tuple[str, str]] = {
    "accept_errors": ("counter", "accept() calls that failed (EMFILE/ENFILE: out of file descriptors); the server "
                      "backs off and serves again once descriptors are free."),
    "connections_rejected": ("counter", "Connections closed at once because max_connections were open."),
    "requests_rejected": ("counter", "Requests answered 503 because max_requests were running and the queue "
                          "was full."),
    "app_errors": ("counter", "Requests answered 500 because rendering raised (see the exporter's log)."),
    "open_connections": ("gauge", "HTTP connections open now."),
}


class HttpCollector(Collector):
    def __init__(self, stats: Callable[[], Mapping[str, int]]) -> None:
        self._stats = stats

    def collect(self) -> Iterable[Metric]:
        stats = self._stats()
        out: list[Metric] = []
        for key, (kind, doc) in FAMILIES.items():
            name = f"caffe_exporter_http_{key}"
            value = float(stats.get(key, 0))
            out.append(CounterMetricFamily(name, doc, value) if kind == "counter" else GaugeMetricFamily(name, doc,
                                                                                                      value))
        return out
