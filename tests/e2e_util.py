"""A small harness for end-to-end tests on loopback: real daemons, bounded waits, guaranteed cleanup.

Used by ``tests/test_alerts_e2e.py``; meant to be reused by any test that starts the exporter, ``prometheus``,
``prometheus-alertmanager`` or another server as a subprocess. Nothing in here knows about Caffe.

Building blocks
---------------
``E2E_MARKS``
    ``pytestmark = E2E_MARKS``: marks a module ``e2e`` and skips it only when ``CAFFE_EXPORTER_SKIP_E2E=1``.
``require_binary(name)``
    Path of an executable on ``PATH``; *fails* the test (never skips) when it is missing, since CI installs it.
``free_port()``
    A TCP port on 127.0.0.1 that was free a moment ago (bind to port 0, read it, close).
``running(name, cmd, log)``
    Context manager: starts ``cmd`` in its own process group with stdout+stderr to ``log`` and always stops it
    on exit (SIGTERM to the group, bounded wait, then SIGKILL). Yields a ``ManagedProcess``; ``tail()`` gives
    the last lines of its output for failure messages.
``wait_until(what, check, timeout, procs=...)``
    Polls ``check()`` until it returns something truthy; fails with the outputs of ``procs`` when the timeout
    passes or one of them exits. Every wait in an e2e test should go through it (or have its own bound).
``http_get`` / ``wait_http_ok``
    Plain urllib GET with a timeout; wait until a URL answers 200 (a ``/-/ready`` or ``/metrics`` endpoint).
``PrometheusAPI``
    ``query(expr)`` (instant query via ``/api/v1/query``), ``wait_for_query(expr, timeout)`` (until the result is
    non-empty), ``rules()``, ``alerts()``.
``WebhookReceiver``
    Context manager: an HTTP server in a thread on 127.0.0.1 that records every POSTed JSON body (path, body,
    ``time.monotonic()`` of arrival). Point Alertmanager's ``webhook_configs`` at ``receiver.url + "/path"``.
``samples(exposition, name)``
    The samples (labels, value) of one metric family in Prometheus text exposition.
``AlertmanagerAPI``
    ``post_alerts(alerts)`` (``POST /api/v2/alerts``, as Prometheus sends them), ``alerts()`` (``GET /api/v2/alerts``
    with each alert's ``status``: ``state``, ``inhibitedBy``, ``silencedBy``), ``wait_ready(timeout)``.
``shift_glog_times(text, last)``
    ``text`` with its year-less glog prefixes (``IMMDD HH:MM:SS.uuuuuu``) moved by one offset so that the newest
    is ``last`` (Unix seconds): an old log made "live" without changing anything else in it.

Example::

    with WebhookReceiver() as hook, running("prometheus", [prom, ...], tmp / "prom.log") as proc:
        api = PrometheusAPI(f"http://127.0.0.1:{port}", procs=[proc])
        api.wait_ready(timeout=30)
        api.wait_for_query('up{job="caffe-exporter"} == 1', timeout=30)
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import pytest
from prometheus_client.parser import text_string_to_metric_families

T = TypeVar("T")

SKIP_ENV = "CAFFE_EXPORTER_SKIP_E2E"
E2E_MARKS = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.environ.get(SKIP_ENV) == "1", reason=f"{SKIP_ENV}=1"),
]


def require_binary(name: str) -> str:
    """Absolute path of ``name`` on PATH; fail loudly (not skip) when missing: CI installs the binaries."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"{name} not found on PATH. Install it (Debian: prometheus, prometheus-alertmanager) "
            f"or set {SKIP_ENV}=1 to skip the end-to-end tests.",
            pytrace=False,
        )
    return path


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free on ``host`` when this returned (small race with other processes, fine on CI)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


# ---------------------------------------------------------------------------------------------- processes


@dataclass
class ManagedProcess:
    """A subprocess started by :func:`running`; its combined output goes to ``log``."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        body = "\n".join(text.splitlines()[-lines:])
        state = "running" if self.alive else f"exited with {self.popen.returncode}"
        return f"--- {self.name} ({state}), last {lines} lines of {self.log} ---\n{body}"

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the process group, wait up to ``timeout``, then SIGKILL it. Idempotent."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(timeout=timeout)
        else:
            # the leader is gone; make sure no child it left in the group survives
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.popen.pid, signal.SIGKILL)


@contextlib.contextmanager
def running(
    name: str,
    cmd: Sequence[str],
    log: Path,
    *,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    stop_timeout: float = 10.0,
) -> Iterator[ManagedProcess]:
    """Run ``cmd`` for the duration of the ``with`` block; it is stopped on exit, whatever happens inside."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        popen = subprocess.Popen(
            list(cmd),
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group: stop() reaches children too
        )
    proc = ManagedProcess(name, popen, log)
    try:
        yield proc
    finally:
        proc.stop(stop_timeout)


