"""The streaming HTTP client: one `RequestRecord` per request, errors included.

`LoadClient.send(prompt, ...)` posts to `/v1/chat/completions` (default), `/v1/completions` or `/generate`
with `stream: true` and parses the SSE body at the byte level (no line iterator, one `json.loads` per
event). It records the scheduled and actual send time, the arrival time of every content chunk, the end
time, HTTP status, server usage (or a re-tokenised count) and error text. Timeouts, connection failures,
4xx/5xx, error events and truncated streams (no `[DONE]`) become records with `ok=False`; only
cancellation propagates. Requests are spread round-robin over several `httpx.AsyncClient`s ("shards") so
each connection pool stays small — httpx's pool bookkeeping grows with its connection count.
"""

from __future__ import annotations

import asyncio
import functools
import json
import math
import ssl
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from pdlab.measure.load.datasets import Prompt, count_tokens
from pdlab.measure.load.netbackend import lean_transport

APIS = {"chat": "/v1/chat/completions", "completions": "/v1/completions", "generate": "/generate"}
NAN = math.nan


@dataclass(slots=True)
class RequestRecord:
    """What happened to one request. Times are seconds on the run's perf_counter clock, from its t0."""

    req_id: int
    level: int = 0
    warmup: bool = False
    t_sched: float = NAN
    t_send: float = NAN
    t_first: float = NAN
    t_end: float = NAN
    chunk_times: list[float] = field(default_factory=list)
    input_len: int = 0
    max_tokens: int = 0
    prompt_tokens: int = 0
    output_tokens: int = 0
    tokens_source: str = ""
    status: int = 0
    ok: bool = False
    error: str = ""


