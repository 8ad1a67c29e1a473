"""A lean asyncio network backend for httpcore, so httpx's per-read/write overhead stays small.

httpx's default async transport goes through anyio: every socket read and write enters a cancel scope, and
the connection pool asks each idle connection "is the socket readable?" through anyio's attribute lookup and
a `poll()` call on every request. At hundreds of streamed requests per second that is about a fifth of the
client's CPU. `AsyncioBackend` implements httpcore's `AsyncNetworkBackend` on an asyncio `Protocol` (data
lands in a buffer; a read only waits when the buffer is empty), and `lean_transport()` builds an
`httpx.AsyncHTTPTransport` whose connection pool uses it. HTTP parsing, pooling and TLS stay httpx/httpcore's.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Iterable
from typing import Any

import httpcore
import httpx

_HIGH_WATER = 1 << 20  # pause reading when this many bytes wait unread


class _Proto(asyncio.Protocol):
    """Buffers received bytes and wakes the one pending reader."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.eof = False
        self.exc: BaseException | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.drain: asyncio.Future[None] | None = None
        self.transport: asyncio.Transport | None = None
        self.paused_reading = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if len(self.buf) > _HIGH_WATER and not self.paused_reading and self.transport is not None:
            self.transport.pause_reading()
            self.paused_reading = True
        self._wake()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        self.exc = exc
        self._wake()
        if self.drain is not None and not self.drain.done():
            self.drain.set_result(None)

    def pause_writing(self) -> None:
        if self.drain is None or self.drain.done():
            self.drain = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self.drain is not None and not self.drain.done():
            self.drain.set_result(None)

    def _wake(self) -> None:
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)


class AsyncioStream(httpcore.AsyncNetworkStream):
    """One TCP (or TLS) connection; reads return buffered bytes at once, else wait for the next delivery."""

    def __init__(self, transport: asyncio.Transport, proto: _Proto):
        self._t, self._p = transport, proto

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        p = self._p
        if not p.buf:
            if p.eof:
                if p.exc is not None:
                    raise httpcore.ReadError(str(p.exc) or type(p.exc).__name__)
                return b""
            loop = asyncio.get_running_loop()
            p.waiter = fut = loop.create_future()
            timer = loop.call_later(timeout, _expire, fut) if timeout is not None else None
            try:
                await fut
            finally:
                p.waiter = None
                if timer is not None:
                    timer.cancel()
            if not p.buf:
                if p.exc is not None:
                    raise httpcore.ReadError(str(p.exc) or type(p.exc).__name__)
                return b""
        if len(p.buf) <= max_bytes:
            data = bytes(p.buf)
            p.buf.clear()
        else:
            data = bytes(p.buf[:max_bytes])
            del p.buf[:max_bytes]
        if p.paused_reading and len(p.buf) < _HIGH_WATER // 2:
            p.paused_reading = False
            self._t.resume_reading()
        return data

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        if self._t.is_closing():
            raise httpcore.WriteError("connection closed")
        self._t.write(buffer)
        drain = self._p.drain
        if drain is not None and not drain.done():
            try:
                async with asyncio.timeout(timeout):
                    await drain
            except TimeoutError as e:
                raise httpcore.WriteTimeout(f"write timed out after {timeout} s") from e

    async def aclose(self) -> None:
        self._t.close()

    async def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                        timeout: float | None = None) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                t = await loop.start_tls(self._t, self._p, ssl_context, server_hostname=server_hostname)
        except TimeoutError as e:
            self._t.close()
            raise httpcore.ConnectTimeout(f"TLS handshake timed out after {timeout} s") from e
        except (OSError, ssl.SSLError) as e:
            self._t.close()
            raise httpcore.ConnectError(str(e)) from e
        if t is None:  # pragma: no cover - only when the loop cannot upgrade
            raise httpcore.ConnectError("TLS upgrade failed")
        self._p.transport = t  # type: ignore[assignment]
        return AsyncioStream(t, self._p)  # type: ignore[arg-type]

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable":  # idle connection with bytes or EOF pending = server closed it
            return bool(self._p.buf) or self._p.eof
        if info == "ssl_object":
            return self._t.get_extra_info("ssl_object")
        if info == "client_addr":
            return self._t.get_extra_info("sockname")
        if info == "server_addr":
            return self._t.get_extra_info("peername")
        if info == "socket":
            return self._t.get_extra_info("socket")
        return None


def _expire(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_exception(httpcore.ReadTimeout("read timed out"))


class AsyncioBackend(httpcore.AsyncNetworkBackend):
    """httpcore network backend on plain asyncio transports (TCP_NODELAY, as anyio sets it)."""

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None,
                          socket_options: Iterable[Any] | None = None) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                t, p = await loop.create_connection(
                    _Proto, host, port, local_addr=(local_address, 0) if local_address else None)
        except TimeoutError as e:
            raise httpcore.ConnectTimeout(f"connect to {host}:{port} timed out after {timeout} s") from e
        except OSError as e:
            raise httpcore.ConnectError(str(e)) from e
        sock = t.get_extra_info("socket")
        if sock is not None:
            for opt in socket_options or ():
                sock.setsockopt(*opt)
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:  # pragma: no cover
                pass
        return AsyncioStream(t, p)  # type: ignore[arg-type]

    async def connect_unix_socket(self, path: str, timeout: float | None = None,
                                  socket_options: Iterable[Any] | None = None) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                t, p = await loop.create_unix_connection(_Proto, path)
        except TimeoutError as e:
            raise httpcore.ConnectTimeout(f"connect to {path} timed out after {timeout} s") from e
        except OSError as e:
            raise httpcore.ConnectError(str(e)) from e
        return AsyncioStream(t, p)  # type: ignore[arg-type]

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


def uses_lean_pool(transport: httpx.AsyncHTTPTransport) -> bool:
    """Whether `lean_transport` could swap in its pool (False when httpx changed the private `_pool`)."""
    pool = getattr(transport, "_pool", None)
    return isinstance(pool, httpcore.AsyncConnectionPool) and isinstance(
        getattr(pool, "_network_backend", None), AsyncioBackend)


def lean_transport(*, limits: httpx.Limits, verify: ssl.SSLContext | bool = False) -> httpx.AsyncHTTPTransport:
    """An httpx transport (HTTP/1.1, no proxy) whose httpcore pool runs on `AsyncioBackend`."""
    transport = httpx.AsyncHTTPTransport(verify=verify, trust_env=False, limits=limits)
    ssl_context = verify if isinstance(verify, ssl.SSLContext) else httpx.create_ssl_context(verify=verify)
    # the one private detail: swap the pool httpx built for an identical one with our network backend;
    # an httpx without that attribute keeps its own (slower, correct) pool
    if not isinstance(getattr(transport, "_pool", None), httpcore.AsyncConnectionPool):
        return transport
    transport._pool = httpcore.AsyncConnectionPool(
        ssl_context=ssl_context, max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections, keepalive_expiry=limits.keepalive_expiry,
        http1=True, http2=False, retries=0, network_backend=AsyncioBackend())
    return transport
