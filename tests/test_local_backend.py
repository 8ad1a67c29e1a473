"""Local backend: topology as processes behind the real sglang-router; teardown, cleanup, resource sense."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest

from pdlab.core.errors import DeployError, ResourceError
from pdlab.deploy import local as L
from pdlab.deploy.local import LocalBackend, LocalDeployment, capacity, cleanup_local
from pdlab.experiment.loader import experiment_from_dict

WORKER_CMD = None  # the real `python -m pdlab.emulator`; tests may swap the worker command


def _exp(kind: str = "pd", **extra):
    topo = ({"kind": "pd", "ratio": "2P1D", "prefill": {"tp": 2}, "decode": {"tp": 2}} if kind == "pd"
            else {"kind": "colocated", "worker": {"replicas": 3, "tp": 2}})
    doc = {"name": "sglang-pd", "model": {"name": "Qwen3-32B", "path": "/models/Qwen3-32B/"},
           "gpu": {"type": "L20"}, "topology": topo, "emulator": {"time_scale": 0.05},
           "backend": {"ready_timeout_s": 30}}
    doc.update(extra)
    return experiment_from_dict(doc)


@pytest.fixture(autouse=True)
def state_dir(tmp_path, monkeypatch):
    d = tmp_path / "state"
    monkeypatch.setenv(L.STATE_ENV, str(d))
    return d


def _alive(pid: int) -> bool:
    return L.proc_start_time(pid) is not None


def _gone(pids: list[int], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(_alive(p) for p in pids):
            return True
        time.sleep(0.05)
    return False


def _stream_chat(url: str, max_tokens: int = 8, timeout: float = 20.0) -> tuple[str, bool]:
    """(content, saw [DONE]) of one streamed chat completion."""
    body = {"model": "Qwen3-32B", "messages": [{"role": "user", "content": "hello there"}],
            "max_tokens": max_tokens, "stream": True}
    text, done = "", False
    with httpx.Client(timeout=timeout, trust_env=False) as c, \
            c.stream("POST", url + "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if line == "data: [DONE]":
                done = True
            elif line.startswith("data: "):
                for ch in json.loads(line[6:]).get("choices", []):
                    text += (ch.get("delta") or {}).get("content") or ""
    return text, done


# --------------------------------------------------------------------------- fast


def test_capacity_counts_instances_not_tp_and_refuses_oversized():
    cap = capacity()
    assert cap >= L.MIN_CAPACITY
    ok = _exp()
    assert L.worker_processes(L.build(ok)) == 3  # 2P1D at TP2: three processes, not six
    L.check_capacity(ok)
    big = _exp("colocated", topology={"kind": "colocated", "worker": {"replicas": cap + 1, "tp": 1}},
               gpu={"type": "L20", "nodes": cap + 1})
    with pytest.raises(ResourceError, match=r"backend\.kind=k8s") as e:
        LocalBackend().deploy(big)
    assert str(cap + 1) in str(e.value) and "replicas" in str(e.value)


def test_worker_command_carries_emulator_flags(tmp_path):
    exp = _exp(emulator={"time_scale": 0.05, "step_overhead_ms": 2.5, "link": "erdma"})
    flags = L._emulator_flags(exp, [sys.executable, "-m", "pdlab.emulator"])
    assert flags[:6] == ["--emu-gpu", "L20", "--emu-link", "erdma", "--emu-time-scale", "0.05"]
    assert flags[6:] == ["--emu-step-overhead-ms", "2.5"]
    assert L._emulator_flags(exp, [sys.executable, "-m", "sglang.launch_server"]) == []


def test_sglang_engine_missing_is_a_clear_error():
    if importlib.util.find_spec("sglang") is not None:
        pytest.skip("sglang is installed here")
    with pytest.raises(DeployError, match="sglang package is not installed"):
        LocalBackend().deploy(_exp(backend={"engine": "sglang"}))


def test_cleanup_spares_unrelated_process_with_recorded_pid(state_dir):
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"], start_new_session=True)
    try:
        state_dir.mkdir(parents=True)
        rec = {"name": "x-prefill-0", "role": "prefill", "pid": other.pid, "pgid": other.pid,
               "start_time": L.proc_start_time(other.pid) - 1, "cmd": L.proc_cmdline(other.pid)}
        (state_dir / "x-1.json").write_text(json.dumps(
            {"run_id": "x-1", "experiment": "x", "owner": {"pid": 1, "start_time": -1}, "processes": [rec]}))
        removed = cleanup_local()
        assert removed == [f"state file {state_dir / 'x-1.json'}"]
        assert other.poll() is None and not (state_dir / "x-1.json").exists()
    finally:
        other.kill()
        other.wait()


# --------------------------------------------------------------------------- slow: real processes


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["pd", "colocated"])
def test_deploy_streams_through_router_and_teardown_leaves_nothing(kind, tmp_path, state_dir):
    exp = _exp(kind)
    with LocalBackend(worker_cmd=WORKER_CMD).deploy(exp, run_dir=tmp_path / "run") as dep:
        assert isinstance(dep, LocalDeployment)
        names = [e.name for e in dep.endpoints]
        if kind == "pd":
            assert names == ["sglang-pd-scheduler-0", "sglang-pd-prefill-0", "sglang-pd-prefill-1",
                             "sglang-pd-decode-0"]
            assert all(e.bootstrap_port for e in dep.workers("prefill"))
        else:
            assert names == ["sglang-pd-scheduler-0"] + [f"sglang-pd-worker-{i}" for i in range(3)]
        text, done = _stream_chat(dep.router_url)
        assert text.strip() and done
        with httpx.Client(trust_env=False, timeout=5) as c:
            for e in dep.endpoints:
                assert c.get(e.metrics_url).status_code == 200, e
        pids = [e.pid for e in dep.endpoints]
        assert all(_alive(p) for p in pids)
        state = json.loads(dep.state_file.read_text())
        assert {p["pid"] for p in state["processes"]} == set(pids)
        assert (tmp_path / "run" / "logs" / "sglang-pd-scheduler-0.log").exists()
        assert "sglang-pd-scheduler-0" in dep.describe()
    assert _gone(pids)
    assert not list(state_dir.glob("*.json"))
    dep.teardown()  # idempotent


@pytest.mark.slow
def test_worker_killed_mid_stream_gives_client_error(tmp_path):
    with LocalBackend(worker_cmd=WORKER_CMD).deploy(_exp(), run_dir=tmp_path) as dep:
        pids = [e.pid for e in dep.endpoints]
        decode = dep.workers("decode")[0]
        body = {"model": "Qwen3-32B", "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 4000, "stream": True}
        t0, got, done, error = time.monotonic(), 0, False, None
        try:
            with httpx.Client(timeout=10, trust_env=False) as c, \
                    c.stream("POST", dep.router_url + "/v1/chat/completions", json=body) as r:
                for line in r.iter_lines():
                    if line.startswith("data: ") and line != "data: [DONE]":
                        got += 1
                        if '"error"' in line:
                            error = line
                        if got == 2:
                            os.killpg(decode.pid, signal.SIGKILL)
                    done = done or line == "data: [DONE]"
        except httpx.HTTPError as e:
            error = repr(e)
        assert got >= 2
        assert error is not None or not done, "the stream completed normally although its worker died"
        assert time.monotonic() - t0 < 10, "the client hung"
    assert _gone(pids)


@pytest.mark.slow
def test_crashed_owner_then_cleanup_kills_orphans_only(tmp_path, state_dir):
    script = textwrap.dedent(f"""
        import sys, threading, time
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_local_backend import _exp, WORKER_CMD
        from pdlab.deploy.local import LocalBackend
        # started off the main thread, the processes get no parent-death signal: orphans that only cleanup ends
        box = {{}}
        t = threading.Thread(target=lambda: box.setdefault("dep", LocalBackend(worker_cmd=WORKER_CMD).deploy(
            _exp(), run_dir={str(tmp_path / 'run')!r})))
        t.start()
        t.join()
        print("READY", flush=True)
        time.sleep(60)
    """)
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"], start_new_session=True)
    owner = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                             env={**os.environ, L.STATE_ENV: str(state_dir)})
    try:
        assert owner.stdout.readline().strip() == "READY"
        [state_file] = state_dir.glob("*.json")
        pids = [p["pid"] for p in json.loads(state_file.read_text())["processes"]]
        assert len(pids) == 4
        assert cleanup_local() == []  # owner alive: a live deployment is not touched
        owner.kill()
        owner.wait()
        assert all(_alive(p) for p in pids)  # orphans survive their owner
        assert cleanup_local(experiment="other-exp") == []
        removed = cleanup_local()
        assert len(removed) == 5 and removed[-1] == f"state file {state_file}"
        assert _gone(pids)
        assert bystander.poll() is None
        assert cleanup_local() == []
    finally:
        for p in (owner, bystander):
            p.kill()
            p.wait()
        cleanup_local()


@pytest.mark.slow
def test_worker_that_fails_to_start_gives_deploy_error_with_log_tail(tmp_path, state_dir):
    bad = [sys.executable, "-c", "import sys; print('error: unrecognized arguments: --bogus'); sys.exit(3)"]
    with pytest.raises(DeployError) as e:
        LocalBackend(worker_cmd=bad).deploy(_exp(), run_dir=tmp_path)
    msg = str(e.value)
    assert re.search(r"sglang-pd-(prefill|decode)-\d exited with code 3", msg), msg
    assert "unrecognized arguments: --bogus" in msg
    assert not list(state_dir.glob("*.json"))


@pytest.mark.slow
def test_scale_decode_up_and_down(tmp_path):
    with LocalBackend(worker_cmd=WORKER_CMD).deploy(_exp(), run_dir=tmp_path) as dep:
        dep.scale("decode", 2)
        assert [e.name for e in dep.workers("decode")] == ["sglang-pd-decode-0", "sglang-pd-decode-1"]
        assert dep.topology.label == "2P2D (TP2)"
        with pytest.raises(ResourceError):
            dep.scale("prefill", capacity())
        with httpx.Client(trust_env=False) as c:
            assert len(c.get(dep.router_url + "/workers").json()["workers"]) == 4
        old = dep.workers("decode")[1].pid
        dep.scale("decode", 1)
        assert [e.name for e in dep.workers("decode")] == ["sglang-pd-decode-0"]
        assert _gone([old])
        text, done = _stream_chat(dep.router_url)
        assert text and done
        # a router without the worker API: scale falls back to restarting it on the same port
        router_url, router_pid = dep.router_url, dep.endpoints[0].pid

        def refuse(p):
            raise DeployError("no worker API")

        dep._router_add = refuse
        dep.scale("decode", 2)
        assert dep.router_url == router_url and dep.endpoints[0].pid != router_pid and _gone([router_pid])
        with httpx.Client(trust_env=False) as c:
            assert len(c.get(dep.router_url + "/workers").json()["workers"]) == 4


@pytest.mark.slow
@pytest.mark.parametrize("sig,ignore_sigint", [(signal.SIGINT, False), (signal.SIGTERM, False), (signal.SIGINT, True)],
                         ids=["sigint", "sigterm", "sigint-in-background-shell"])
def test_deploy_and_hold_prints_endpoint_and_tears_down_on_signal(sig, ignore_sigint, tmp_path, state_dir):
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_local_backend import _exp, WORKER_CMD
        from pdlab.deploy.hold import deploy_and_hold
        from pdlab.deploy.local import LocalBackend
        deploy_and_hold(_exp(), run_dir={str(tmp_path)!r}, backend=LocalBackend(worker_cmd=WORKER_CMD),
                        out=lambda s: print(s, flush=True))
    """)
    # a shell starts `pdlab deploy … &` with SIGINT ignored; deploy must still stop on it
    preexec = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if ignore_sigint else None
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env={**os.environ, L.STATE_ENV: str(state_dir)}, preexec_fn=preexec)
    try:
        lines = []
        for _ in range(40):
            line = proc.stdout.readline()
            lines.append(line)
            if not line or line.startswith("Ctrl-C"):
                break
        out = "".join(lines)
        router = re.search(r"router: (http://127\.0\.0\.1:\d+)", out).group(1)
        assert "sglang-pd-decode-0" in out and "curl -sN " + router + "/v1/chat/completions" in out
        curl = re.search(r"-d '(.*)'", out).group(1)
        assert json.loads(curl)["model"] == "Qwen3-32B"
        text, done = _stream_chat(router)
        assert text and done
        [state_file] = state_dir.glob("*.json")
        pids = [p["pid"] for p in json.loads(state_file.read_text())["processes"]]
        proc.send_signal(sig)
        assert proc.wait(timeout=15) == 0  # SIGINT and SIGTERM alike: a requested stop, torn down cleanly
        assert "stopping…\ntorn down." in proc.stdout.read()
        assert _gone(pids) and not state_file.exists()
    finally:
        proc.kill()
        proc.wait()
        cleanup_local()


@pytest.mark.slow
def test_interpreter_exit_without_teardown_still_stops_everything(tmp_path, state_dir):
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_local_backend import _exp, WORKER_CMD
        from pdlab.deploy.local import LocalBackend
        dep = LocalBackend(worker_cmd=WORKER_CMD).deploy(_exp("colocated"), run_dir={str(tmp_path)!r})
        print(" ".join(str(e.pid) for e in dep.endpoints), flush=True)
    """)  # no `with`, no teardown: like a notebook kernel that exits
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                         env={**os.environ, L.STATE_ENV: str(state_dir)})
    assert out.returncode == 0, out.stderr
    pids = [int(p) for p in out.stdout.split()]
    assert len(pids) == 4 and _gone(pids)
    assert not list(state_dir.glob("*.json"))


@pytest.mark.slow
def test_bad_engine_arg_fails_deploy_with_emulator_log(tmp_path, state_dir):
    with pytest.raises(DeployError) as e:
        LocalBackend().deploy(_exp(engine_args={"no-such-flag": 1}), run_dir=tmp_path)
    assert re.search(r"sglang-pd-\w+-\d exited with code [1-9]", str(e.value))
    assert "no-such-flag" in str(e.value)
    assert not list(state_dir.glob("*.json"))
