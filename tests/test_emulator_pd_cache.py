"""PD and the prefix cache: prefill workers cache; decode only with --disaggregation-decode-enable-radix-cache,
and then only the uncached part of the KV crosses the link."""

import asyncio
import contextlib

from _emulator_helpers import emulator_client, free_port

PROMPT = list(range(5000, 11000))


@contextlib.asynccontextmanager
async def pd_pair(*decode_flags: str):
    bport = free_port()
    async with (emulator_client("--disaggregation-mode", "prefill", "--disaggregation-bootstrap-port", str(bport),
                                "--emu-pd-timeout-s", "2") as p,
                emulator_client("--disaggregation-mode", "decode", "--emu-pd-timeout-s", "2", *decode_flags) as d):
        yield p, d, bport


async def _send(p, d, port: int, room: int) -> tuple[dict, dict, float]:
    body = {"input_ids": PROMPT, "sampling_params": {"max_new_tokens": 2}, "bootstrap_host": "127.0.0.1",
            "bootstrap_port": port, "bootstrap_room": room}
    pr, dr = await asyncio.gather(p.post("/generate", json=body), d.post("/generate", json=body))
    m = (await p.get("/metrics")).text
    lat = float(next(x for x in m.splitlines() if x.startswith("sglang:kv_transfer_latency_ms{")).split()[-1])
    return pr.json()["meta_info"], dr.json()["meta_info"], lat


async def test_prefill_caches_decode_does_not_by_default():
    async with pd_pair() as (p, d, port):
        await _send(p, d, port, 1)
        pm, dm, _ = await _send(p, d, port, 2)
        assert pm["cached_tokens"] == len(PROMPT) - 1 and dm["cached_tokens"] == 0
        assert (await d.get("/server_info")).json()["disable_radix_cache"] is True


async def test_decode_radix_cache_flag_transfers_only_the_uncached_kv():
    async with pd_pair("--disaggregation-decode-enable-radix-cache") as (p, d, port):
        _, dm1, lat1 = await _send(p, d, port, 1)
        _, dm2, lat2 = await _send(p, d, port, 2)
        assert dm1["cached_tokens"] == 0 and dm2["cached_tokens"] == len(PROMPT) - 1
        assert lat2 < lat1 / 10
