"""Helpers for the emulator tests: in-process apps (httpx ASGI) and emulator subprocesses on free ports."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator

import httpx

from pdlab.core.fsutil import free_port
from pdlab.emulator.cli import parse
from pdlab.emulator.server import create_app


@contextlib.asynccontextmanager
async def emulator_client(*flags: str) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client talking to an in-process emulator started with CLI `flags`."""
    argv = ["--model-path", "/models/Qwen3-32B/", "--tp", "2", "--enable-metrics", "--emu-time-scale", "0.01",
            "--port", str(free_port()), *flags]
    app = create_app(parse(argv))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://emu", timeout=10) as c:
            c.app = app  # type: ignore[attr-defined]
            yield c


def sse_events(text: str) -> list:
    """Decoded `data:` payloads of an SSE body ('[DONE]' kept as a string)."""
    import json

    out = []
    for line in text.splitlines():
        if line.startswith("data: "):
            data = line[6:]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


@contextlib.contextmanager
def processes(cmds: list[list[str]], ready_urls: list[str], timeout: float = 15.0) -> Iterator[None]:
    """Start processes, wait until every ready URL answers 200, and always stop them (by pid)."""
    procs = [subprocess.Popen(c, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for c in cmds]
    try:
        deadline = time.monotonic() + timeout
        for url in ready_urls:
            while True:
                try:
                    if httpx.get(url, timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                dead = [p for p in procs if p.poll() is not None]
                if dead or time.monotonic() > deadline:
                    errs = b"".join(p.stderr.read() or b"" for p in dead)[-2000:].decode(errors="replace")
                    raise RuntimeError(f"{url} not ready: {errs}")
                time.sleep(0.2)
        yield
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)


def emulator_cmd(port: int, *flags: str) -> list[str]:
    """Command line of an emulator subprocess (seed-style flags, Qwen3-32B TP2 on L20)."""
    return [sys.executable, "-m", "pdlab.emulator", "--model-path", "/models/Qwen3-32B/", "--tp", "2",
            "--host", "127.0.0.1", "--port", str(port), "--enable-metrics", *flags]
