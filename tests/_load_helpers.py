"""A minimal starlette streaming server for load-generator tests (OpenAI chat/completions + SGLang /generate).

Behaviour is picked per request by the `model` field (or `text` prefix for /generate):
  ok (default) · no-usage · status-400 · status-500 · truncate (drop the connection mid-stream) ·
  no-done (end without [DONE]) · slow (sleep 2 s before the first token) · error-event
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from pdlab.core.fsutil import free_port

TOKEN_GAP_S = 0.002


def _mode(body: dict) -> str:
    if "text" in body:
        t = body["text"]
        return t.split(":", 1)[0] if ":" in t[:20] else "ok"
    return body.get("model", "ok")


async def _stream(body: dict, api: str, request: Request):
    mode = _mode(body)
    n = body.get("max_tokens") or body.get("sampling_params", {}).get("max_new_tokens", 4)
    if mode == "slow":
        await asyncio.sleep(2.0)
    text = ""
    for i in range(n):
        if mode == "truncate" and i == 2:
            raise RuntimeError("simulated crash mid-stream")
        if mode == "error-event" and i == 1:
            yield b'data: {"object": "error", "message": "boom", "code": 500}\n\n'
            return
        piece = f" w{i}"
        text += piece
        if api == "chat":
            d = {"choices": [{"index": 0, "delta": {"content": piece}}]}
        elif api == "completions":
            d = {"choices": [{"index": 0, "text": piece}]}
        else:
            d = {"text": text, "meta_info": {"prompt_tokens": 7, "completion_tokens": i + 1}}
        yield b"data: " + json.dumps(d).encode() + b"\n\n"
        await asyncio.sleep(TOKEN_GAP_S)
    if api != "generate" and mode != "no-usage":
        u = {"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": n, "total_tokens": 7 + n}}
        yield b"data: " + json.dumps(u).encode() + b"\n\n"
    if mode != "no-done":
        yield b"data: [DONE]\n\n"


def _endpoint(api: str):
    async def handler(request: Request) -> Response:
        body = await request.json()
        mode = _mode(body)
        if mode.startswith("status-"):
            code = int(mode.split("-")[1])
            return JSONResponse({"error": {"message": f"simulated {code}"}}, status_code=code)
        return StreamingResponse(_stream(body, api, request), media_type="text/event-stream")
    return handler


METRICS_TEXT = """# HELP sglang:num_running_reqs The number of running requests.
# TYPE sglang:num_running_reqs gauge
sglang:num_running_reqs{model_name="m",engine_type="unified"} 3.0
# HELP sglang:prompt_tokens_total Number of prefill tokens processed.
# TYPE sglang:prompt_tokens_total counter
sglang:prompt_tokens_total{model_name="m"} 1234.0
# HELP sglang:time_to_first_token_seconds Histogram of time to first token in seconds.
# TYPE sglang:time_to_first_token_seconds histogram
sglang:time_to_first_token_seconds_bucket{le="0.1",model_name="m"} 2.0
sglang:time_to_first_token_seconds_bucket{le="+Inf",model_name="m"} 5.0
sglang:time_to_first_token_seconds_count{model_name="m"} 5.0
sglang:time_to_first_token_seconds_sum{model_name="m"} 1.5
"""


async def metrics(request: Request) -> Response:
    return PlainTextResponse(METRICS_TEXT)


async def health(request: Request) -> Response:
    return PlainTextResponse("ok")


def app() -> Starlette:
    return Starlette(routes=[
        Route("/v1/chat/completions", _endpoint("chat"), methods=["POST"]),
        Route("/v1/completions", _endpoint("completions"), methods=["POST"]),
        Route("/generate", _endpoint("generate"), methods=["POST"]),
        Route("/metrics", metrics), Route("/health", health),
    ])


@contextlib.contextmanager
def serve():
    """Run the test server in a thread; yields its base URL; stops it on exit."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app(), host="127.0.0.1", port=port, log_level="error",
                                           lifespan="off"))
    th = threading.Thread(target=server.run, daemon=True)
    th.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        th.join(5)
