"""`caffe_exporter_http_*`: how the HTTP server is coping (descriptor exhaustion, caps, failed renders).

The server is started after the pipeline is built, so its counters arrive through a callable; they are plain
ints read without a lock (each is one attribute read).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from exporter.collectors.family import Family

# server attribute -> its family
FAMILIES: dict[str, Family] = {
    "accept_errors": Family("caffe_exporter_http_accept_errors", "counter", "accept() calls that failed "
                            "(EMFILE/ENFILE: out of file descriptors); the server backs off and serves again once "
                            "descriptors are free."),
    "connections_rejected": Family("caffe_exporter_http_connections_rejected", "counter", "Connections closed at "
                                   "once because max_connections were open."),
    "requests_rejected": Family("caffe_exporter_http_requests_rejected", "counter", "Requests answered 503 because "
                                "max_requests were running and the queue was full."),
    "app_errors": Family("caffe_exporter_http_app_errors", "counter", "Requests answered 500 because rendering "
                         "raised (see the exporter's log)."),
    "open_connections": Family("caffe_exporter_http_open_connections", "gauge", "HTTP connections open now."),
}


class HttpCollector(Collector):
    def __init__(self, stats: Callable[[], Mapping[str, int]]) -> None:
        self._stats = stats

    def describe(self) -> Iterable[Metric]:
        return [f.empty() for f in FAMILIES.values()]

    def collect(self) -> Iterable[Metric]:
        stats = self._stats()
        return [spec.of(float(stats.get(key, 0))) for key, spec in FAMILIES.items()]
