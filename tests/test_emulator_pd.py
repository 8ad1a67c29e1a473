"""The PD handoff over real sockets: prefill bootstrap server, decode registration, failures as errors."""

import asyncio
import contextlib
import time

from _emulator_helpers import emulator_client, free_port, sse_events

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hello " * 200}], "max_tokens": 4}


@contextlib.asynccontextmanager
async def pd_pair(*prefill_flags: str, timeout: str = "2"):
    bport = free_port()
    async with (emulator_client("--disaggregation-mode", "prefill", "--disaggregation-bootstrap-port", str(bport),
                                "--emu-pd-timeout-s", timeout, *prefill_flags) as p,
                emulator_client("--disaggregation-mode", "decode", "--emu-pd-timeout-s", timeout) as d):
        yield p, d, bport


def with_room(body: dict, port: int, room: int = 42) -> dict:
    return {**body, "bootstrap_host": "127.0.0.1", "bootstrap_port": port, "bootstrap_room": room}


async def test_pd_handoff_streams_from_decode():
    async with pd_pair() as (p, d, port):
        body = with_room({**CHAT, "stream": True, "stream_options": {"include_usage": True}}, port)
        pr, dr = await asyncio.gather(p.post("/v1/chat/completions", json=body),
                                      d.post("/v1/chat/completions", json=body))
        assert pr.status_code == dr.status_code == 200
        dev = sse_events(dr.text)
        assert dev[-1] == "[DONE]" and dev[-2]["usage"]["completion_tokens"] == 4
        pev = sse_events(pr.text)
        assert pev[-2]["usage"]["completion_tokens"] == 1  # prefill generates the first token only
        # the decode's first token is the prefill's first token (same seeded walk)
        first = lambda ev: next(e["choices"][0]["delta"]["content"] for e in ev[1:] if e["choices"][0]["delta"])  # noqa: E731
        assert first(dev).startswith(first(pev))
        metrics = (await d.get("/metrics")).text
        assert 'engine_type="decode"' in metrics
        assert "sglang:kv_transfer_latency_ms" in (await p.get("/metrics")).text


async def test_pd_generate_non_streaming_and_kv_transfer_time():
    async with pd_pair() as (p, d, port):
        body = with_room({"text": "x " * 3000, "sampling_params": {"max_new_tokens": 3}}, port, room=7)
        pr, dr = await asyncio.gather(p.post("/generate", json=body), d.post("/generate", json=body))
        assert pr.json()["meta_info"]["completion_tokens"] == 1
        assert dr.json()["meta_info"]["completion_tokens"] == 3
        info = (await p.get("/metrics")).text
        line = next(x for x in info.splitlines() if x.startswith("sglang:kv_transfer_latency_ms{"))
        assert float(line.split()[-1]) > 0


async def test_decode_without_bootstrap_is_400():
    async with emulator_client("--disaggregation-mode", "decode") as d:
        r = await d.post("/v1/chat/completions", json=CHAT)
        assert r.status_code == 400 and "bootstrap" in r.json()["message"]


async def test_unreachable_prefill_is_an_error_not_a_hang():
    async with emulator_client("--disaggregation-mode", "decode", "--emu-pd-timeout-s", "5") as d:
        t = time.monotonic()
        r = await d.post("/v1/chat/completions", json=with_room({**CHAT, "stream": True}, free_port()))
        assert r.status_code == 500 and "bootstrap server" in r.json()["message"]
        assert time.monotonic() - t < 2
        assert (await d.post("/v1/chat/completions", json=CHAT)).status_code == 400  # still serving


async def test_prefill_never_seen_times_out_with_error():
    async with pd_pair(timeout="0.5") as (p, d, port):
        t = time.monotonic()
        r = await d.post("/generate", json=with_room({"text": "hi", "sampling_params": {"max_new_tokens": 2}}, port))
        assert r.status_code == 500 and "within 0.5 s" in r.json()["error"]["message"]
        assert time.monotonic() - t < 3


async def test_prefill_rejection_reaches_decode_client_quickly():
    async with pd_pair("--context-length", "100", timeout="5") as (p, d, port):
        body = with_room({**CHAT, "stream": True}, port, room=9)
        t = time.monotonic()
        pr, dr = await asyncio.gather(p.post("/v1/chat/completions", json=body),
                                      d.post("/v1/chat/completions", json=body))
        assert pr.status_code == 400
        assert dr.status_code == 500 and "context length" in dr.json()["message"]
        assert time.monotonic() - t < 2
