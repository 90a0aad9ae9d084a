"""A transport that sends a response's head and body in one write.

uvicorn writes a response's status line and headers as soon as the app sends
`http.response.start`, and the body in a second write: two system calls and two TCP
segments per answer, each waking the client. Between the two nothing else happens (the
receiver sends both in the same loop turn), so `HeldWrites` keeps a write back until the
next one, or at the latest until the end of the loop turn, and sends both together.
Nothing is reordered, and nothing waits longer than the current loop turn (so an interim
`100 Continue` still goes out before the client is expected to send its body).
"""

from __future__ import annotations

import asyncio
from typing import Any


class HeldWrites(asyncio.Transport):
    """A transport that joins a write with the next one made in the same loop turn."""

    def __init__(self, transport: asyncio.Transport) -> None:
        super().__init__()
        self._transport = transport
        self._held: bytes | None = None
        self._loop = asyncio.get_running_loop()
        self._sealed = False

    def seal(self) -> None:
        """From now on drop writes and closes: the answer went out and our end is shut;
        only `close_now` ends the connection."""
        self.flush()
        self._sealed = True

    def close_now(self) -> None:
        """Close the connection, sealed or not."""
        self.flush()
        self._transport.close()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._sealed or self._transport.is_closing():
            # Closing: uvloop's transport raises once closed. uvicorn stops only the last
            # request's answer when the client goes; one pipelined before it still writes.
            self._held = None
            return
        held = self._held
        if held is None:
            self._held = bytes(data)
            self._loop.call_soon(self.flush)
        else:
            self._held = None
            self._transport.write(held + data)

    def flush(self) -> None:
        """Send what is held back, if anything (nothing once the connection is closing:
        after a reset the real transport would raise)."""
        held, self._held = self._held, None
        if held is not None and not self._transport.is_closing():
            self._transport.write(held)

    def writelines(self, list_of_data: Any) -> None:
        if self._sealed or self._transport.is_closing():
            self._held = None
            return
        self.flush()
        self._transport.writelines(list_of_data)

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def can_write_eof(self) -> bool:
        return self._transport.can_write_eof()

    def close(self) -> None:
        if not self._sealed:
            self.close_now()

    def abort(self) -> None:
        self._held = None
        self._transport.abort()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()

    def is_reading(self) -> bool:
        return self._transport.is_reading()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._transport.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._transport.get_protocol()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + len(self._held or b"")

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._transport.get_write_buffer_limits()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._transport.set_write_buffer_limits(high, low)
