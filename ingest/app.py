"""The receiver: verify a Stripe webhook, append it to the event log, answer.

`create_app(settings)` builds a Starlette app whose lifespan owns the Kafka producer; there
is no module-level app. Per delivery, in this order: the endpoint must be configured
(404), the body must fit `max_body_bytes` (413, checked while it streams in), the
signature must match over the raw bytes (400), the body must be a Stripe event (400),
and the broker must acknowledge the record within `publish_timeout` (else 503 with
`Retry-After`). Only then 200. Every answer writes one log line and counts in metrics.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime

import orjson
import structlog
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from deploy.logs import configure_logging
from deploy.settings import Settings, load_settings
from ingest.metrics import ReceiverMetrics, create_metrics
from ingest.publisher import Publisher, PublishUnavailable
from ingest.record import build_record
from ingest.signature import SignatureError, verify
from schemas.envelope import EnvelopeError, parse_event

RETRY_AFTER_SECONDS = 5
ACCEPTED = b'{"received":true}'
JSON = "application/json"


class BodyTooLarge(Exception):
    """The request body is over the configured limit."""


class BodyTimeout(Exception):
    """The client did not finish sending its body in time."""


def _error(
    status: int, reason: str, message: str, headers: dict[str, str] | None = None
) -> Response:
    body = orjson.dumps({"error": reason, "message": message})
    return Response(body, status_code=status, media_type=JSON, headers=headers)


async def read_body(request: Request, limit: int, timeout: float) -> bytes:
    """The whole body; `BodyTooLarge` as soon as more than `limit` bytes have arrived,
    `BodyTimeout` when it has not all arrived within `timeout` seconds."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise BodyTooLarge  # stop reading: the rest is never buffered
                chunks.append(chunk)
    except TimeoutError:
        raise BodyTimeout from None
    return b"".join(chunks)


class Receiver:
    """The request handlers and what they share: secrets, the producer, metrics, the log."""

    def __init__(self, settings: Settings, metrics: ReceiverMetrics) -> None:
        self.settings = settings
        self.secrets = settings.secrets_by_endpoint()
        self.metrics = metrics
        self.publisher = Publisher(
            bootstrap=settings.kafka_bootstrap,
            topic=settings.topic,
            timeout=settings.publish_timeout,
            on_error=metrics.producer_error,
        )
        self.log = structlog.get_logger("ingest")

    async def webhook(self, request: Request) -> Response:
        """POST /webhooks/{endpoint}: verify, append, answer."""
        started = time.perf_counter()
        received = time.time()
        endpoint: str = request.path_params["endpoint"]
        event_id = event_type = ""
        secrets = self.secrets.get(endpoint)
        if secrets is None:
            # Unknown names share one label so that probing cannot grow the metrics.
            endpoint_label, outcome = "unknown", "unknown_endpoint"
            response = _error(404, outcome, f"no webhook endpoint named {endpoint!r}")
        else:
            endpoint_label = endpoint
            try:
                body = await read_body(
                    request, self.settings.max_body_bytes, self.settings.body_timeout
                )
                verify(
                    body,
                    request.headers.get("stripe-signature"),
                    secrets,
                    now=received,
                    tolerance=self.settings.signature_tolerance,
                )
                event = parse_event(body)
                event_id, event_type = event["id"], event["type"]
                record = build_record(
                    body,
                    event,
                    endpoint=endpoint,
                    received_at=datetime.fromtimestamp(received, UTC),
                )
                await self.publisher.publish(record)
                outcome = "accepted"
                response = Response(ACCEPTED, media_type=JSON)
            except BodyTooLarge:
                outcome = "too_large"
                limit = self.settings.max_body_bytes
                response = _error(413, outcome, f"body is over {limit} bytes")
            except BodyTimeout:
                outcome = "body_timeout"
                seconds = self.settings.body_timeout
                response = _error(408, outcome, f"body not received within {seconds:g} s")
            except ClientDisconnect:
                # The client went away mid-body: nothing was written; Stripe will retry.
                outcome = "client_disconnected"
                response = _error(400, outcome, "the client closed the connection mid-body")
            except (SignatureError, EnvelopeError) as exc:
                outcome = exc.reason
                response = _error(400, outcome, str(exc))
            except PublishUnavailable as exc:
                outcome = "unavailable"
                response = _error(
                    503, exc.reason, str(exc), {"Retry-After": str(RETRY_AFTER_SECONDS)}
                )
        elapsed = time.perf_counter() - started
        self.metrics.delivery(endpoint_label, event_type, outcome, elapsed)
        self.log.info(
            "webhook",
            endpoint=endpoint_label,
            event_id=event_id,
            event_type=event_type,
            outcome=outcome,
            status=response.status_code,
            ms=round(elapsed * 1000, 2),
        )
        return response

    async def healthz(self, request: Request) -> Response:
        """GET /healthz: the process is alive."""
        return Response(b'{"alive":true}', media_type=JSON)

    async def readyz(self, request: Request) -> Response:
        """GET /readyz: 200 when the broker answers now, else 503."""
        if await self.publisher.ready():
            return Response(b'{"ready":true}', media_type=JSON)
        return _error(
            503,
            "kafka_unreachable",
            f"Kafka at {self.settings.kafka_bootstrap} does not answer",
            {"Retry-After": str(RETRY_AFTER_SECONDS)},
        )

    async def metrics_text(self, request: Request) -> Response:
        """GET /metrics: Prometheus text format."""
        return Response(generate_latest(self.metrics.registry), media_type=CONTENT_TYPE_LATEST)


async def _http_error(request: Request, exc: Exception) -> Response:
    """Unknown paths and wrong methods answer in the same short JSON as everything else."""
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    reason = {404: "not_found", 405: "method_not_allowed"}.get(status, "error")
    headers = dict(exc.headers or {}) if isinstance(exc, HTTPException) else None
    return _error(status, reason, f"{request.method} {request.url.path}: {reason}", headers)


def create_app(settings: Settings) -> Starlette:
    """The receiver app for `settings`; its lifespan starts and stops the producer."""
    receiver = Receiver(settings, create_metrics())

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await receiver.publisher.start()
        try:
            yield
        finally:
            await receiver.publisher.stop()

    app = Starlette(
        routes=[
            Route("/webhooks/{endpoint}", receiver.webhook, methods=["POST"]),
            Route("/healthz", receiver.healthz, methods=["GET"]),
            Route("/readyz", receiver.readyz, methods=["GET"]),
            Route("/metrics", receiver.metrics_text, methods=["GET"]),
        ],
        lifespan=lifespan,
        exception_handlers={404: _http_error, 405: _http_error},
    )
    app.state.receiver = receiver
    return app


def app_from_env() -> Starlette:
    """Factory for `uvicorn --factory` (one per worker): settings from LATTICE_* variables."""
    configure_logging()
    return create_app(load_settings())
