"""The asyncio network backend under httpx: keep-alive reuse, server-closed idle connections, big bodies."""

import asyncio

import httpx

from pdlab.measure.load.netbackend import lean_transport, uses_lean_pool

LIMITS = httpx.Limits(max_connections=4, max_keepalive_connections=4, keepalive_expiry=60.0)


async def _server(close_after_response: bool, body: bytes):
    """A raw HTTP/1.1 server; counts connections; optionally closes each one after replying (no header says so)."""
    conns = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conns.append(writer)
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            n = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    n = int(line.split(b":")[1])
            await reader.readexactly(n)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
            await writer.drain()
            if close_after_response:
                writer.close()
                return

    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    return srv, f"http://127.0.0.1:{srv.sockets[0].getsockname()[1]}", conns


def test_reuses_connections_and_recovers_when_server_closes_idle_ones():
    async def main():
        results = {}
        for close in (False, True):
            srv, url, conns = await _server(close, b"hi")
            async with httpx.AsyncClient(base_url=url, transport=lean_transport(limits=LIMITS)) as c:
                codes = []
                for _ in range(5):
                    r = await c.post("/x", content=b"abc")
                    codes.append((r.status_code, r.content))
                    await asyncio.sleep(0.02)  # let the server's close reach the idle connection
            srv.close()
            results[close] = (codes, len(conns))
        return results

    res = asyncio.run(main())
    assert res[False] == ([(200, b"hi")] * 5, 1)  # one kept-alive connection for all five
    assert res[True] == ([(200, b"hi")] * 5, 5)  # each closed idle connection noticed and replaced


def test_large_body_and_unreachable():
    big = bytes(range(256)) * 20_000  # 5 MB: crosses the read high-water mark (pause/resume reading)

    async def main():
        srv, url, _ = await _server(False, big)
        async with httpx.AsyncClient(base_url=url, transport=lean_transport(limits=LIMITS)) as c:
            r = await c.post("/x", content=b"")
            chunks = [len(part) async for part in (await c.send(c.build_request("POST", "/x"), stream=True)).aiter_raw()]
        srv.close()
        async with httpx.AsyncClient(base_url="http://127.0.0.1:9", transport=lean_transport(limits=LIMITS)) as c:
            try:
                await c.get("/")
                err = None
            except httpx.ConnectError as e:
                err = e
        return r.content, sum(chunks), err

    content, streamed, err = asyncio.run(main())
    assert content == big and streamed == len(big)
    assert isinstance(err, httpx.ConnectError)


def test_adapter_still_reaches_httpx_pool():
    """The one private detail (httpx's transport._pool) still exists: fails when httpx changes it."""
    assert uses_lean_pool(lean_transport(limits=LIMITS))
    assert not uses_lean_pool(httpx.AsyncHTTPTransport())
