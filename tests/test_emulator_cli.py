"""The emulator CLI: sglang.launch_server flags, inference from the model path, unknown flags."""

import subprocess
import sys

import pytest

from pdlab.core.errors import SpecError
from pdlab.emulator.cli import parse

SEED = ["--model-path", "/models/Qwen3-32B/", "--tp", "2", "--disaggregation-mode", "prefill",
        "--disaggregation-bootstrap-port", "34000", "--port", "8000", "--host", "127.0.0.1", "--enable-metrics"]


def test_seed_flags_infer_model_and_default_gpu():
    cfg = parse(SEED)
    e = cfg.engine
    assert e.model.name == "Qwen3-32B" and e.gpu.name == "L20" and e.tp == 2 and e.mode == "prefill"
    assert cfg.bootstrap_port == 34000 and cfg.port == 8000 and cfg.enable_metrics
    assert e.link.name == "erdma" and e.chunked_prefill_size == 4096 and e.kv_pool_tokens > 50_000


def test_all_rendered_flags_are_accepted():
    cfg = parse(SEED + ["--served-model-name", "qwen", "--chunked-prefill-size", "2048", "--mem-fraction-static",
                        "0.8", "--max-running-requests", "64", "--context-length", "8192", "--stream-interval", "2",
                        "--max-prefill-tokens", "8192", "--disaggregation-transfer-backend", "mooncake",
                        "--emu-gpu", "H20", "--emu-link-bw-gbps", "10", "--emu-step-overhead-ms", "1",
                        "--emu-time-scale", "0.5"])
    e = cfg.engine
    assert (e.chunked_prefill_size, e.max_running_requests, e.context_length) == (2048, 64, 8192)
    assert e.gpu.name == "H20" and e.link.bw_gbps == 10 and e.step_overhead_s == 0.001 and cfg.time_scale == 0.5


def test_model_from_config(tmp_path):
    cfg = tmp_path / "config.json"
    cfg.write_text('{"num_hidden_layers": 4, "hidden_size": 256, "num_attention_heads": 4, '
                   '"intermediate_size": 512, "vocab_size": 1000}')
    assert parse(["--model-path", str(tmp_path)]).engine.model.head_dim == 64
    assert parse(["--model-path", "/x", "--emu-model-config", str(cfg)]).engine.model.num_hidden_layers == 4


def test_unknown_model_is_a_clear_error():
    with pytest.raises(SpecError, match="did you mean 'Qwen3-32B'"):
        parse(["--model-path", "/models/Qwen3-23B"])


def test_unknown_flag_exits_2_naming_closest():
    r = subprocess.run([sys.executable, "-m", "pdlab.emulator", *SEED, "--chunked-prefil-size", "8"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "did you mean --chunked-prefill-size" in r.stderr
