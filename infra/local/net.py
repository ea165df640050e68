"""Loopback probes the stack's health checks use: one HTTP request without any proxy, and a free-port test."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from typing import Any

_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http(url: str, *, method: str = "GET", body: Any = None, timeout: float = 3.0,
         headers: dict[str, str] | None = None) -> tuple[int, str]:  # fmt: skip
    """(status, text) of one request, never through a proxy; HTTP error statuses are returned, not raised."""
    data = None if body is None else json.dumps(body).encode()
    headers = {**({"Content-Type": "application/json"} if data else {}), **(headers or {})}
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with _NO_PROXY.open(req, timeout=timeout) as r:
            return r.status, r.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


def port_free(port: int) -> bool:
    """Could a server listen on 127.0.0.1:`port`? (SO_REUSEADDR, as servers bind: a TIME_WAIT left by a closed
    connection does not count as taken.)"""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
