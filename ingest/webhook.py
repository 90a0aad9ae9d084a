"""POST /webhooks/{endpoint} as a plain ASGI callable: verify, append, answer.

Starlette routes to it (so 404/405 and the lifespan stay Starlette's), but the handler
itself reads the ASGI messages directly: a `Request`, its `Headers` and a `Response` per
delivery cost about a fifth of the receiver's CPU per request. Per delivery, in this
order: the endpoint must be configured (404), the body must fit `max_body_bytes` (413,
checked while it streams in) and arrive within `body_timeout` (408), the signature must
match over the raw bytes (400), the body must be a Stripe event (400), and the broker
must acknowledge the record within `publish_timeout` (else 503 with `Retry-After`). Only
then 200. Anything else that fails is a short 500 (Stripe sends the delivery again) and an
error line naming where, never a traceback with the body in it. Every answer writes one log
line and counts in metrics.
"""

from __future__ import annotations

import asyncio
import time
import traceback
from collections.abc import Iterable

import orjson
import structlog
from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from deploy.logs import HotLog
from deploy.settings import Settings, canonical_endpoint
from ingest.deadlines import Deadlines
from ingest.metrics import ReceiverMetrics
from ingest.publisher import Publisher, PublishUnavailable
from ingest.record import build_received
from ingest.signature import SignatureError, verify
from schemas.envelope import EnvelopeError, parse_event

RETRY_AFTER_SECONDS = 5
log = structlog.get_logger("ingest.webhook")
ACCEPTED = b'{"received":true}'
JSON = "application/json"
# Ends the connection after the answer. A 408's client is too slow to keep. A refusal
# before the body was asked for, to a client that sent `Expect: 100-continue`: it has
# (rightly) not sent the body, and kept open, the connection would take its next request
# for that body. Otherwise uvicorn reads and drops the rest of a refused body, so the
# client, still sending, is not reset before it can read the answer.
CLOSE = {"Connection": "close"}
# The 200 answer, byte for byte what `Response(ACCEPTED, media_type=JSON)` sends; a tuple,
# so nothing downstream can change it for the next request.
_ACCEPTED_HEADERS = (
    (b"content-length", str(len(ACCEPTED)).encode()),
    (b"content-type", JSON.encode()),
)


class BodyTooLarge(Exception):
    """The request body is over the configured limit; `unread` when its declared length
    said so before any of it was asked for."""

    def __init__(self, *, unread: bool) -> None:
        super().__init__()
        self.unread = unread


class BodyTimeout(Exception):
    """The client did not finish sending its body in time."""


def error(
    status: int, reason: str, message: str, headers: dict[str, str] | None = None
) -> Response:
    """The short JSON error every refusal answers with."""
    body = orjson.dumps({"error": reason, "message": message})
    return Response(body, status_code=status, media_type=JSON, headers=headers)


def request_headers(
    raw: Iterable[tuple[bytes, bytes]],
) -> tuple[str | None, str | None, bool]:
    """`Stripe-Signature` and `Content-Length` (each its first occurrence), decoded as
    Starlette's `Headers` decodes them (latin-1, names lower-case per ASGI), and whether
    the client waits for `100 Continue` before it sends its body."""
    signature = length = None
    expects = False
    for name, value in raw:
        if name == b"stripe-signature":
            if signature is None:
                signature = value.decode("latin-1")
        elif name == b"content-length" and length is None:
            length = value.decode("latin-1")
        elif name == b"expect":
            expects = value.lower() == b"100-continue"
    return signature, length, expects


def declares_over(declared: str | None, limit: int) -> bool:
    """Whether a Content-Length value says more than `limit` bytes. HTTP allows any
    number of leading zeros, and Python's int() refuses more than 4,300 digits: the
    zeros are dropped first, and a length with more digits than `limit` is over it
    uncounted. Anything but ASCII digits is no length (the server refuses it first)."""
    if declared is None or not (declared.isascii() and declared.isdigit()):
        return False
    digits = declared.lstrip("0")
    return len(digits) > len(str(limit)) or int(digits or "0") > limit


