"""One small async client for Stripe's API, used by hydration (thin events, long line
lists) and backfill.

Every request carries the secret key (as a bearer token, never logged), `Stripe-Version`,
and for Connect objects `Stripe-Context` (v2) or `Stripe-Account` (v1). Failures that may
pass (connection errors, timeouts, 409/429/5xx, `Stripe-Should-Retry: true`) are retried
a bounded number of times with jittered backoff; a circuit breaker stops calling after
repeated failures. One log line per request attempt: method, path, status, milliseconds,
Stripe's request id.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from types import TracebackType
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx
import orjson
import structlog
from pydantic import SecretStr

from deploy.settings import ConfigError, Settings
from projectors.stripe_api.breaker import CircuitBreaker
from projectors.stripe_api.errors import (
    StripeAPIError,
    StripeAuthError,
    StripeNotFound,
    StripeUnavailable,
    redact,
)
from projectors.stripe_api.retry import RetryPolicy

USER_AGENT = "lattice/0.1 (+stripe-api client)"
DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=5.0)
Params = Mapping[str, str | int | list[str]]

log = structlog.get_logger("lattice.stripe_api")


class StripeClient:
    """GET requests to Stripe's API with retries, a circuit breaker and timeouts."""

    def __init__(
        self,
        *,
        api_key: SecretStr,
        base_url: str,
        api_version: str,
        retry: RetryPolicy | None = None,
        breaker: CircuitBreaker | None = None,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._key = api_key
        self.api_version = api_version
        self.retry = retry or RetryPolicy()
        self.breaker = breaker or CircuitBreaker()
        self._sleep = sleep
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            timeout=timeout,
            headers={"User-Agent": USER_AGENT, "Stripe-Version": api_version},
            # Stripe never redirects API calls; a redirect would carry the key elsewhere.
            follow_redirects=False,
        )
        self.requests_sent = 0

    @property
    def livemode(self) -> bool | None:
        """The mode of the key's objects: False for a test key (`sk_test_`, `rk_test_`),
        True for a live one, None when its prefix says neither."""
        mode = self._key.get_secret_value().split("_")[1:2]
        return {"live": True, "test": False}.get(mode[0]) if mode else None

    @classmethod
    def from_settings(cls, settings: Settings, **options: Any) -> StripeClient:
        """A client for `settings.stripe_api_base`; ConfigError when no key is set."""
        key = settings.stripe_api_key
        if key is None or not key.get_secret_value():
            raise ConfigError(
                "LATTICE_STRIPE_API_KEY is not set: give a secret or restricted key "
                "(sk_... or rk_...) with read access to events"
            )
        return cls(
            api_key=key,
            base_url=settings.stripe_api_base,
            api_version=settings.stripe_api_version,
            **options,
        )

    def __repr__(self) -> str:
        return f"StripeClient(base_url={str(self._http.base_url)!r}, key=***)"

    async def __aenter__(self) -> StripeClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def get(
        self,
        path: str,
        params: Params | None = None,
        *,
        context: str | None = None,
        account: str | None = None,
    ) -> dict[str, Any]:
        """GET `path` and return the JSON object Stripe answered.

        Raises StripeNotFound (404), StripeAuthError (401/403), StripeAPIError (other
        4xx), StripeUnavailable (retries exhausted) or CircuitOpen (not even tried).
        """
        if not _on_the_api(path):
            # A path read from an answer (a `next_page_url`) or built from an event's id:
            # the key must not go to another host, nor up the API's own paths.
            raise StripeAPIError(f"refusing to request {path[:200]!r}: not a path of the API")
        headers = {"Authorization": f"Bearer {self._key.get_secret_value()}"}
        if context:
            headers["Stripe-Context"] = context
        if account:
            headers["Stripe-Account"] = account
        query = _query(params)
        attempt = 0
        while True:
            attempt += 1
            self.breaker.before_call()
            try:
                response, failure = await self._send(path, query, headers, attempt)
            except BaseException:
                self.breaker.abandon()  # cancelled: a half-open trial must not stay taken
                raise
            if response is not None and 200 <= response.status_code < 300:
                self.breaker.record_success()
                return self._json(response, path)
            if response is not None and 300 <= response.status_code < 400:
                # Stripe's API never redirects: the base URL points elsewhere. Not followed
                # (the key would go along), and never taken for an empty answer.
                self.breaker.record_success()
                raise StripeUnavailable(
                    f"GET {path}: HTTP {response.status_code} redirect to "
                    f"{response.headers.get('location', '?')[:120]!r}: LATTICE_STRIPE_API_BASE "
                    f"({self._http.base_url}) is not Stripe's API"
                )
            # A 4xx (429 too) means Stripe is up and answering; only 5xx and no answer
            # at all count against it.
            if response is None or response.status_code >= 500:
                self.breaker.record_failure()
            else:
                self.breaker.record_success()
            answer_headers: Mapping[str, str] = {} if response is None else response.headers
            retryable = response is None or self.retry.should_retry_status(
                response.status_code, answer_headers
            )
            if not retryable and response is not None:
                # Rate-limited is never the request's fault, whatever Stripe-Should-Retry says.
                if response.status_code >= 500 or response.status_code == 429:
                    raise StripeUnavailable(
                        f"GET {path}: {self._describe(response)}",
                        retry_after=self.retry.retry_after(answer_headers),
                    )
                raise self._error(response, path)
            if attempt > self.retry.max_retries:
                raise StripeUnavailable(
                    f"GET {path}: gave up after {attempt} attempts: "
                    f"{failure or self._describe(response)}",
                    retry_after=self.retry.retry_after(answer_headers),
                )
            await self._sleep(self.retry.delay(attempt, answer_headers))

    async def _send(
        self, path: str, query: list[tuple[str, str]], headers: dict[str, str], attempt: int
    ) -> tuple[httpx.Response | None, str | None]:
        started = time.perf_counter()
        self.requests_sent += 1
        try:
            # None, not (): an empty tuple would drop the query a `next_page_url` carries.
            response = await self._http.get(path, params=tuple(query) or None, headers=headers)
        except httpx.RequestError as exc:  # no usable answer (network, timeout, bad encoding)
            # The exception's text may include the URL, never the headers; name only its kind.
            failure = f"{type(exc).__name__} talking to Stripe"
            log.warning(
                "stripe_request",
                method="GET",
                path=path,
                attempt=attempt,
                error=type(exc).__name__,
                ms=_ms(started),
            )
            return None, failure
        log.info(
            "stripe_request",
            method="GET",
            path=path,
            attempt=attempt,
            status=response.status_code,
            ms=_ms(started),
            request_id=response.headers.get("request-id"),
        )
        return response, None

    def _json(self, response: httpx.Response, path: str) -> dict[str, Any]:
        try:
            body = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            raise StripeUnavailable(f"GET {path}: answer is not JSON") from None
        if not isinstance(body, dict):
            raise StripeUnavailable(f"GET {path}: answer is not a JSON object")
        return body

    def _describe(self, response: httpx.Response | None) -> str:
        if response is None:
            return "no answer"
        message = ""
        try:
            error = orjson.loads(response.content).get("error") or {}
            message = str(error.get("message") or error.get("code") or "")
        except (orjson.JSONDecodeError, AttributeError):
            pass
        request_id = response.headers.get("request-id")
        text = f"HTTP {response.status_code}"
        if message:
            text += f": {message}"
        if request_id:
            text += f" (request {request_id})"
        return redact(text, self._key.get_secret_value())

    def _error(self, response: httpx.Response, path: str) -> StripeAPIError:
        status = response.status_code
        kind: type[StripeAPIError] = StripeAPIError
        if status == 404:
            kind = StripeNotFound
        elif status in (401, 403):
            kind = StripeAuthError
        return kind(
            f"GET {path}: {self._describe(response)}",
            status=status,
            request_id=response.headers.get("request-id"),
        )


def _on_the_api(path: str) -> bool:
    """A path on the base URL's host: absolute (`/v1/...`), not `//host`, no `.` or `..`
    segment (which an id from an event could make), no scheme, no backslash."""
    parts = urlsplit(path)
    if parts.scheme or parts.netloc or not path.startswith("/") or "\\" in parts.path:
        return False
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in path):  # httpx would refuse it itself
        return False
    return not any(segment in (".", "..") for segment in unquote(parts.path).split("/"))


def _query(params: Params | None) -> list[tuple[str, str]]:
    """Stripe's form-style query: a list becomes `name[]=a&name[]=b`."""
    query: list[tuple[str, str]] = []
    for name, value in (params or {}).items():
        if isinstance(value, list):
            query.extend((f"{name}[]", item) for item in value)
        else:
            query.append((name, str(value)))
    return query


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 1)
