"""The request-head rules, called without a socket (tests/test_serve.py drives the same through real ones)."""

from __future__ import annotations

import pytest

from exporter.http1 import BadRequest, Request, Response, encode, parse_head


def test_a_scrape_request_head_is_parsed() -> None:
    head = b"GET /metrics?name%5B%5D=caffe_loss HTTP/1.1\r\nHost: node-a:10052\r\nAccept-Encoding: gzip\r\n\r\n"
    request, keep_alive, length = parse_head(head, 65536)
    assert request == Request("GET", "/metrics", "name%5B%5D=caffe_loss",
                              {"host": "node-a:10052", "accept-encoding": "gzip"})
    assert keep_alive and length == 0


@pytest.mark.parametrize("head, status", [
    (b"GET /metrics HTTP/2.0\r\n\r\n", 505),
    (b"GET /metrics\r\n\r\n", 400),
    (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n", 414),
    (b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 101 + b"\r\n", 431),
    (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 501),
    (b"POST / HTTP/1.1\r\nContent-Length: 70000\r\n\r\n", 413),
    (b"GET / HTTP/1.1\r\nno colon here\r\n\r\n", 400),
])
def test_malformed_heads_get_their_status(head: bytes, status: int) -> None:
    with pytest.raises(BadRequest) as e:
        parse_head(head, 65536)
    assert e.value.status == status


def test_head_gets_the_headers_of_get_without_the_body() -> None:
    response = Response(200, b"caffe_loss 0.25\n")
    get = encode(Request("GET", "/metrics", ""), response, True)
    head = encode(Request("HEAD", "/metrics", ""), response, False)
    assert get == b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 16\r\n\r\n" \
        b"caffe_loss 0.25\n"
    assert head == b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 16\r\n" \
        b"Connection: close\r\n\r\n"
