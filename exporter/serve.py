"""HTTP serving: `/metrics`, `/-/healthy`, `/-/ready` and a landing page at `/`.

One asyncio event loop in one thread holds every connection, so an idle or slow client costs a few kilobytes,
never a thread; rendering runs in a fixed pool of `max_requests` threads. The thread count is therefore fixed
whatever clients do (the systemd unit's TasksMax relies on it), and a client that trickles its request can hold
only a connection slot, for at most `header_timeout`, never a renderer. Beyond `max_requests` running plus
`max_queued` waiting, requests get 503 at once, as exporter-toolkit's `--web.max-requests` does.

When accept() fails for want of descriptors (EMFILE/ENFILE) the listening socket stays readable; retrying at
once is a busy loop. The server stops watching it for a backoff (100 ms doubling to 1 s), logs one ERROR per
episode, counts every failure in `Server.accept_errors` and serves again at the first accept that succeeds.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gzip
import html
import http
import logging
import re
import socket
import threading
from collections.abc import Callable, Collection, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote, urlsplit

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder, gzip_accepted

from exporter import __version__

log = logging.getLogger("caffe_exporter.http")

HEALTH_PATHS = frozenset({"/-/healthy", "/-/ready"})
ALLOWED_METHODS = ("GET", "HEAD")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
# The client went away between SYN and accept(): nothing wrong with the server.
_CLIENT_ERRNOS = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.ENETDOWN, errno.EHOSTUNREACH,
                            errno.ENETUNREACH, errno.EHOSTDOWN, errno.ENOPROTOOPT, errno.EOPNOTSUPP})


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # percent-decoded, without the query
    query: str
    headers: Mapping[str, str] = field(default_factory=dict)  # lower-case names; repeated ones joined by ", "

    def header(self, name: str) -> str:
        return self.headers.get(name.lower(), "")


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()


App = Callable[[Request], Response]


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


class _BadRequest(Exception):
    def __init__(self, status: int, why: str) -> None:
        super().__init__(why)
        self.status = status


@dataclass
class _Conn:
    task: asyncio.Task[None] | None = None
    busy: bool = False  # between the end of a request's headers and the end of its response


class Server:
    """An HTTP/1.1 server for one `App`; `start()` binds (raising OSError) and serves in a thread.

    Counters (plain ints, read them from any thread): `accept_errors` (failed accept() calls, e.g. EMFILE),
    `connections_rejected` (closed at once: `max_connections` open), `requests_rejected` (503: too many requests
    running and queued), `app_errors` (the app raised: 500).
    """

    def __init__(self, app: App, host: str, port: int, *, max_requests: int = 4, max_queued: int = 16,
                 max_connections: int = 512, header_timeout: float = 10.0, idle_timeout: float = 60.0,
                 write_timeout: float = 30.0, shutdown_timeout: float = 5.0, max_header_bytes: int = 65536,
                 max_body_bytes: int = 65536, inline_paths: Collection[str] = HEALTH_PATHS,
                 accept_backoff: tuple[float, float] = (0.1, 1.0)) -> None:
        if max_requests < 1 or max_queued < 0 or max_connections < 1:
            raise ValueError("max_requests and max_connections must be >= 1, max_queued >= 0")
        self.app = app
        self.host, self.port = host, port
        self.max_requests, self.max_queued, self.max_connections = max_requests, max_queued, max_connections
        self.header_timeout, self.idle_timeout, self.write_timeout = header_timeout, idle_timeout, write_timeout
        self.shutdown_timeout = shutdown_timeout
        self.max_header_bytes, self.max_body_bytes = max_header_bytes, max_body_bytes
        self.inline_paths = frozenset(inline_paths)
        self.accept_backoff = accept_backoff
        self.accept_errors = 0
        self.connections_rejected = 0
        self.requests_rejected = 0
        self.app_errors = 0
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._pool = ThreadPoolExecutor(max_workers=max_requests, thread_name_prefix="http-render")
        self._conns: dict[int, _Conn] = {}
        self._next_id = 0
        self._requests = 0  # running + queued in the pool
        self._stop: asyncio.Event | None = None
        self._backoff = 0.0  # > 0: in an accept-failure episode
        self._episode_failures = 0
        self._app_failing = False

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port): with port 0, the one the kernel chose."""
        assert self._sock is not None, "not started"
        name = self._sock.getsockname()
        return name[0], name[1]

    @property
    def open_connections(self) -> int:
        return len(self._conns)

    @property
    def pending_requests(self) -> int:
        """Requests rendering or queued for a renderer."""
        return self._requests

    def start(self) -> Server:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        self._sock = socket.create_server((self.host, self.port), family=family, backlog=128)
        self._sock.setblocking(False)
        self._loop = asyncio.new_event_loop()
        started = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(started,), name="http", daemon=True)
        self._thread.start()
        started.wait()
        return self

    def shutdown(self) -> None:
        """Stop accepting, let requests in flight finish (up to `shutdown_timeout`), close every connection and
        join the threads. Idempotent."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        self._thread = None
        with contextlib.suppress(RuntimeError):  # the loop already ended
            loop.call_soon_threadsafe(self._request_stop)
        thread.join()
        self._pool.shutdown(wait=True)

    # ------------------------------------------------------------------------------------------ event loop

    def _run(self, started: threading.Event) -> None:
        loop = self._loop
        assert loop is not None
        asyncio.set_event_loop(loop)
        loop.set_exception_handler(lambda _, ctx: log.error("http: %s", ctx.get("message"),
                                                            exc_info=ctx.get("exception")))
        try:
            loop.run_until_complete(self._main(started))
        finally:
            loop.close()

    def _request_stop(self) -> None:
        if self._stop is not None:
            self._stop.set()

    async def _main(self, started: threading.Event) -> None:
        loop = asyncio.get_running_loop()
        sock = self._sock
        assert sock is not None
        self._stop = asyncio.Event()
        loop.add_reader(sock, self._on_acceptable)
        started.set()
        await self._stop.wait()
        loop.remove_reader(sock)
        sock.close()
        for c in self._conns.values():
            if not c.busy and c.task is not None:
                c.task.cancel()
        tasks = [c.task for c in self._conns.values() if c.task is not None]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=self.shutdown_timeout)
            for t in pending:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def _on_acceptable(self) -> None:
        sock = self._sock
        assert sock is not None
        for _ in range(64):  # bounded, so that one busy listener cannot starve the connections
            try:
                conn, _ = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if e.errno in _CLIENT_ERRNOS:
                    continue
                self._accept_failed(e)
                return
            if self._backoff:
                log.warning("accepting connections again after %d failed accept() calls", self._episode_failures)
                self._backoff, self._episode_failures = 0.0, 0
            if len(self._conns) >= self.max_connections:
                self.connections_rejected += 1
                conn.close()
                continue
            self._start_connection(conn)

    def _accept_failed(self, e: OSError) -> None:
        self.accept_errors += 1
        self._episode_failures += 1
        low, high = self.accept_backoff
        if not self._backoff:
            why = "out of file descriptors (raise LimitNOFILE / ulimit -n)" if e.errno in _RESOURCE_ERRNOS else ""
            log.error("cannot accept HTTP connections: %s %s; retrying every %.1f-%.1f s until it succeeds",
                      e.strerror or e, why, low, high)
            self._backoff = low
        else:
            self._backoff = min(high, self._backoff * 2)
        loop = asyncio.get_running_loop()
        sock = self._sock
        assert sock is not None
        loop.remove_reader(sock)
        loop.call_later(self._backoff, self._resume_accepting)

    def _resume_accepting(self) -> None:
        if self._stop is not None and not self._stop.is_set() and self._sock is not None:
            asyncio.get_running_loop().add_reader(self._sock, self._on_acceptable)

    def _start_connection(self, conn: socket.socket) -> None:
        conn.setblocking(False)
        key = self._next_id
        self._next_id += 1
        state = _Conn()
        self._conns[key] = state
        state.task = asyncio.get_running_loop().create_task(self._connection(conn, state))
        state.task.add_done_callback(lambda _: self._conns.pop(key, None))

    # ------------------------------------------------------------------------------------------ one connection

    async def _connection(self, conn: socket.socket, state: _Conn) -> None:
        loop = asyncio.get_running_loop()
        opened = loop.time()
        try:
            reader, writer = await asyncio.open_connection(sock=conn, limit=self.max_header_bytes)
        except OSError:
            conn.close()
            return
        try:
            first = True
            while True:
                # The first request must be complete `header_timeout` after connect; later ones get
                # `idle_timeout` to start and `header_timeout` from their first byte. Silence is closed
                # silently; a request begun and not finished in time gets 408.
                try:
                    async with asyncio.timeout(self.header_timeout if first else self.idle_timeout):
                        start = await reader.read(1)
                except TimeoutError:
                    return
                if not start:
                    return
                try:
                    deadline = (opened if first else loop.time()) + self.header_timeout
                    async with asyncio.timeout_at(deadline):
                        head = start + await reader.readuntil(b"\r\n\r\n")
                        request, keep_alive, length = self._parse(head)
                        if length:
                            await reader.readexactly(length)
                except TimeoutError:
                    await self._send(writer, self._error(408, "request not received in time"), False)
                    return
                except asyncio.LimitOverrunError:
                    await self._send(writer, self._error(431, "request header too large"), False)
                    return
                except _BadRequest as e:
                    await self._send(writer, self._error(e.status, str(e)), False)
                    return
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                first = False
                state.busy = True
                response = await self._respond(request)
                assert self._stop is not None
                keep_alive = keep_alive and not self._stop.is_set()
                if not await self._send(writer, self._encode(request, response, keep_alive), keep_alive):
                    return
                state.busy = False
                if not keep_alive:
                    return
        except asyncio.CancelledError:
            writer.transport.abort()
            raise
        finally:
            if not writer.transport.is_closing():
                writer.close()

    def _parse(self, head: bytes) -> tuple[Request, bool, int]:
        lines = head.lstrip(b"\r\n")[:-4].split(b"\r\n")
        if len(lines[0]) > 8192:
            raise _BadRequest(414, "request line too long")
        if len(lines) > 101:
            raise _BadRequest(431, "too many header fields")
        parts = lines[0].decode("latin-1").split(" ")
        if len(parts) != 3 or not _TOKEN.fullmatch(parts[0]):
            raise _BadRequest(400, "malformed request line")
        method, target, version = parts
        if version not in ("HTTP/1.1", "HTTP/1.0"):
            raise _BadRequest(505 if version.startswith("HTTP/") else 400, "HTTP/1.1 or HTTP/1.0 only")
        headers: dict[str, str] = {}
        for raw in lines[1:]:
            name, sep, value = raw.decode("latin-1").partition(":")
            if not sep or not _TOKEN.fullmatch(name):
                raise _BadRequest(400, "malformed header field")
            name = name.lower()
            headers[name] = f"{headers[name]}, {value.strip()}" if name in headers else value.strip()
        if target.startswith("/"):
            raw_path, _, query = target.partition("?")
        elif target.lower().startswith(("http://", "https://")):
            parts_ = urlsplit(target)
            raw_path, query = parts_.path or "/", parts_.query
        else:
            raw_path, query = target, ""
        if "transfer-encoding" in headers:
            raise _BadRequest(501, "request bodies with Transfer-Encoding are not supported")
        length_text = headers.get("content-length", "0")
        if not length_text.isdigit():
            raise _BadRequest(400, "malformed Content-Length")
        length = int(length_text)
        if length > self.max_body_bytes:
            raise _BadRequest(413, "request body too large")
        tokens = {t.strip().lower() for t in headers.get("connection", "").split(",")}
        keep_alive = version == "HTTP/1.1" and "close" not in tokens
        return Request(method, unquote(raw_path, errors="replace"), query, headers), keep_alive, length

    async def _respond(self, request: Request) -> Response:
        if request.path in self.inline_paths:
            return self._call(request)
        if self._requests >= self.max_requests + self.max_queued:
            self.requests_rejected += 1
            return Response(503, b"too many concurrent requests, try again\n", headers=(("Retry-After", "1"),))
        self._requests += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, self._call, request)
        finally:
            self._requests -= 1

    def _call(self, request: Request) -> Response:
        try:
            response = self.app(request)
        except Exception:
            self.app_errors += 1
            if not self._app_failing:
                log.exception("answering %s %s failed (logged once until a request succeeds)", request.method,
                              request.path)
            self._app_failing = True
            return self._error(500, "internal error; see the exporter's log")
        self._app_failing = False
        return response

    @staticmethod
    def _error(status: int, why: str) -> Response:
        return Response(status, f"{why}\n".encode())

    @staticmethod
    def _encode(request: Request | None, response: Response, keep_alive: bool) -> bytes:
        try:
            reason = http.HTTPStatus(response.status).phrase
        except ValueError:
            reason = "Unknown"
        lines = [f"HTTP/1.1 {response.status} {reason}", f"Content-Type: {response.content_type}",
                 f"Content-Length: {len(response.body)}"]
        lines += [f"{k}: {v}" for k, v in response.headers]
        if not keep_alive:
            lines.append("Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        return head if request is not None and request.method == "HEAD" else head + response.body

    async def _send(self, writer: asyncio.StreamWriter, data: bytes | Response, keep_alive: bool) -> bool:
        """Write and flush within `write_timeout`; False (connection aborted) when the client does not read."""
        if isinstance(data, Response):
            data = self._encode(None, data, keep_alive)
        try:
            writer.write(data)
            async with asyncio.timeout(self.write_timeout):
                await writer.drain()
        except (TimeoutError, ConnectionError):
            writer.transport.abort()
            return False
        return True


def start_server(app: App, host: str, port: int, *, max_requests: int = 4, max_queued: int = 16,
                 max_connections: int = 512, header_timeout: float = 10.0, idle_timeout: float = 60.0,
                 write_timeout: float = 30.0) -> Server:
    """Bind `host:port` (an IPv6 address when `host` contains ':'; OSError if it cannot) and serve `app` in a
    thread until `Server.shutdown()`."""
    return Server(app, host, port, max_requests=max_requests, max_queued=max_queued,
                  max_connections=max_connections, header_timeout=header_timeout, idle_timeout=idle_timeout,
                  write_timeout=write_timeout).start()
