"""`lattice serve` (the receiver under uvicorn) and `lattice send` (sign and post an event)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

from deploy.flags import add_setting_flags, port_number, setting_overrides
from deploy.logs import configure_logging
from deploy.settings import (
    ENV_PREFIX,
    ConfigError,
    canonical_endpoint,
    check_secret,
    load_settings,
)
from ingest.metrics import MULTIPROCESS_DIR
from ingest.signature import sign_header

DEFAULT_URL = "http://127.0.0.1:8000"
RECEIVER_SETTINGS = (
    "webhook_secrets",
    "kafka_bootstrap",
    "topic",
    "signature_tolerance",
    "max_body_bytes",
    "publish_timeout",
    "body_timeout",
)


def register(commands: Any) -> None:
    """Add the `serve` and `send` subcommands to the top-level parser."""
    serve: argparse.ArgumentParser = commands.add_parser(
        "serve",
        help="run the webhook receiver",
        description="Verify Stripe webhooks on POST /webhooks/{endpoint} and append them to "
        "the event log (the topic must exist: `lattice stack up` creates it, on a "
        "cluster of your own too; until then every delivery gets 503). Also serves GET /healthz "
        "(alive), /readyz (503 while Kafka cannot take records) and /metrics "
        "(Prometheus). Secrets: LATTICE_WEBHOOK_SECRETS=endpoint=whsec_...,...",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    serve.add_argument("--port", type=port_number, default=8000, help="port to listen on (8000)")
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker processes (1); each accepts on its own SO_REUSEPORT socket",
    )
    add_setting_flags(serve, RECEIVER_SETTINGS)
    serve.set_defaults(handler=run_serve)

    send: argparse.ArgumentParser = commands.add_parser(
        "send",
        help="sign a Stripe event file as Stripe would and POST it to the receiver",
        description="Sign FILE (or - for stdin) with the endpoint's secret and post it; "
        "prints the receiver's answer. Exit status 0 on 2xx, 1 otherwise.",
    )
    send.add_argument("file", metavar="FILE", help="a JSON Stripe event, or - for stdin")
    send.add_argument("--endpoint", required=True, help="endpoint name, e.g. platform")
    send.add_argument("--url", default=DEFAULT_URL, help=f"receiver base URL ({DEFAULT_URL})")
    send.add_argument(
        "--secret",
        help="signing secret (default: the endpoint's last one in LATTICE_WEBHOOK_SECRETS; "
        "a flag shows in the process list, the variable does not)",
    )
    send.set_defaults(handler=run_send)


def run_serve(args: argparse.Namespace) -> int:
    """Serve the receiver until interrupted."""
    # Here, not at the top: every other command starts without Starlette and uvicorn.
    from ingest.app import create_app
    from ingest.workers import check_address, serve

    overrides = setting_overrides(args)
    settings = load_settings(overrides)  # fail here, with one line, before any worker starts
    if not settings.secrets_by_endpoint():
        raise ConfigError(f"{ENV_PREFIX}WEBHOOK_SECRETS: no endpoint=secret pairs given")
    if args.workers < 1:
        raise ConfigError("--workers: must be at least 1")
    shared = os.environ.get(MULTIPROCESS_DIR)
    if shared and not (os.path.isdir(shared) and os.access(shared, os.W_OK | os.X_OK)):
        # Else the first delivery's count fails, after its record is on the log.
        raise ConfigError(f"{MULTIPROCESS_DIR}={shared}: not a directory this user can write")
    configure_logging()
    if args.workers == 1:
        check_address(args.host, args.port)  # a taken port: one line, before the app starts
        return serve(create_app(settings), host=args.host, port=args.port)
    # Worker processes build their own app from the environment: hand the flags down there.
    for field, value in overrides.items():
        if value is not None:
            os.environ[f"{ENV_PREFIX}{field.upper()}"] = str(value)
    return serve("ingest.app:app_from_env", host=args.host, port=args.port, workers=args.workers)


def run_send(args: argparse.Namespace) -> int:
    """Sign the event and post it; print the status and the answer."""
    body = sys.stdin.buffer.read() if args.file == "-" else _read(args.file)
    secret = args.secret
    if secret is None:
        secrets = load_settings().secrets_by_endpoint().get(canonical_endpoint(args.endpoint))
        if not secrets:
            raise ConfigError(
                f"{ENV_PREFIX}WEBHOOK_SECRETS has no secret for endpoint {args.endpoint!r}: "
                "add it there or pass --secret"
            )
        secret = secrets[-1]
    else:
        try:
            check_secret(secret, "--secret")
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    try:
        path = urlsplit(args.url).path
    except ValueError as exc:  # an unclosed IPv6 bracket, a port out of range...
        raise ConfigError(f"--url {args.url}: {exc}") from None
    if "/webhooks/" in f"{path}/":
        raise ConfigError(
            f"--url {args.url}: give the receiver's base URL (http://HOST:PORT); "
            "send adds /webhooks/ENDPOINT itself"
        )
    # One path segment, whatever the name holds (`#`, `/` or a space would change the URL).
    url = f"{args.url.rstrip('/')}/webhooks/{quote(args.endpoint, safe='')}"
    headers = {
        "Stripe-Signature": sign_header(body, secret, int(time.time())),
        "Content-Type": "application/json; charset=utf-8",
        "User-Agent": "lattice-send (like Stripe/1.0)",
    }
    try:
        answer = httpx.post(url, content=body, headers=headers, timeout=30.0)
    except (httpx.HTTPError, httpx.InvalidURL) as exc:  # InvalidURL: a URL httpx cannot use
        print(f"lattice: could not POST to {url}: {exc}", file=sys.stderr)
        return 1
    retry_after = answer.headers.get("Retry-After")
    print(
        f"{answer.status_code} {answer.reason_phrase}"
        + (f" (Retry-After: {retry_after} s)" if retry_after is not None else "")
    )
    print(answer.text)
    return 0 if answer.is_success else 1


def _read(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
