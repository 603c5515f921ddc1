"""The HTTP front (exporter/serve.py) over real sockets on loopback.

What it must keep doing: the Prometheus exposition of a registry at /metrics (OpenMetrics by `Accept`, gzip by
`Accept-Encoding`, `?name[]=` filtering), an escaped landing page at /, 404 elsewhere, 405 with `Allow` for
methods other than GET and HEAD, HEAD without a body, `/-/healthy` and `/-/ready`.

What it must survive (reliability review D2, D3, D10): hundreds of idle connections and a slowloris client do
not delay a scrape, idle connections are closed after a timeout, the thread count is fixed, too many requests
get 503 rather than a queue without end, and running out of file descriptors neither spins nor stays silent.

Waits are bounded in time and count; bounds on durations are generous (a loaded 2-core machine passes them).
"""

from __future__ import annotations

import contextlib
import gzip
import http.client
import logging
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge

from exporter.serve import App, Request, Response, Server, make_app, start_server

REPO = Path(__file__).resolve().parent.parent

# Values from tests/fixtures/real-caffe/lenet_healthy/caffe.log (its last display line and iteration).
RUN = "lenet_healthy"
LOSS = "0.0234004"
LOSS_LINE = f'caffe_loss{{run="{RUN}"}} {LOSS}'


def _registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    Gauge("caffe_loss", "Smoothed training loss.", ["run"], registry=registry).labels(run=RUN).set(float(LOSS))
    Counter("caffe_iterations", "Iterations.", ["run"], registry=registry).labels(run=RUN).inc(10000)
    return registry


def _app(**kw: Any) -> App:
    return make_app(_registry(), lambda: [(RUN, "tests/fixtures/real-caffe/lenet_healthy/caffe.log")], **kw)


@contextlib.contextmanager
def serving(app: App | None = None, **kw: Any) -> Iterator[Server]:
    server = Server(app or _app(), "127.0.0.1", 0, **kw).start()
    try:
        yield server
    finally:
        server.shutdown()


def _request(server: Server, method: str, path: str, headers: dict[str, str] | None = None,
             ) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(*server.address, timeout=10)
    try:
        conn.request(method, path, headers=headers or {})
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def _raw(server: Server, data: bytes, timeout: float = 10) -> bytes:
    """Send `data`, read until the server closes."""
    with socket.create_connection(server.address, timeout=timeout) as s:
        s.sendall(data)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


def _closed_by_server(s: socket.socket) -> bool:
    """True when the peer closed (EOF or reset); blocks up to the socket's timeout."""
    try:
        while s.recv(65536):
            pass
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return True


def _until(check: Callable[[], bool], timeout: float = 15) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return check()


# ---------------------------------------------------------------------------------------------- what it serves


def test_metrics_in_the_text_format_by_default() -> None:
    with serving() as server:
        status, headers, body = _request(server, "GET", "/metrics")
    assert status == 200
    assert headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert LOSS_LINE in body.decode().splitlines()
    assert f'caffe_iterations_total{{run="{RUN}"}} 10000.0' in body.decode().splitlines()


def test_openmetrics_when_the_scraper_accepts_it() -> None:
    accept = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
    with serving() as server:
        status, headers, body = _request(server, "GET", "/metrics", {"Accept": accept})
    assert status == 200
    assert headers["content-type"].startswith("application/openmetrics-text; version=1.0.0")
    assert body.decode().endswith("# EOF\n")
    assert LOSS_LINE in body.decode().splitlines()


def test_gzip_when_the_scraper_accepts_it() -> None:
    with serving() as server:
        _, _, plain = _request(server, "GET", "/metrics")
        status, headers, body = _request(server, "GET", "/metrics", {"Accept-Encoding": "gzip"})
    assert status == 200 and headers["content-encoding"] == "gzip"
    assert gzip.decompress(body) == plain


def test_name_filter_keeps_only_the_named_families() -> None:
    with serving() as server:
        _, _, body = _request(server, "GET", "/metrics?name[]=caffe_loss")
    families = {ln.split()[2] for ln in body.decode().splitlines() if ln.startswith("# TYPE")}
    assert families == {"caffe_loss"}
    assert LOSS_LINE in body.decode().splitlines()