def failed_where(exc: BaseException) -> str:
    """An exception's type and the innermost place it was raised, without its message."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" at {frames[-1].filename.rsplit('/', 1)[-1]}:{frames[-1].lineno}" if frames else ""
    return f"{type(exc).__name__}{where}"


async def read_body(
    receive: Receive, declared: str | None, limit: int, deadlines: Deadlines
) -> bytes:
    """The whole body; `BodyTooLarge` as soon as more than `limit` bytes have arrived,
    `BodyTimeout` when it has not all arrived within `deadlines.seconds`,
    `ClientDisconnect` when the client hung up first."""
    if declares_over(declared, limit):
        raise BodyTooLarge(unread=True)
    chunks: list[bytes] = []
    size = 0
    task = asyncio.current_task()
    assert task is not None  # an ASGI app always runs in a task
    cancelling = task.cancelling()
    wait = deadlines.start(task.cancel)
    try:
        while True:
            message = await receive()
            if message["type"] != "http.request":
                raise ClientDisconnect
            chunk: bytes = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge(unread=False)  # stop reading: the rest is never buffered
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
    except asyncio.CancelledError:
        # Ours only if the deadline cancelled it and nobody else did (as asyncio.timeout).
        if wait.expired and task.uncancel() <= cancelling:
            raise BodyTimeout from None
        raise
    finally:
        wait.finish()
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class Webhook:
    """The ASGI endpoint and what it shares: secrets, the producer, metrics, the log."""

    def __init__(self, settings: Settings, metrics: ReceiverMetrics, publisher: Publisher) -> None:
        self.settings = settings
        self.secrets = settings.secrets_by_endpoint()
        self.metrics = metrics
        self.publisher = publisher
        self.log = HotLog("ingest")
        self.body_deadlines = Deadlines(settings.body_timeout)

    def refused_path(self, method: str, path: str, status: int, reason: str) -> None:
        """Count and log a request under /webhooks that no endpoint route matches (a
        trailing slash, a nested path, another method), which Starlette answers: such a
        URL in Stripe's dashboard must show up like a misspelt endpoint."""
        self._answered("unknown", "", "", reason, status, 0.0, requested=f"{method} {path[:80]}")

    def refused_head(self, status: int, reason: str, seconds: float) -> None:
        """Count and log a request the connection refused before its head was whole (431
        for a head too large, 408 for one too slow, 400 for one that is not HTTP): no
        endpoint is known yet."""
        self._answered("unknown", "", "", reason, status, seconds)

    def _answered(
        self,
        endpoint: str,
        event_id: str,
        event_type: str,
        outcome: str,
        status: int,
        seconds: float,
        **detail: str,
    ) -> None:
        """Write one answer's log line and count it."""
        self.log.info(
            "webhook",
            endpoint=endpoint,
            event_id=event_id,
            event_type=event_type,
            outcome=outcome,
            status=status,
            ms=round(seconds * 1000, 2),
            **detail,
        )
        self.metrics.delivery(endpoint, event_type, outcome, seconds)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        received = time.time()
        endpoint: str = scope["path_params"]["endpoint"]
        event_id = event_type = ""
        detail: dict[str, str] = {}  # what the log line adds on some refusals
        response: Response | None = None
        secrets = self.secrets.get(endpoint)
        if secrets is None and not endpoint.isascii():  # the name spelt decomposed, say
            endpoint = canonical_endpoint(endpoint)
            secrets = self.secrets.get(endpoint)
        if secrets is None:
            # Unknown names share one label so that probing cannot grow the metrics.
            endpoint_label, outcome = "unknown", "unknown_endpoint"
            detail["requested"] = named = endpoint[:64]  # which URL is wrong, cut short
            expects = request_headers(scope["headers"])[2]
            response = error(
                404, outcome, f"no webhook endpoint named {named!r}", CLOSE if expects else None
            )
        else:
            endpoint_label = endpoint
            settings = self.settings
            signature, declared, expects = request_headers(scope["headers"])
            try:
                body = await read_body(
                    receive, declared, settings.max_body_bytes, self.body_deadlines
                )
                verify(
                    body,
                    signature,
                    secrets,
                    now=received,
                    tolerance=settings.signature_tolerance,
                )
                event = parse_event(body)
                event_id, event_type = event["id"], event["type"]
                record = build_received(
                    body, event, endpoint=endpoint, received_ms=int(received * 1000)
                )
                await self.publisher.publish(record)
                outcome = "accepted"
            except BodyTooLarge as exc:
                outcome = "too_large"
                response = error(
                    413,
                    outcome,
                    f"body is over {settings.max_body_bytes} bytes",
                    CLOSE if exc.unread and expects else None,
                )
            except BodyTimeout:
                outcome = "body_timeout"
                seconds = settings.body_timeout
                response = error(408, outcome, f"body not received within {seconds:g} s", CLOSE)
            except ClientDisconnect:
                # The client went away mid-body: nothing was written; Stripe will retry.
                outcome = "client_disconnected"
                response = error(400, outcome, "the client closed the connection mid-body")
            except (SignatureError, EnvelopeError) as exc:
                outcome = exc.reason
                response = error(400, outcome, str(exc))
            except PublishUnavailable as exc:
                outcome = "unavailable"
                detail["reason"] = exc.reason
                response = error(
                    503, exc.reason, str(exc), {"Retry-After": str(RETRY_AFTER_SECONDS)}
                )
            except Exception as exc:
                # A fault of ours: Stripe retries a 500, as it would a 503. Its message may
                # quote the body, so the line names only the exception's type and place.
                outcome = "internal_error"
                detail["error"] = failed_where(exc)
                log.error("delivery failed", endpoint=endpoint_label, error=detail["error"])
                response = error(
                    500, outcome, "the receiver failed on this delivery; send it again"
                )
        try:
            self._answered(
                endpoint_label,
                event_id,
                event_type,
                outcome,
                200 if response is None else response.status_code,
                time.perf_counter() - started,
                **detail,
            )
        except Exception:
            # The answer stands: a 500 for a record already on the log would have Stripe
            # send it again, and again, each time appended anew.
            log.exception("counting a delivery failed", outcome=outcome)
        if response is None:
            await send({"type": "http.response.start", "status": 200, "headers": _ACCEPTED_HEADERS})
            await send({"type": "http.response.body", "body": ACCEPTED})
        else:
            await response(scope, receive, send)
