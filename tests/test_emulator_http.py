"""The emulator's HTTP surface, in process (httpx ASGI transport, time scale 0.01)."""

import pytest
from _emulator_helpers import emulator_client, sse_events

CHAT = {"model": "qwen", "messages": [{"role": "user", "content": "Tell me a story."}], "max_tokens": 5}


async def test_info_endpoints():
    async with emulator_client("--served-model-name", "qwen") as c:
        assert (await c.get("/health")).status_code == 200
        assert (await c.get("/health_generate")).status_code == 200
        for path in ("/server_info", "/get_server_info"):
            info = (await c.get(path)).json()
            assert info["tp_size"] == 2 and info["disaggregation_mode"] == "null"
            assert info["max_total_num_tokens"] > 50_000 and info["emulated"]["gpu"] == "L20"
        for path in ("/model_info", "/get_model_info"):
            assert (await c.get(path)).json()["model_path"] == "/models/Qwen3-32B/"
        models = (await c.get("/v1/models")).json()
        assert models["object"] == "list" and models["data"][0]["id"] == "qwen"


async def test_generate_non_streaming_meta_info():
    async with emulator_client() as c:
        r = await c.post("/generate", json={"text": "Hello world", "sampling_params": {"max_new_tokens": 6}})
        body = r.json()
        assert r.status_code == 200 and len(body["output_ids"]) == 6 and body["text"]
        meta = body["meta_info"]
        assert meta["prompt_tokens"] == 2 and meta["completion_tokens"] == 6 and meta["e2e_latency"] > 0
        assert meta["finish_reason"] == {"type": "length", "length": 6}


async def test_generate_streaming_cumulative_text():
    async with emulator_client() as c:
        r = await c.post("/generate", json={"input_ids": [1, 2, 3], "sampling_params": {"max_new_tokens": 4},
                                            "stream": True})
        ev = sse_events(r.text)
        assert ev[-1] == "[DONE]"
        assert ev[-2]["meta_info"]["completion_tokens"] == 4 and ev[-2]["meta_info"]["finish_reason"]
        assert ev[-2]["text"].startswith(ev[0]["text"])


async def test_chat_non_streaming_usage_and_max_completion_tokens():
    async with emulator_client() as c:
        body = (await c.post("/v1/chat/completions", json={**CHAT, "max_completion_tokens": 3})).json()
        assert body["object"] == "chat.completion"
        assert body["choices"][0]["message"]["role"] == "assistant"
        assert body["choices"][0]["finish_reason"] == "length"
        u = body["usage"]
        assert u["completion_tokens"] == 3 and u["total_tokens"] == u["prompt_tokens"] + 3
        assert u["prompt_tokens"] > 5  # chat template + content, counted by the Qwen tokenizer


async def test_chat_streaming_with_usage():
    async with emulator_client() as c:
        r = await c.post("/v1/chat/completions",
                         json={**CHAT, "stream": True, "stream_options": {"include_usage": True}, "ignore_eos": True})
        assert r.headers["content-type"].startswith("text/event-stream")
        ev = sse_events(r.text)
        assert ev[-1] == "[DONE]"
        assert ev[0]["choices"][0]["delta"]["role"] == "assistant"
        content = "".join(e["choices"][0]["delta"].get("content", "") for e in ev[:-2] if e["choices"])
        assert content.strip()
        assert ev[-3]["choices"][0]["finish_reason"] == "length"
        assert ev[-2]["choices"] == [] and ev[-2]["usage"]["completion_tokens"] == 5


async def test_completions_and_stop_string():
    async with emulator_client() as c:
        base = (await c.post("/v1/completions", json={"prompt": "Once", "max_tokens": 30, "seed": 7})).json()
        text = base["choices"][0]["text"]
        assert base["object"] == "text_completion" and base["usage"]["completion_tokens"] == 30
        stop = text.split()[3]
        r = (await c.post("/v1/completions", json={"prompt": "Once", "max_tokens": 30, "seed": 7,
                                                     "stop": [" " + stop]})).json()
        ch = r["choices"][0]
        assert ch["finish_reason"] == "stop" and ch["matched_stop"] == " " + stop
        assert ch["text"] == text[: text.index(" " + stop)]
        assert r["usage"]["completion_tokens"] < 30


@pytest.mark.parametrize("path,body,needle", [
    ("/generate", b"{not json", "malformed JSON"),
    ("/v1/chat/completions", b'{"model": "m"}', "messages"),
    ("/v1/completions", b'{"model": "m"}', "prompt"),
    ("/generate", b'{"sampling_params": {}}', "text or input_ids"),
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "x"}], "temperature": -1}', "temperature"),
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "x"}], "top_p": 1.5}', "top_p"),
    ("/v1/completions", b'{"prompt": "x", "max_tokens": "ten"}', "max_tokens"),
    ("/v1/completions", b'{"prompt": "x", "max_tokens": 40960}', "context length"),
    ("/generate", b'{"text": "x", "sampling_params": {"top_k": 0}}', "top_k"),
])
async def test_bad_requests_get_4xx_and_server_keeps_serving(path, body, needle):
    async with emulator_client() as c:
        r = await c.post(path, content=body, headers={"content-type": "application/json"})
        assert r.status_code == 400
        err = r.json()
        msg = err["message"] if "message" in err else err["error"]["message"]
        assert needle in msg
        ok = await c.post("/v1/chat/completions", json=CHAT)
        assert ok.status_code == 200


async def test_over_long_context_with_context_length_flag():
    async with emulator_client("--context-length", "64") as c:
        r = await c.post("/generate", json={"input_ids": list(range(100)), "sampling_params": {"max_new_tokens": 1}})
        assert r.status_code == 400 and "context length" in r.json()["error"]["message"]


async def test_metrics_sglang_names_and_labels():
    async with emulator_client() as c:
        await c.post("/v1/chat/completions", json=CHAT)
        text = (await c.get("/metrics")).text
        for name in ("sglang:num_running_reqs", "sglang:num_queue_reqs", "sglang:token_usage", "sglang:gen_throughput",
                     "sglang:prompt_tokens_total", "sglang:generation_tokens_total",
                     "sglang:time_to_first_token_seconds_bucket", "sglang:inter_token_latency_seconds_bucket",
                     "sglang:e2e_request_latency_seconds_bucket"):
            assert name in text, name
        assert 'engine_type="unified"' in text
        assert 'sglang:generation_tokens_total{model_name="/models/Qwen3-32B/"} 5.0' in text


async def test_metrics_404_without_enable_metrics():
    from pdlab.emulator.cli import parse
    from pdlab.emulator.server import create_app

    app = create_app(parse(["--model-path", "/models/Qwen3-32B/", "--tp", "2"]))
    import httpx

    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://e") as c:
            assert (await c.get("/metrics")).status_code == 404
