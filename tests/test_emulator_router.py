"""Behind the real sglang-router: PD (2 prefill + 1 decode) and colocated (3 workers), streaming chat."""

import sys

import httpx
import pytest
from _emulator_helpers import emulator_cmd, free_port, processes, sse_events

pytestmark = pytest.mark.slow

SCALE = ["--emu-time-scale", "0.01"]


def router_cmd(port: int, *args: str) -> list[str]:
    return [sys.executable, "-m", "sglang_router.launch_router", *args, "--host", "127.0.0.1", "--port", str(port),
            "--log-level", "warn"]


def stream_chats(router: int, n: int = 4) -> None:
    for i in range(n):
        body = {"model": "qwen", "messages": [{"role": "user", "content": f"question {i} " * 50}],
                "max_tokens": 6, "stream": True, "stream_options": {"include_usage": True}}
        r = httpx.post(f"http://127.0.0.1:{router}/v1/chat/completions", json=body, timeout=20)
        assert r.status_code == 200, r.text
        ev = sse_events(r.text)
        assert ev[-1] == "[DONE]"
        usage = [e["usage"] for e in ev[:-1] if e.get("usage")]
        assert usage and usage[-1]["completion_tokens"] == 6
        text = "".join(e["choices"][0]["delta"].get("content") or "" for e in ev[:-1] if e["choices"])
        assert text.strip()
    r = httpx.post(f"http://127.0.0.1:{router}/generate",
                   json={"text": "hi", "sampling_params": {"max_new_tokens": 3}}, timeout=20)
    assert r.status_code == 200 and r.json()["meta_info"]["completion_tokens"] == 3


def test_pd_router_two_prefill_one_decode():
    p1, p2, d1, router = (free_port() for _ in range(4))
    b1, b2 = free_port(), free_port()
    cmds = [emulator_cmd(p1, "--disaggregation-mode", "prefill", "--disaggregation-bootstrap-port", str(b1), *SCALE),
            emulator_cmd(p2, "--disaggregation-mode", "prefill", "--disaggregation-bootstrap-port", str(b2), *SCALE),
            emulator_cmd(d1, "--disaggregation-mode", "decode", *SCALE)]
    with processes(cmds, [f"http://127.0.0.1:{p}/health" for p in (p1, p2, d1)]):
        rcmd = router_cmd(router, "--pd-disaggregation", "--prefill", f"http://127.0.0.1:{p1}", str(b1),
                          "--prefill", f"http://127.0.0.1:{p2}", str(b2), "--decode", f"http://127.0.0.1:{d1}",
                          "--policy", "round_robin")
        with processes([rcmd], [f"http://127.0.0.1:{router}/health"], timeout=20):
            stream_chats(router)
            m = httpx.get(f"http://127.0.0.1:{d1}/metrics").text
            assert 'engine_type="decode"' in m and "sglang:generation_tokens_total" in m


def test_colocated_router_three_workers():
    ports = [free_port() for _ in range(3)]
    router = free_port()
    with processes([emulator_cmd(p, *SCALE) for p in ports], [f"http://127.0.0.1:{p}/health" for p in ports]):
        rcmd = router_cmd(router, "--worker-urls", *[f"http://127.0.0.1:{p}" for p in ports], "--policy", "round_robin")
        with processes([rcmd], [f"http://127.0.0.1:{router}/health"], timeout=20):
            stream_chats(router, n=6)
            served = [httpx.get(f"http://127.0.0.1:{p}/emu_stats").json()["steps"] for p in ports]
            assert all(s > 0 for s in served), served
