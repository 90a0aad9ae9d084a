"""A tiny local stand-in for Stripe's API: the full bodies of the simulation's thin events.

The meter projector hydrates thin events with `GET /v2/core/events/{id}` on
`LATTICE_STRIPE_API_BASE`; in the demo that base points here.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route


def build_app(events: Mapping[str, bytes]) -> Starlette:
    """A Starlette app answering `GET /v2/core/events/{id}` from `events`."""

    async def get_event(request: Request) -> Response:
        event_id = request.path_params["event_id"]
        if not request.headers.get("authorization", "").startswith("Bearer "):
            return JSONResponse(
                {
                    "error": {
                        "type": "invalid_request_error",
                        "message": "You did not provide an API key.",
                    }
                },
                status_code=401,
            )
        body = events.get(event_id)
        if body is None:
            return JSONResponse(
                {
                    "error": {
                        "type": "invalid_request_error",
                        "code": "resource_missing",
                        "message": f"No such event: '{event_id}'",
                    }
                },
                status_code=404,
            )
        return Response(body, media_type="application/json")

    return Starlette(routes=[Route("/v2/core/events/{event_id}", get_event)])


@contextlib.asynccontextmanager
async def serving(
    events: Mapping[str, bytes], *, port: int, host: str = "127.0.0.1"
) -> AsyncIterator[str]:
    """Serve `events` on host:port for the duration of the block; yields the base URL."""
    config = uvicorn.Config(
        build_app(events), host=host, port=port, log_level="warning", lifespan="off"
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()  # raises the bind error
            raise RuntimeError(f"fake Stripe API stopped before it started on port {port}")
        await asyncio.sleep(0.02)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        await task