def test_landing_page_lists_runs_html_escaped() -> None:
    app = make_app(_registry(), lambda: [("<script>x</script>", "/logs/a&b.log")])
    with serving(app) as server:
        status, headers, body = _request(server, "GET", "/")
    assert status == 200 and headers["content-type"] == "text/html; charset=utf-8"
    text = body.decode()
    assert "<td>&lt;script&gt;x&lt;/script&gt;</td><td>/logs/a&amp;b.log</td>" in text
    assert "<script>" not in text


@pytest.mark.parametrize("path", ["/nope", "/metrics/", "/../../etc/passwd", "/-/reload"])
def test_unknown_paths_are_404(path: str) -> None:
    with serving() as server:
        status, _, _ = _request(server, "GET", path)
    assert status == 404


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "TRACE", "BREW", "OPTIONS"])
@pytest.mark.parametrize("path", ["/", "/metrics", "/-/healthy"])
def test_other_methods_are_405_with_allow(method: str, path: str) -> None:
    with serving() as server:
        status, headers, _ = _request(server, method, path)
    assert status == 405
    assert headers["allow"] == "GET, HEAD"


@pytest.mark.parametrize("path", ["/", "/metrics", "/-/healthy", "/-/ready"])
def test_head_sends_the_headers_of_get_and_no_body(path: str) -> None:
    with serving() as server:
        _, _, get_body = _request(server, "GET", path)
        raw = _raw(server, f"HEAD {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    head, sep, rest = raw.partition(b"\r\n\r\n")
    assert sep and rest == b"", f"HEAD sent {len(rest)} body bytes"
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert f"Content-Length: {len(get_body)}".encode() in head.split(b"\r\n")


def test_health_and_readiness_follow_their_callables() -> None:
    state = {"healthy": True, "ready": False}
    app = _app(healthy=lambda: state["healthy"], ready=lambda: state["ready"])
    with serving(app) as server:
        assert _request(server, "GET", "/-/healthy")[:1] == (200,)
        assert _request(server, "GET", "/-/healthy")[2] == b"caffe-exporter is healthy.\n"
        assert _request(server, "GET", "/-/ready")[0] == 503
        assert _request(server, "HEAD", "/-/ready")[0] == 503
        state["ready"] = True
        state["healthy"] = False
        assert _request(server, "GET", "/-/ready")[0] == 200
        assert _request(server, "GET", "/-/healthy")[0] == 503
        assert _request(server, "HEAD", "/-/healthy")[0] == 503


def test_health_and_readiness_default_to_true() -> None:
    with serving() as server:
        assert _request(server, "GET", "/-/healthy")[0] == 200
        assert _request(server, "GET", "/-/ready")[0] == 200


def test_a_raising_health_check_answers_503() -> None:
    def broken() -> bool:
        raise RuntimeError("boom")

    with serving(_app(healthy=broken)) as server:
        assert _request(server, "GET", "/-/healthy")[0] == 503


def test_keep_alive_serves_several_requests_on_one_connection() -> None:
    with serving() as server:
        conn = http.client.HTTPConnection(*server.address, timeout=10)
        try:
            socks = []
            for _ in range(3):
                conn.request("GET", "/metrics")
                r = conn.getresponse()
                assert r.status == 200 and LOSS_LINE in r.read().decode()
                socks.append(conn.sock)
            assert socks[0] is socks[1] is socks[2], "the client had to reconnect: keep-alive broken"
            assert server.open_connections == 1
        finally:
            conn.close()


@pytest.mark.parametrize(("data", "status"), [
    (b"garbage\r\n\r\n", 400),
    (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505),
    (b"GET /metrics HTTP/1.1\r\nno colon here\r\n\r\n", 400),
    (b"GET /metrics HTTP/1.1\r\nContent-Length: nope\r\n\r\n", 400),
    (b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 70000 + b"\r\n\r\n", 431),
    (b"GET /metrics HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(200)) + b"\r\n", 431),
    (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n", 414),
    (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 501),
    (b"POST / HTTP/1.1\r\nContent-Length: 1000000\r\n\r\n", 413),
])
def test_malformed_requests_get_an_error_status_and_a_close(data: bytes, status: int) -> None:
    with serving() as server:
        raw = _raw(server, data)
    assert raw.startswith(f"HTTP/1.1 {status} ".encode()), raw[:80]
    assert b"\r\nConnection: close\r\n" in raw


def test_a_small_request_body_is_read_and_the_connection_stays_usable() -> None:
    with serving() as server:
        conn = http.client.HTTPConnection(*server.address, timeout=10)
        try:
            conn.request("POST", "/", body=b"x" * 1000)
            r = conn.getresponse()
            assert r.status == 405
            r.read()
            conn.request("GET", "/metrics")
            assert conn.getresponse().status == 200
        finally:
            conn.close()


def test_an_app_that_raises_answers_500_and_logs_once_per_episode(caplog: pytest.LogCaptureFixture) -> None:
    calls = {"n": 0}

    def app(request: Request) -> Response:
        calls["n"] += 1
        if calls["n"] <= 3:
            raise RuntimeError("collector broke")
        return Response(200, b"ok\n")

    with caplog.at_level(logging.ERROR, logger="caffe_exporter.http"), serving(app) as server:
        assert [_request(server, "GET", "/metrics")[0] for _ in range(4)] == [500, 500, 500, 200]
        assert server.app_errors == 3
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "collector broke" in (errors[0].exc_text or "")


def test_binding_a_port_in_use_raises_oserror() -> None:
    with serving() as server, pytest.raises(OSError):
        start_server(_app(), "127.0.0.1", server.address[1])


def test_ipv6_loopback() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 in this Python")
    try:
        server = start_server(_app(), "::1", 0)
    except OSError as e:
        pytest.skip(f"cannot bind ::1: {e}")
    try:
        conn = http.client.HTTPConnection("::1", server.address[1], timeout=10)
        conn.request("GET", "/metrics")
        r = conn.getresponse()
        assert r.status == 200 and LOSS_LINE in r.read().decode()
        conn.close()
    finally:
        server.shutdown()


# ---------------------------------------------------------------------------------------------- what it survives


def _blocking_app(release: threading.Event, entered: threading.Semaphore) -> App:
    inner = _app()

    def app(request: Request) -> Response:
        if request.path == "/metrics":
            entered.release()
            release.wait(30)
        return inner(request)

    return app


def test_beyond_running_plus_queued_requests_answer_503_and_probes_still_answer() -> None:
    release, entered = threading.Event(), threading.Semaphore(0)
    results: list[int] = []
    with serving(_blocking_app(release, entered), max_requests=1, max_queued=1) as server:
        def scrape() -> None:
            results.append(_request(server, "GET", "/metrics")[0])

        workers = [threading.Thread(target=scrape) for _ in range(2)]  # one running, one queued
        for w in workers:
            w.start()
        assert entered.acquire(timeout=10), "the first scrape never reached the app"
        assert _until(lambda: server.pending_requests == 2), "the second scrape was not queued"
        status, headers, _ = _request(server, "GET", "/metrics")
        assert status == 503 and headers["retry-after"] == "1"
        assert server.requests_rejected == 1
        assert _request(server, "GET", "/-/healthy")[0] == 200, "a probe waited behind the scrapes"
        release.set()
        for w in workers:
            w.join(timeout=30)
    assert sorted(results) == [200, 200]


def test_idle_connections_are_closed_after_the_timeouts() -> None:
    with serving(header_timeout=0.5, idle_timeout=0.5) as server:
        silent = [socket.create_connection(server.address, timeout=10) for _ in range(20)]
        kept = http.client.HTTPConnection(*server.address, timeout=10)
        kept.request("GET", "/metrics")
        assert kept.getresponse().read()
        try:
            assert all(_closed_by_server(s) for s in silent), "a silent connection outlived header_timeout"
            assert kept.sock is not None and _closed_by_server(kept.sock), "keep-alive outlived idle_timeout"
            assert _until(lambda: server.open_connections == 0)
        finally:
            for s in silent:
                s.close()
            kept.close()


def test_a_slowloris_client_is_cut_off_at_the_header_deadline() -> None:
    """A byte every 0.1 s keeps any per-read timeout happy; the deadline is for the whole request head."""
    request = b"GET /metrics HTTP/1.1\r\n" + b"X-Slow: " + b"a" * 200 + b"\r\n\r\n"
    with serving(header_timeout=1.0) as server, socket.create_connection(server.address, timeout=10) as s:
        sent = 0
        with contextlib.suppress(OSError):
            for i in range(len(request)):
                s.sendall(request[i:i + 1])
                sent += 1
                time.sleep(0.1)
        reply = b""
        with contextlib.suppress(OSError):
            while chunk := s.recv(65536):
                reply += chunk
    assert sent < len(request), "the server let a 23 s trickle finish its headers"
    assert reply.startswith(b"HTTP/1.1 408 ")


def _slowloris(address: tuple[str, int], stop: threading.Event) -> None:
    with socket.create_connection(address, timeout=10) as s, contextlib.suppress(OSError):
        s.sendall(b"GET /metrics HTTP/1.1\r\n")
        while not stop.wait(1.0):
            s.sendall(b"X")


def test_300_idle_connections_and_a_slowloris_do_not_delay_a_scrape() -> None:
    before = threading.active_count()
    max_requests = 2
    stop = threading.Event()
    with serving(max_requests=max_requests, max_connections=400) as server:
        idle = [socket.create_connection(server.address, timeout=10) for _ in range(300)]
        loris = threading.Thread(target=_slowloris, args=(server.address, stop))
        loris.start()
        try:
            assert _until(lambda: server.open_connections == 301), server.open_connections
            t0 = time.monotonic()
            with urllib.request.urlopen(f"http://127.0.0.1:{server.address[1]}/metrics", timeout=5) as r:
                assert r.status == 200 and LOSS_LINE in r.read().decode()
            elapsed = time.monotonic() - t0
            assert elapsed < 5, f"scrape took {elapsed:.1f} s with 300 idle connections"
            # 20 scrapes in parallel: the server adds its loop thread and at most max_requests renderers.
            codes: list[int] = []
            scrapers = [threading.Thread(target=lambda: codes.append(_request(server, "GET", "/metrics")[0]))
                        for _ in range(20)]
            for t in scrapers:
                t.start()
            for t in scrapers:
                t.join(timeout=30)
            assert codes.count(200) + codes.count(503) == 20 and codes.count(200) >= 1
            server_threads = [t for t in threading.enumerate() if t.name == "http" or
                              t.name.startswith("http-render")]
            assert len(server_threads) <= 1 + max_requests, [t.name for t in server_threads]
            assert threading.active_count() - before <= 1 + max_requests + 1  # + the slowloris thread
        finally:
            stop.set()
            for s in idle:
                s.close()
            loris.join(timeout=15)


@contextlib.contextmanager
def _full(server: Server, n: int) -> Iterator[list[socket.socket]]:
    """`n` idle connections held open (the server's max_connections) and one more refused."""
    held = [socket.create_connection(server.address, timeout=10) for _ in range(n)]
    try:
        assert _until(lambda: server.open_connections == n)
        with socket.create_connection(server.address, timeout=10) as extra:
            assert _closed_by_server(extra)
        yield held
    finally:
        for s in held:
            s.close()


def test_connections_beyond_max_connections_are_closed_at_once() -> None:
    with serving(max_connections=5) as server, _full(server, 5) as held:
        assert server.connections_rejected == 1
        held.pop().close()
        assert _until(lambda: server.open_connections == 4)
        assert _request(server, "GET", "/metrics")[0] == 200


def test_shutdown_finishes_the_request_in_flight_then_stops() -> None:
    before = threading.active_count()
    release, entered = threading.Event(), threading.Semaphore(0)
    server = Server(_blocking_app(release, entered), "127.0.0.1", 0).start()
    address = server.address
    result: list[int] = []
    client = threading.Thread(target=lambda: result.append(_request(server, "GET", "/metrics")[0]))
    client.start()
    assert entered.acquire(timeout=10)
    stopper = threading.Thread(target=server.shutdown)
    stopper.start()
    time.sleep(0.2)  # shutdown has begun; the request is still held in the app
    release.set()
    stopper.join(timeout=30)
    client.join(timeout=30)
    assert not stopper.is_alive() and result == [200]
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(address, timeout=5).close()
    assert threading.active_count() == before
    server.shutdown()  # idempotent


# ---------------------------------------------------------------------------------------------- descriptors

_EMFILE_SCRIPT = textwrap.dedent("""
    import logging, os, resource, sys, time
    sys.path.insert(0, sys.argv[1])
    from prometheus_client import CollectorRegistry, Gauge
    from exporter.serve import make_app, start_server
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    registry = CollectorRegistry()
    Gauge("caffe_loss", "loss", ["run"], registry=registry).labels(run="lenet_healthy").set(0.0234004)
    server = start_server(make_app(registry, lambda: []), "127.0.0.1", 0)
    print(server.address[1], flush=True)
    sys.stdin.readline()                                  # the test checked a scrape works
    while server.open_connections:                        # its descriptor freed later would let one accept in
        time.sleep(0.01)
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    held = []
    while True:
        try:
            held.append(os.open(os.devnull, os.O_RDONLY))
        except OSError:
            break
    print("full", flush=True)
    sys.stdin.readline()                                  # the test connected and sent a request
    cpu0 = time.process_time()
    time.sleep(2.0)
    cpu = time.process_time() - cpu0
    for fd in held:
        os.close(fd)
    print(f"{cpu:.3f} {server.accept_errors}", flush=True)
    sys.stdin.readline()
    server.shutdown()
""")


def test_out_of_descriptors_backs_off_logs_once_and_recovers(tmp_path: Path) -> None:
    script = tmp_path / "emfile_server.py"
    script.write_text(_EMFILE_SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script), str(REPO)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    try:
        port = int(proc.stdout.readline())
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            assert r.status == 200
        proc.stdin.write("go\n")
        proc.stdin.flush()
        assert proc.stdout.readline() == "full\n"
        with socket.create_connection(("127.0.0.1", port), timeout=15) as s:  # completes in the backlog
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            proc.stdin.write("measure\n")
            proc.stdin.flush()
            cpu_text, errors_text = proc.stdout.readline().split()
            reply = b""
            while chunk := s.recv(65536):  # descriptors are free again: answered within the backoff
                reply += chunk
        proc.stdin.write("stop\n")
        proc.stdin.flush()
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    cpu, errors = float(cpu_text), int(errors_text)
    assert cpu < 0.5, f"{cpu:.2f} s of CPU in 2 s out of descriptors: the accept loop spins"
    # >= 1 proves the descriptors were exhausted (how many retries fit in the window depends on the load of the
    # machine); the retry itself is proven by the reply and the "accepting connections again" line below
    assert errors >= 1, "accept() never failed: the descriptors were not exhausted"
    assert reply.startswith(b"HTTP/1.1 200 OK") and b'caffe_loss{run="lenet_healthy"} 0.0234004' in reply
    error_lines = [ln for ln in stderr.splitlines() if ln.startswith("ERROR")]
    assert len(error_lines) == 1, stderr
    assert "out of file descriptors" in error_lines[0]
    assert any(ln.startswith("WARNING") and "accepting connections again" in ln for ln in stderr.splitlines())


def test_thread_count_is_fixed_whatever_the_clients_do() -> None:
    """Regression for D3: the old server started a thread per connection."""
    before = threading.active_count()
    with serving(max_requests=3) as server:
        conns = [socket.create_connection(server.address, timeout=10) for _ in range(100)]
        try:
            assert _until(lambda: server.open_connections == 100)
            assert threading.active_count() - before <= 1  # the event loop thread; renderers start lazily
        finally:
            for s in conns:
                s.close()


def test_the_servers_counters_are_exported_as_caffe_exporter_http_metrics() -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from exporter.collectors.http import FAMILIES, HttpCollector

    with serving(max_connections=2) as server, _full(server, 2):
        metrics = CollectorRegistry()
        metrics.register(HttpCollector(lambda: {k: getattr(server, k) for k in FAMILIES}))
        text = generate_latest(metrics).decode()
    assert "caffe_exporter_http_connections_rejected_total 1.0" in text
    assert "caffe_exporter_http_open_connections 2.0" in text
    assert "caffe_exporter_http_accept_errors_total 0.0" in text
