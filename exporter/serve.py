"""What the exporter serves: `/metrics`, `/-/healthy`, `/-/ready` and a landing page at `/`.

The connections, timeouts and render pool are exporter/httpserver.py's; the protocol is exporter/http1.py's.
"""

from __future__ import annotations

import gzip
import html
import logging
from collections.abc import Callable
from urllib.parse import parse_qs

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder, gzip_accepted

from exporter import __version__
from exporter.http1 import App, Request, Response
from exporter.httpserver import HEALTH_PATHS, Server

__all__ = ["ALLOWED_METHODS", "HEALTH_PATHS", "App", "Request", "Response", "Server", "make_app", "start_server"]

ALLOWED_METHODS = ("GET", "HEAD")
log = logging.getLogger("caffe_exporter.http")


def _always() -> bool:
    return True


def make_app(registry: CollectorRegistry, runs: Callable[[], list[tuple[str, str]]], *,
             healthy: Callable[[], bool] = _always, ready: Callable[[], bool] = _always) -> App:
    """`runs()` gives (run, source) pairs for the landing page.

    `healthy` and `ready` answer `/-/healthy` and `/-/ready` (200 when true, 503 when false or when they raise).
    The server calls them on its event loop (so a probe never waits behind a scrape): they must not block.
    """

    def probe(check: Callable[[], bool], good: str, bad: str) -> Response:
        try:
            ok = bool(check())
        except Exception:
            log.exception("health check %s failed", check)
            ok = False
        return Response(200, f"caffe-exporter is {good}.\n".encode()) if ok else \
            Response(503, f"caffe-exporter is {bad}.\n".encode())

    def metrics(request: Request) -> Response:
        params = parse_qs(request.query)
        source = registry.restricted_registry(params["name[]"]) if "name[]" in params else registry
        encoder, content_type = choose_encoder(request.header("Accept"))
        body = encoder(source)
        headers: tuple[tuple[str, str], ...] = (("Vary", "Accept, Accept-Encoding"),)
        if gzip_accepted(request.header("Accept-Encoding")):
            body = gzip.compress(body, compresslevel=6)
            headers += (("Content-Encoding", "gzip"),)
        return Response(200, body, content_type, headers)

    def landing(request: Request) -> Response:
        rows = "".join(f"<tr><td>{html.escape(r)}</td><td>{html.escape(s)}</td></tr>" for r, s in runs())
        body = (
            "<!doctype html><html><head><title>caffe-exporter</title></head><body>"
            f"<h1>caffe-exporter {html.escape(__version__)}</h1><p><a href='/metrics'>Metrics</a> · "
            "<a href='/-/healthy'>Healthy</a> · <a href='/-/ready'>Ready</a></p>"
            f"<h2>Runs</h2><table><tr><th>run</th><th>log</th></tr>{rows}</table></body></html>"
        ).encode()
        return Response(200, body, "text/html; charset=utf-8")

    routes: dict[str, Callable[[Request], Response]] = {
        "/metrics": metrics,
        "/": landing,
        "/-/healthy": lambda _: probe(healthy, "healthy", "not healthy"),
        "/-/ready": lambda _: probe(ready, "ready", "not ready"),
    }

    def app(request: Request) -> Response:
        route = routes.get(request.path)
        if route is None:
            return Response(404, b"not found: try /metrics\n")
        if request.method not in ALLOWED_METHODS:
            return Response(405, f"method {request.method} not allowed\n".encode(),
                            headers=(("Allow", ", ".join(ALLOWED_METHODS)),))
        return route(request)

    return app


def start_server(app: App, host: str, port: int, *, max_requests: int = 4, max_queued: int = 16,
                 max_connections: int = 512, header_timeout: float = 10.0, idle_timeout: float = 60.0,
                 write_timeout: float = 30.0) -> Server:
    """Bind `host:port` (an IPv6 address when `host` contains ':'; OSError if it cannot) and serve `app` in a
    thread until `Server.shutdown()`."""
    return Server(app, host, port, max_requests=max_requests, max_queued=max_queued,
                  max_connections=max_connections, header_timeout=header_timeout, idle_timeout=idle_timeout,
                  write_timeout=write_timeout).start()
