"""HTTP serving: `/metrics` from a prometheus_client registry, and a landing page at `/`."""

from __future__ import annotations

import html
import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app

from exporter import __version__

StartResponse = Callable[..., Any]
Environ = dict[str, Any]


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes every few seconds would flood the log."""


def make_app(registry: CollectorRegistry, runs: Callable[[], list[tuple[str, str]]]) -> Callable[..., Any]:
    """`runs()` gives (run, source) pairs for the landing page."""
    metrics = make_wsgi_app(registry)

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        if path == "/metrics":
            return metrics(environ, start_response)  # type: ignore[no-any-return]
        if path == "/":
            rows = "".join(f"<tr><td>{html.escape(r)}</td><td>{html.escape(s)}</td></tr>" for r, s in runs())
            body = (
                "<!doctype html><html><head><title>caffe-exporter</title></head><body>"
                f"<h1>caffe-exporter {__version__}</h1><p><a href='/metrics'>Metrics</a></p>"
                f"<h2>Runs</h2><table><tr><th>run</th><th>log</th></tr>{rows}</table></body></html>"
            ).encode()
            start_response("200 OK", [("Content-Type", "text/html; charset=utf-8")])
            return [body]
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found: try /metrics\n"]

    return app


def start_server(app: Callable[..., Any], host: str, port: int) -> tuple[WSGIServer, threading.Thread]:
    server = make_server(host, port, app, server_class=_Server, handler_class=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, name="http", daemon=True)
    thread.start()
    return server, thread