# ---------------------------------------------------------------------------------------------- waiting


def wait_until(
    what: str,
    check: Callable[[], T | None],
    timeout: float,
    *,
    interval: float = 0.25,
    procs: Sequence[ManagedProcess] = (),
    context: Callable[[], str] | None = None,
) -> T:
    """Poll ``check()`` until it returns a truthy value and return it.

    Fails the test when ``timeout`` seconds pass or one of ``procs`` exits, with ``context()`` (if given) and
    the tail of every process' output. Exceptions from ``check`` that mean "not yet" (OSError incl. connection
    errors, ValueError, KeyError, LookupError) are retried; the last one is reported.
    """

    def details() -> str:
        extra = ""
        if context is not None:
            try:
                extra = context() + "\n"
            except Exception as exc:  # diagnostics must not hide the real failure
                extra = f"(context unavailable: {exc!r})\n"
        return extra + "\n".join(p.tail() for p in procs)

    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        for proc in procs:
            if not proc.alive:
                pytest.fail(f"{proc.name} exited while waiting for {what}\n{details()}", pytrace=False)
        try:
            result = check()
            if result:
                return result
        except (OSError, ValueError, LookupError) as exc:
            last_error = exc
        if time.monotonic() >= deadline:
            pytest.fail(
                f"timed out after {timeout:.0f}s waiting for {what} (last error: {last_error!r})\n{details()}",
                pytrace=False,
            )
        time.sleep(interval)


