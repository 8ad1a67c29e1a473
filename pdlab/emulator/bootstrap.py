"""The PD handoff over real sockets: a prefill worker's bootstrap server and the decode worker's client.

Protocol (line-delimited JSON over TCP on --disaggregation-bootstrap-port): the decode worker, once it has
reserved KV for a request, connects and sends ``{"room": R, "prompt_tokens": N, "cached_tokens": C}`` (C: prompt
tokens its own radix cache holds, which need not be sent); the prefill worker answers
one line when it has prefilled room R and "sent" its KV — ``{"status": "ok"}`` — or ``{"status": "error",
"message": ...}`` when the prefill failed or timed out. Either side gives up after ``timeout_s``.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field


class HandoffError(Exception):
    """The PD handoff failed: prefill error, bootstrap server unreachable, or timeout."""


@dataclass
class Room:
    """One bootstrap room: set when the decode side registers, and when the KV has been sent."""

    registered: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    done: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class BootstrapServer:
    """Prefill side: rooms keyed by bootstrap_room, a TCP server decode workers register with."""

    def __init__(self, host: str, port: int, timeout_s: float):
        self.host, self.port, self.timeout_s = host, port, timeout_s
        self.rooms: dict[int, Room] = {}
        self._server: asyncio.AbstractServer | None = None

    def room(self, room: int) -> Room:
        """The room's state, created on first mention by either side (and forgotten after timeout)."""
        r = self.rooms.get(room)
        if r is None:
            r = self.rooms[room] = Room()
            asyncio.get_running_loop().call_later(self.timeout_s * 2 + 1, self.rooms.pop, room, None)
        return r

    async def start(self) -> None:
        """Listen on the bootstrap port."""
        self._server = await asyncio.start_server(self._handle, self.host, self.port)

    async def stop(self) -> None:
        """Close the listening socket."""
        if self._server is not None:
            self._server.close()

    async def wait_registered(self, room: int) -> int:
        """Prefill: wait until the decode worker has reserved KV and registered the room; returns the prompt
        tokens the decode worker already has cached."""
        try:
            return int(await asyncio.wait_for(asyncio.shield(self.room(room).registered), self.timeout_s))
        except TimeoutError:
            raise HandoffError(f"no decode worker registered bootstrap room {room} within {self.timeout_s:g} s") from None

    def complete(self, room: int, error: str | None = None) -> None:
        """Prefill: the room's KV has been sent (or prefill failed with `error`)."""
        fut = self.room(room).done
        if not fut.done():
            fut.set_result(error)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), self.timeout_s)
            msg = json.loads(line)
            room = self.room(int(msg["room"]))
            if not room.registered.done():
                room.registered.set_result(int(msg.get("cached_tokens") or 0))
            try:
                error = await asyncio.wait_for(asyncio.shield(room.done), self.timeout_s)
            except TimeoutError:
                error = f"prefill of bootstrap room {msg['room']} did not finish within {self.timeout_s:g} s"
            reply = {"status": "ok"} if error is None else {"status": "error", "message": error}
            self.rooms.pop(int(msg["room"]), None)
            writer.write(json.dumps(reply).encode() + b"\n")
            await writer.drain()
        except (OSError, ValueError, KeyError, TimeoutError):
            pass
        finally:
            writer.close()


async def fetch_kv(host: str, port: int, room: int, prompt_tokens: int, timeout_s: float,
                   cached_tokens: int = 0) -> None:
    """Decode side: register `room` with the prefill's bootstrap server and wait until its KV has arrived."""
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_connection(host, port)
            try:
                msg = {"room": room, "prompt_tokens": prompt_tokens, "cached_tokens": cached_tokens}
                writer.write(json.dumps(msg).encode() + b"\n")
                await writer.drain()
                line = await reader.readline()
            finally:
                writer.close()
    except TimeoutError:
        raise HandoffError(f"KV for bootstrap room {room} did not arrive from {host}:{port} within {timeout_s:g} s") from None
    except OSError as e:
        raise HandoffError(f"cannot reach the prefill bootstrap server {host}:{port}: {e.strerror or e}") from None
    if not line:
        raise HandoffError(f"the prefill bootstrap server {host}:{port} closed the connection for room {room}")
    reply = json.loads(line)
    if reply.get("status") != "ok":
        raise HandoffError(f"prefill failed for bootstrap room {room}: {reply.get('message')}")
