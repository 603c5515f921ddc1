"""HTTP/1.1 as the exporter speaks it: request heads parsed and responses encoded, pure functions.

Kept apart from the event loop (exporter/httpserver.py) so every malformed-request rule is one small function
that tests can call without a socket.
"""

from __future__ import annotations

import http
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
MAX_REQUEST_LINE = 8192
MAX_HEADER_FIELDS = 100


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




class BadRequest(Exception):
    """A request the server answers with `status` and closes the connection after."""

    def __init__(self, status: int, why: str) -> None:
        super().__init__(why)
        self.status = status


def parse_head(head: bytes, max_body_bytes: int) -> tuple[Request, bool, int]:
    """(request, keep-alive, body length) of a request head ending in CRLF CRLF; BadRequest when malformed."""
    lines = head.lstrip(b"\r\n")[:-4].split(b"\r\n")
    method, target, version = _request_line(lines[0])
    if len(lines) > MAX_HEADER_FIELDS + 1:
        raise BadRequest(431, "too many header fields")
    headers = _header_fields(lines[1:])
    raw_path, query = _target(target)
    length = _body_length(headers, max_body_bytes)
    tokens = {t.strip().lower() for t in headers.get("connection", "").split(",")}
    keep_alive = version == "HTTP/1.1" and "close" not in tokens
    return Request(method, unquote(raw_path, errors="replace"), query, headers), keep_alive, length


def _request_line(line: bytes) -> tuple[str, str, str]:
    if len(line) > MAX_REQUEST_LINE:
        raise BadRequest(414, "request line too long")
    parts = line.decode("latin-1").split(" ")
    if len(parts) != 3 or not _TOKEN.fullmatch(parts[0]):
        raise BadRequest(400, "malformed request line")
    method, target, version = parts
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        raise BadRequest(505 if version.startswith("HTTP/") else 400, "HTTP/1.1 or HTTP/1.0 only")
    return method, target, version


def _header_fields(lines: list[bytes]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for raw in lines:
        name, sep, value = raw.decode("latin-1").partition(":")
        if not sep or not _TOKEN.fullmatch(name):
            raise BadRequest(400, "malformed header field")
        name = name.lower()
        headers[name] = f"{headers[name]}, {value.strip()}" if name in headers else value.strip()
    return headers


def _target(target: str) -> tuple[str, str]:
    """(path, query) of an origin-form or absolute-form request target."""
    if target.startswith("/"):
        raw_path, _, query = target.partition("?")
        return raw_path, query
    if target.lower().startswith(("http://", "https://")):
        parts = urlsplit(target)
        return parts.path or "/", parts.query
    return target, ""


def _body_length(headers: Mapping[str, str], max_body_bytes: int) -> int:
    if "transfer-encoding" in headers:
        raise BadRequest(501, "request bodies with Transfer-Encoding are not supported")
    length_text = headers.get("content-length", "0")
    if not length_text.isdigit():
        raise BadRequest(400, "malformed Content-Length")
    length = int(length_text)
    if length > max_body_bytes:
        raise BadRequest(413, "request body too large")
    return length


def error(status: int, why: str) -> Response:
    return Response(status, f"{why}\n".encode())


def encode(request: Request | None, response: Response, keep_alive: bool) -> bytes:
    """Status line, headers and (except for HEAD) the body."""
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
