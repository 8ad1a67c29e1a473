"""The emulated worker's prefix cache as a user sees it over HTTP: TTFT, cached_tokens, /metrics, /flush_cache."""

import re

from _emulator_helpers import emulator_client

PROMPT = list(range(1000, 9000))  # 8000 token ids, sent as input_ids (no tokenizer in the timing)


async def _ttft_and_cached(c, ids=PROMPT) -> tuple[float, int]:
    r = await c.post("/generate", json={"input_ids": ids, "sampling_params": {"max_new_tokens": 1}})
    meta = r.json()["meta_info"]
    return meta["e2e_latency"], meta["cached_tokens"]


def _metric(text: str, name: str) -> float:
    return sum(float(v) for v in re.findall(rf"^{re.escape(name)}{{[^}}]*}} (\S+)$", text, re.M))


async def test_second_identical_long_prompt_is_served_from_the_cache():
    async with emulator_client("--emu-time-scale", "0.1") as c:
        t1, c1 = await _ttft_and_cached(c)
        t2, c2 = await _ttft_and_cached(c)
        assert c1 == 0 and c2 == len(PROMPT) - 1
        assert t2 < t1 / 5
        m = (await c.get("/metrics")).text
        assert _metric(m, "sglang:cache_hit_rate") > 0.9
        assert _metric(m, "sglang:cached_tokens_total") == len(PROMPT) - 1


async def test_disable_radix_cache_shows_no_difference():
    async with emulator_client("--emu-time-scale", "0.1", "--disable-radix-cache") as c:
        t1, c1 = await _ttft_and_cached(c)
        t2, c2 = await _ttft_and_cached(c)
        assert c1 == c2 == 0
        assert abs(t2 - t1) < 0.3 * t1
        m = (await c.get("/metrics")).text
        assert _metric(m, "sglang:cache_hit_rate") == 0 and _metric(m, "sglang:cached_tokens_total") == 0
        assert (await c.get("/server_info")).json()["disable_radix_cache"] is True


async def test_openai_usage_reports_cached_tokens_only_with_enable_cache_report():
    msgs = [{"role": "system", "content": "You are terse. " * 200}, {"role": "user", "content": "hi"}]
    body = {"model": "m", "messages": msgs, "max_tokens": 2}
    async with emulator_client("--enable-cache-report") as c:
        await c.post("/v1/chat/completions", json=body)
        u = (await c.post("/v1/chat/completions", json=body)).json()["usage"]
        assert u["prompt_tokens_details"]["cached_tokens"] == u["prompt_tokens"] - 1
    async with emulator_client() as c:
        await c.post("/v1/chat/completions", json=body)
        assert (await c.post("/v1/chat/completions", json=body)).json()["usage"]["prompt_tokens_details"] is None


async def test_flush_cache_empties_the_cache():
    async with emulator_client() as c:
        await _ttft_and_cached(c)
        r = await c.post("/flush_cache")
        assert r.status_code == 200 and r.text.startswith("Cache flushed.")
        _, cached = await _ttft_and_cached(c)
        assert cached == 0