class LoadClient:
    """Streams requests at one server; use `async with LoadClient(url) as c: rec = await c.send(...)`."""

    def __init__(self, base_url: str, *, api: str = "chat", model: str = "default", timeout_s: float = 600.0,
                 max_connections: int = 2048, per_shard: int = 16, ignore_eos: bool = True,
                 t0: float | None = None, extra_body: dict[str, Any] | None = None, lean: bool = True):
        if api not in APIS:
            raise ValueError(f"unknown api '{api}'; use one of {', '.join(APIS)}")
        self.base_url = base_url.rstrip("/")
        self.api, self.path = api, APIS[api]
        self.model, self.timeout_s, self.ignore_eos = model, timeout_s, ignore_eos
        self.extra_body = extra_body or {}
        self.t0 = time.perf_counter() if t0 is None else t0
        n = max(1, min(128, math.ceil(max_connections / per_shard)))
        self._shard_limits = httpx.Limits(max_connections=math.ceil(max_connections / n),
                                          max_keepalive_connections=math.ceil(max_connections / n),
                                          keepalive_expiry=60.0)
        self._n = n
        self._lean = lean
        self._clients: list[httpx.AsyncClient] = []
        self._rr = 0
        self.cancelled: list[RequestRecord] = []  # records of requests cut short by cancellation
        self._headers = {"content-type": "application/json", "accept": "text/event-stream"}

    async def __aenter__(self) -> LoadClient:
        timeout = httpx.Timeout(self.timeout_s, connect=min(10.0, self.timeout_s))
        verify = _ssl_context() if self.base_url.startswith("https") else False  # one context, loaded once
        self._clients = [httpx.AsyncClient(base_url=self.base_url, limits=self._shard_limits, timeout=timeout,
                                           verify=verify, trust_env=False, follow_redirects=False,
                                           transport=lean_transport(limits=self._shard_limits, verify=verify)
                                           if self._lean else None)
                         for _ in range(self._n)]
        return self

    async def __aexit__(self, *exc: object) -> None:
        for c in self._clients:
            await c.aclose()
        self._clients = []

    def body(self, prompt: Prompt) -> bytes:
        """The JSON request body for this API (streaming, usage requested, ignore_eos for exact lengths)."""
        n = prompt.output_len
        if self.api == "chat":
            b: dict[str, Any] = {"model": self.model, "messages": prompt.chat_messages(), "max_tokens": n,
                                 "temperature": 0.0, "stream": True, "stream_options": {"include_usage": True},
                                 "ignore_eos": self.ignore_eos}
        elif self.api == "completions":
            b = {"model": self.model, "prompt": prompt.text, "max_tokens": n, "temperature": 0.0,
                 "stream": True, "stream_options": {"include_usage": True}, "ignore_eos": self.ignore_eos}
        else:
            b = {"text": prompt.text, "stream": True, "sampling_params": {
                "max_new_tokens": n, "temperature": 0.0, "ignore_eos": self.ignore_eos}}
        b.update(self.extra_body)
        return json.dumps(b).encode()

    async def send(self, prompt: Prompt, *, req_id: int | None = None, level: int = 0, warmup: bool = False,
                   t_sched: float = NAN) -> RequestRecord:
        """Send one request now and stream it to the end; never raises except on cancellation."""
        rec = RequestRecord(req_id=prompt.index if req_id is None else req_id, level=level, warmup=warmup,
                            t_sched=t_sched, input_len=prompt.input_len, max_tokens=prompt.output_len)
        client = self._clients[self._rr % self._n]
        self._rr += 1
        content = self.body(prompt)
        perf, t0 = time.perf_counter, self.t0
        parts: list[str] = []
        state = _StreamState()
        rec.t_send = perf() - t0
        try:
            async with asyncio.timeout(self.timeout_s):
                req = client.build_request("POST", self.path, content=content, headers=self._headers)
                resp = await client.send(req, stream=True)
                try:
                    rec.status = resp.status_code
                    if resp.status_code != 200:
                        raw = await resp.aread()
                        rec.error = f"HTTP {resp.status_code}: {_short(raw)}"
                    else:
                        await self._consume(resp, rec, state, parts)
                finally:
                    await resp.aclose()
        except asyncio.CancelledError:
            rec.error = rec.error or "cancelled (run interrupted)"
            rec.t_end = perf() - t0
            self._finish(rec, state, parts)
            self.cancelled.append(rec)
            raise
        except TimeoutError:
            rec.error = f"timeout after {self.timeout_s:g} s"
        except httpx.ConnectError as e:
            rec.error = f"connection failed: {e or type(e).__name__} ({self.base_url})"
        except httpx.TimeoutException as e:
            rec.error = f"timeout ({type(e).__name__}) after {self.timeout_s:g} s"
        except (httpx.RemoteProtocolError, httpx.ReadError) as e:
            rec.error = f"truncated stream after {len(rec.chunk_times)} chunks: {e or type(e).__name__}"
        except Exception as e:  # noqa: BLE001 - any failure is a record, not the end of the run
            rec.error = f"{type(e).__name__}: {e}"
        if math.isnan(rec.t_end):
            rec.t_end = perf() - t0
        self._finish(rec, state, parts)
        return rec

    async def _consume(self, resp: httpx.Response, rec: RequestRecord, st: _StreamState,
                       parts: list[str]) -> None:
        perf, t0 = time.perf_counter, self.t0
        buf = b""
        async for chunk in resp.aiter_raw():
            now = perf() - t0
            if b"\r" in chunk:
                chunk = chunk.replace(b"\r\n", b"\n")
            buf += chunk
            while True:
                i = buf.find(b"\n\n")
                if i < 0:
                    break
                event, buf = buf[:i], buf[i + 2:]
                self._event(event, now, rec, st, parts)
            rec.t_end = now
        if buf.strip():
            self._event(buf, perf() - t0, rec, st, parts)
        if not st.done and not rec.error:
            rec.error = f"truncated stream: ended without [DONE] after {len(rec.chunk_times)} chunks"

    def _event(self, event: bytes, now: float, rec: RequestRecord, st: _StreamState, parts: list[str]) -> None:
        for line in event.split(b"\n"):
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            if payload == b"[DONE]":
                st.done = True
                continue
            try:
                data = json.loads(payload)
            except ValueError:
                rec.error = rec.error or f"bad SSE event: {_short(payload)}"
                continue
            if not isinstance(data, dict):
                continue
            if "error" in data or data.get("object") == "error":
                err = data.get("error", data)
                rec.error = rec.error or f"server error event: {_short(json.dumps(err).encode())}"
                continue
            text = ""
            if self.api == "generate":
                full = data.get("text") or ""
                if len(full) > st.gen_len:
                    text, st.gen_len = full[st.gen_len:], len(full)
                meta = data.get("meta_info") or {}
                if "completion_tokens" in meta:
                    st.usage = meta
            else:
                choices = data.get("choices") or ()
                if choices:
                    c0 = choices[0]
                    text = (c0.get("delta") or {}).get("content") or "" if self.api == "chat" else c0.get("text") or ""
                if data.get("usage"):
                    st.usage = data["usage"]
            if text:
                if not rec.chunk_times:
                    rec.t_first = now
                rec.chunk_times.append(now)
                parts.append(text)

    def _finish(self, rec: RequestRecord, st: _StreamState, parts: list[str]) -> None:
        usage = st.usage
        if usage and usage.get("completion_tokens") is not None:
            rec.output_tokens = int(usage["completion_tokens"])
            rec.prompt_tokens = int(usage.get("prompt_tokens") or rec.input_len)
            rec.tokens_source = "usage"
        else:
            rec.output_tokens = count_tokens("".join(parts)) if parts else 0
            rec.prompt_tokens = rec.input_len
            rec.tokens_source = "retokenized"
        rec.ok = rec.status == 200 and not rec.error


@dataclass(slots=True)
class _StreamState:
    done: bool = False
    gen_len: int = 0
    usage: dict | None = None


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    return httpx.create_ssl_context()


def _short(raw: bytes, n: int = 300) -> str:
    text = raw.decode("utf-8", "replace").strip().replace("\n", " ")
    return text if len(text) <= n else text[:n] + "…"
