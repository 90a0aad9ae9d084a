"""`lattice project --metrics-port`: Prometheus metrics, and `/readyz` for a rollout.

`/readyz` answers 200 once every projector of the process has migrated its tables and
started its Kafka consumer, 503 before (waiting for PostgreSQL or Kafka, its topics, a
migration's lock) and once it has stopped. A Deployment's readiness probe on it keeps a
release that cannot start from replacing the pods that run; anything else on the port is
the metrics, as `prometheus_client` serves them.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app

READY = b'{"ready":true}'
NOT_READY = b'{"ready":false}'


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Quiet(WSGIRequestHandler):
    """No access log line per scrape or probe (the process logs JSON lines only)."""

    def log_message(self, format: str, *args: Any) -> None:
        return None


def serve(host: str, port: int, registry: CollectorRegistry, ready: threading.Event) -> None:
    """Serve metrics and `/readyz` on `host:port` from a daemon thread; OSError if the
    address cannot be had."""
    metrics = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == "/readyz":
            method = environ.get("REQUEST_METHOD")
            if method not in ("GET", "HEAD"):
                start_response("405 Method Not Allowed", [("Allow", "GET, HEAD")])
                return [b""]
            ok = ready.is_set()
            start_response(
                "200 OK" if ok else "503 Service Unavailable",
                [("Content-Type", "application/json")],
            )
            return [b"" if method == "HEAD" else READY if ok else NOT_READY]
        answer: Iterable[bytes] = metrics(environ, start_response)
        return answer

    # The family the address resolves to (`::`, `::1`, a name with IPv6 only), as
    # prometheus_client chooses it.
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
    server = _Server6 if family == socket.AF_INET6 else _Server
    httpd = make_server(host, port, app, server, handler_class=_Quiet)
    threading.Thread(target=httpd.serve_forever, name="metrics", daemon=True).start()