def http_get(url: str, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return str(resp.read().decode("utf-8", errors="replace"))


def wait_http_ok(url: str, timeout: float, *, procs: Sequence[ManagedProcess] = ()) -> str:
    """Wait until GET ``url`` answers 200 and return the body."""

    def check() -> str | None:
        try:
            return http_get(url, timeout=2.0) or " "
        except urllib.error.HTTPError as exc:  # 503 while starting
            raise OSError(f"HTTP {exc.code}") from exc

    return wait_until(f"GET {url}", check, timeout, procs=procs)


# ---------------------------------------------------------------------------------------------- Prometheus


@dataclass
class PrometheusAPI:
    """Minimal client for a Prometheus server's HTTP API (``/api/v1``)."""

    url: str
    procs: Sequence[ManagedProcess] = field(default_factory=tuple)

    def _get(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        body = json.loads(http_get(f"{self.url}/api/v1/{path}{query}", timeout=10.0))
        if body.get("status") != "success":
            raise ValueError(f"{path}: {body}")
        return body["data"]

    def wait_ready(self, timeout: float) -> None:
        wait_http_ok(f"{self.url}/-/ready", timeout, procs=self.procs)

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant query; the ``result`` list (vector results: ``[{"metric": {...}, "value": [t, "v"]}]``)."""
        return list(self._get("query", query=expr)["result"])

    def wait_for_query(self, expr: str, timeout: float) -> list[dict[str, Any]]:
        """Wait until ``expr`` returns a non-empty result and return it."""
        return wait_until(
            f"Prometheus query {expr!r} to be non-empty",
            lambda: self.query(expr),
            timeout,
            interval=0.5,
            procs=self.procs,
        )

    def rules(self) -> list[dict[str, Any]]:
        return list(self._get("rules")["groups"])

    def alerts(self) -> list[dict[str, Any]]:
        return list(self._get("alerts")["alerts"])


def samples(exposition: str, name: str) -> list[tuple[dict[str, str], float]]:
    """``(labels, value)`` of every sample of metric family ``name`` in Prometheus text exposition."""
    out: list[tuple[dict[str, str], float]] = []
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            if sample.name == name:
                out.append((dict(sample.labels), float(sample.value)))
    return out


# ---------------------------------------------------------------------------------------------- webhook


@dataclass
class Notification:
    """One POST received by :class:`WebhookReceiver`."""

    path: str
    body: Any
    received: float  # time.monotonic() at arrival


class WebhookReceiver:
    """HTTP server on 127.0.0.1 (free port) in a daemon thread, recording POSTed JSON bodies.

    ``url`` is its base URL; every POST to any path is answered 200 and recorded in ``notifications``
    (thread-safe snapshot via :meth:`received`). Use as a context manager so the server is always shut down.
    """

    def __init__(self, host: str = "127.0.0.1") -> None:
        self._lock = threading.Lock()
        self._notifications: list[Notification] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                try:
                    body: Any = json.loads(raw or b"null")
                except ValueError:
                    body = raw.decode("utf-8", errors="replace")
                with receiver._lock:
                    receiver._notifications.append(Notification(self.path, body, time.monotonic()))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                return

        self._server = ThreadingHTTPServer((host, 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://{host}:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="webhook", daemon=True)

    def __enter__(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def received(self) -> list[Notification]:
        with self._lock:
            return list(self._notifications)

    def wait_for(
        self,
        what: str,
        predicate: Callable[[Notification], bool],
        timeout: float,
        *,
        procs: Sequence[ManagedProcess] = (),
        context: Callable[[], str] | None = None,
    ) -> Notification:
        """The first notification (oldest first) matching ``predicate``, waiting up to ``timeout`` seconds.

        On timeout the failure lists every notification received, then ``context()`` (e.g. Prometheus' alerts).
        """

        def check() -> Notification | None:
            return next((n for n in self.received() if predicate(n)), None)

        def received_context() -> str:
            got = self.received()
            listing = "\n".join(f"  {n.path}: {json.dumps(n.body)[:2000]}" for n in got)
            extra = f"\n{context()}" if context is not None else ""
            return f"webhook received {len(got)} notification(s):\n{listing}{extra}"

        return wait_until(what, check, timeout, interval=0.1, procs=procs, context=received_context)


# ---------------------------------------------------------------------------------------------- Alertmanager


@dataclass
class AlertmanagerAPI:
    """Minimal client for an Alertmanager's HTTP API v2 (``/api/v2``)."""

    url: str
    procs: Sequence[ManagedProcess] = field(default_factory=tuple)

    def wait_ready(self, timeout: float) -> None:
        wait_http_ok(f"{self.url}/-/ready", timeout, procs=self.procs)

    def post_alerts(self, alerts: Sequence[dict[str, Any]]) -> None:
        """``POST /api/v2/alerts``: each alert a dict with ``labels``, optional ``annotations``, ``startsAt``,
        ``endsAt`` (RFC 3339), the body Prometheus itself sends."""
        request = urllib.request.Request(
            f"{self.url}/api/v2/alerts",
            data=json.dumps(list(alerts)).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10.0) as resp:
            if resp.status != 200:
                raise OSError(f"POST /api/v2/alerts: HTTP {resp.status}")

    def alerts(self) -> list[dict[str, Any]]:
        """``GET /api/v2/alerts``: every alert it holds (active, inhibited and silenced ones)."""
        return list(json.loads(http_get(f"{self.url}/api/v2/alerts", timeout=10.0)))


# ---------------------------------------------------------------------------------------------- glog

_GLOG_PREFIX = re.compile(r"^([IWEF])(\d\d)(\d\d) (\d\d):(\d\d):(\d\d)\.(\d{6})(?= )", re.MULTILINE)


def shift_glog_times(text: str, last: float) -> str:
    """``text`` with every year-less glog prefix moved by the same offset so that the newest one reads ``last``.

    glog prints local time without a year (``I1126 14:27:44.084013``); the prefixes are read in the year of
    ``last`` and written back in local time, as glog writes them, so a reader that takes the year from the
    file's mtime (a file written now) and the local time zone sees the newest line at ``last``. Lines without a
    prefix (prototxt dumps, stack traces) and the rest of every line are left as they are.
    """
    year = datetime.datetime.fromtimestamp(last).year

    def parse(m: re.Match[str]) -> datetime.datetime:
        month, day, hh, mm, ss, us = (int(g) for g in m.groups()[1:])
        return datetime.datetime(year, month, day, hh, mm, ss, us)

    stamps = [parse(m) for m in _GLOG_PREFIX.finditer(text)]
    if not stamps:
        raise ValueError("no glog prefix in text")
    offset = datetime.datetime.fromtimestamp(last) - max(stamps)

    def shifted(m: re.Match[str]) -> str:
        return m.group(1) + (parse(m) + offset).strftime("%m%d %H:%M:%S.%f")

    return _GLOG_PREFIX.sub(shifted, text)
