"""Injected faults of the emulated worker, as a user (the load generator) sees them."""

import asyncio
import time

import httpx
import pytest
from _emulator_helpers import emulator_client, emulator_cmd, free_port, processes

from pdlab.emulator.cli import parse
from pdlab.measure.load import LoadClient
from pdlab.measure.load.datasets import Prompt

PROMPT = Prompt(0, " hello world", 2, 4)
GEN = {"text": "hello", "sampling_params": {"max_new_tokens": 3}}


async def test_error_rate_refuses_that_share_with_the_status():
    async with emulator_client("--emu-fault-error-rate", "0.5", "--emu-fault-error-status", "500") as c:
        codes = [(await c.post("/generate", json=GEN)).status_code for _ in range(40)]
        assert set(codes) == {200, 500} and 10 < codes.count(500) < 30
        r = await c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}]})
        while r.status_code == 200:
            r = await c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}]})
        assert r.json()["code"] == 500 and "injected fault" in r.json()["message"]


def test_error_rate_becomes_failed_records_with_the_error():
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with processes([emulator_cmd(port, "--emu-fault-error-rate", "1", "--emu-time-scale", "0.01")], [url + "/health"]):
        async def go():
            async with LoadClient(url, api="chat", timeout_s=10) as c:
                return await c.send(PROMPT, t_sched=0.0)
        rec = asyncio.run(go())
    assert not rec.ok and rec.status == 503 and "HTTP 503" in rec.error and "injected fault" in rec.error


async def test_stall_delays_the_first_token():
    async with emulator_client("--emu-fault-stall-at-s", "0", "--emu-fault-stall-s", "0.6") as c:
        t = time.monotonic()
        r = await c.post("/generate", json=GEN)
        assert r.status_code == 200 and time.monotonic() - t >= 0.55
        t = time.monotonic()
        await c.post("/generate", json=GEN)
        assert time.monotonic() - t < 0.3  # the stall is over


def test_crash_after_n_requests_cuts_the_stream_and_exits():
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = emulator_cmd(port, "--emu-fault-crash-after", "2", "--emu-time-scale", "0.01")
    with processes([cmd], [url + "/health"]):
        assert httpx.post(url + "/generate", json=GEN, timeout=5).status_code == 200
        with pytest.raises(httpx.HTTPError):
            httpx.post(url + "/generate", json=GEN, timeout=5)
        with pytest.raises(httpx.ConnectError):
            httpx.get(url + "/health", timeout=2)


def test_crash_at_time_exits_with_a_message():
    import subprocess

    port = free_port()
    p = subprocess.Popen(emulator_cmd(port, "--emu-fault-crash-at-s", "0.5"), stderr=subprocess.PIPE)
    try:
        assert p.wait(timeout=20) == 1
        assert b"injected crash (--emu-fault-crash-at-s 0.5)" in p.stderr.read()
    finally:
        if p.poll() is None:
            p.kill()


async def _pd(*prefill_flags: str):
    bport = free_port()
    body = {"input_ids": list(range(3000)), "sampling_params": {"max_new_tokens": 2}, "bootstrap_host": "127.0.0.1",
            "bootstrap_port": bport, "bootstrap_room": 5}
    async with (emulator_client("--disaggregation-mode", "prefill", "--disaggregation-bootstrap-port", str(bport),
                                "--emu-pd-timeout-s", "0.5", *prefill_flags) as p,
                emulator_client("--disaggregation-mode", "decode", "--emu-pd-timeout-s", "0.5") as d):
        return await asyncio.gather(p.post("/generate", json=body), d.post("/generate", json=body))


async def test_kv_transfer_failure_is_an_error_on_both_sides():
    pr, dr = await _pd("--emu-fault-kv-fail-rate", "1")
    assert dr.status_code == 500 and "KV transfer of bootstrap room 5 failed (injected fault)" in dr.text
    assert pr.status_code == 500


async def test_kv_transfer_timeout_times_out_the_decode():
    pr, dr = await _pd("--emu-fault-kv-timeout-rate", "1")
    assert dr.status_code == 500 and "KV for bootstrap room 5 did not arrive" in dr.text and "within 0.5 s" in dr.text


def test_bad_fault_flags_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        parse(["--model-path", "/models/Qwen3-32B/", "--emu-fault-error-status", "404"])
    assert e.value.code == 2 and "--emu-fault-error-status must be one of (500, 503)" in capsys.readouterr().err


async def test_prefill_refusal_fails_the_decode_at_once_instead_of_hanging():
    t = time.monotonic()
    pr, dr = await _pd("--emu-fault-error-rate", "1")
    assert pr.status_code == 503 and dr.status_code == 500
    assert "injected fault (--emu-fault-error-rate)" in dr.text and time.monotonic() - t < 0.4  # pd timeout: 0.5 s
