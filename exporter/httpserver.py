"""The HTTP server: connections, timeouts, caps and the render pool (what it serves is exporter/serve.py).

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
import logging
import socket
import threading
from collections.abc import Collection
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from exporter.http1 import App, BadRequest, Request, Response, encode, error, parse_head

log = logging.getLogger("caffe_exporter.http")

HEALTH_PATHS = frozenset({"/-/healthy", "/-/ready"})
_RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
# The client went away between SYN and accept(): nothing wrong with the server.
_CLIENT_ERRNOS = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.ENETDOWN, errno.EHOSTUNREACH,
                            errno.ENETUNREACH, errno.EHOSTDOWN, errno.ENOPROTOOPT, errno.EOPNOTSUPP})


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
                got = await self._read_request(reader, writer, opened if first else None)
                if got is None:
                    return
                request, keep_alive = got
                first = False
                state.busy = True
                response = await self._respond(request)
                assert self._stop is not None
                keep_alive = keep_alive and not self._stop.is_set()
                if not await self._send(writer, encode(request, response, keep_alive), keep_alive):
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

    async def _read_request(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                            opened: float | None) -> tuple[Request, bool] | None:
        """The next request and whether to keep the connection, or None when the connection is to be closed.

        The first request (`opened` = when the connection was made) must be complete `header_timeout` after
        connect; later ones get `idle_timeout` to start and `header_timeout` from their first byte. Silence is
        closed silently; a request begun and not finished in time gets 408."""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.header_timeout if opened is not None else self.idle_timeout):
                start = await reader.read(1)
        except TimeoutError:
            return None
        if not start:
            return None
        try:
            async with asyncio.timeout_at((opened if opened is not None else loop.time()) + self.header_timeout):
                head = start + await reader.readuntil(b"\r\n\r\n")
                request, keep_alive, length = parse_head(head, self.max_body_bytes)
                if length:
                    await reader.readexactly(length)
        except TimeoutError:
            await self._send(writer, error(408, "request not received in time"), False)
            return None
        except asyncio.LimitOverrunError:
            await self._send(writer, error(431, "request header too large"), False)
            return None
        except BadRequest as e:
            await self._send(writer, error(e.status, str(e)), False)
            return None
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        return request, keep_alive

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
            return error(500, "internal error; see the exporter's log")
        self._app_failing = False
        return response

    async def _send(self, writer: asyncio.StreamWriter, data: bytes | Response, keep_alive: bool) -> bool:
        """Write and flush within `write_timeout`; False (connection aborted) when the client does not read."""
        if isinstance(data, Response):
            data = encode(None, data, keep_alive)
        try:
            writer.write(data)
            async with asyncio.timeout(self.write_timeout):
                await writer.drain()
        except (TimeoutError, ConnectionError):
            writer.transport.abort()
            return False
        return True
