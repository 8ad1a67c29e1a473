"""Prometheus as the metrics source: the query_range → long-format mapping, errors, and a real Prometheus
scraping local emulated workers agreeing with the direct scraper."""

import json
import time

import httpx
import pytest
from _prom_helpers import needs_prometheus, prometheus

from pdlab.core.fsutil import free_port
from pdlab.core.schema import SERVER_METRIC_COLUMNS as COLUMNS
from pdlab.measure.prometheus import PrometheusError, PrometheusSource, series_frame, write_file_sd
from pdlab.measure.scrape import Scraper


def test_series_frame_drops_target_labels_and_restores_exported_ones():
    result = [
        {"metric": {"__name__": "up", "pod": "g-decode-0", "namespace": "ns", "job": "pm", "endpoint": "http"},
         "values": [[100.0, "1"], [101.0, "1"]]},
        {"metric": {"__name__": "sglang:num_running_reqs", "pod": "g-decode-0", "namespace": "ns", "job": "pm",
                    "endpoint": "http", "exported_endpoint": "chat", "model_name": "m"},
         "values": [[101.0, "3"]]},
        {"metric": {"__name__": "scrape_duration_seconds", "pod": "g-decode-0"}, "values": [[101.0, "0.01"]]},
        {"metric": {"__name__": "sglang:num_running_reqs", "pod": "other-pod"}, "values": [[101.0, "9"]]},
    ]
    df = series_frame(result, {"g-decode-0": "decode"}, t0_unix=100.0)
    assert list(df.columns) == COLUMNS
    up = df[df.metric == "pdlab:scrape_up"]
    assert up["t"].tolist() == [0.0, 1.0] and (up["labels"] == "{}").all()
    run = df[df.metric == "sglang:num_running_reqs"].iloc[0]
    assert json.loads(run["labels"]) == {"endpoint": "chat", "model_name": "m"}
    assert run["name"] == "g-decode-0" and run["role"] == "decode" and run["value"] == 3.0
    assert set(df["metric"]) == {"pdlab:scrape_up", "sglang:num_running_reqs"}  # no scrape_*, no other pods


def test_selector_matches_the_pods_by_label():
    src = PrometheusSource("http://p:9090/", {"g-decode-0": "decode", "g.x-1": "prefill"}, namespace="ns")
    assert src.selector("up") == 'up{pod=~"g-decode-0|g\\\\.x-1",namespace="ns"}'
    arms = PrometheusSource("http://p:9090", {"g-decode-0": "decode"}, namespace="ns", pod_label="pod_name")
    assert arms.selector() == '{pod_name=~"g-decode-0",namespace="ns"}'
    df = series_frame([{"metric": {"__name__": "up", "pod_name": "g-decode-0"}, "values": [[1.0, "1"]]}],
                      arms.targets, 0.0, pod_label="pod_name")
    assert df["name"].tolist() == ["g-decode-0"]


def test_a_prometheus_url_that_does_not_answer_is_a_clear_error():
    src = PrometheusSource(f"http://127.0.0.1:{free_port()}", {"p": "decode"}, timeout_s=2,
                           field="backend.k8s.prometheus")
    with pytest.raises(PrometheusError, match=r"backend.k8s.prometheus: http://127.0.0.1:\d+ does not answer"):
        src.check()


@pytest.mark.slow
@needs_prometheus
def test_prometheus_and_direct_scrape_give_the_same_series(tmp_path):
    from pdlab.deploy.local import LocalBackend
    from pdlab.experiment.loader import experiment_from_dict

    exp = experiment_from_dict({"name": "prom", "model": {"name": "Qwen3-8B", "path": "/models/Qwen3-8B/"},
                                "topology": {"kind": "pd", "prefill": {"replicas": 1, "tp": 1},
                                             "decode": {"replicas": 1, "tp": 1}},
                                "emulator": {"time_scale": 0.05}})
    with prometheus(tmp_path) as prom, LocalBackend().deploy(exp, run_dir=tmp_path / "run") as dep:
        t0 = time.time()
        eps = [e for e in dep.endpoints if e.metrics_url]
        write_file_sd(prom.file_sd, eps)
        src = PrometheusSource(prom.url, {e.name: e.role for e in eps}, step_s=1.0)
        src.check()
        src.wait_for_targets(30)
        direct = Scraper(eps, interval_s=1.0).start()
        with httpx.Client(timeout=30, trust_env=False) as c:
            for _ in range(6):
                r = c.post(dep.router_url + "/v1/chat/completions", json={
                    "model": "Qwen3-8B", "messages": [{"role": "user", "content": "hi " * 50}], "max_tokens": 8})
                assert r.status_code == 200
        time.sleep(3.0)  # idle: both sources see the final counters
        direct.stop()
        via_prom = src.frame(t0, time.time(), t0_unix=t0)
    d = direct.frame()
    key = ["name", "metric", "labels"]
    series_d = set(map(tuple, d[key].drop_duplicates().to_numpy()))
    series_p = set(map(tuple, via_prom[key].drop_duplicates().to_numpy()))
    assert series_d == series_p
    assert {"sglang:num_requests_total", "sglang:time_to_first_token_seconds_bucket"} <= set(d["metric"])
    last_d = d.sort_values("time").groupby(key)["value"].last()
    last_p = via_prom.sort_values("time").groupby(key)["value"].last()
    assert (last_d - last_p.reindex(last_d.index)).abs().max() == 0.0
    done = last_p.xs("sglang:num_requests_total", level="metric")
    assert done.max() == 6  # the counter saw every request


def test_pod_monitor_selects_the_groups_pods_and_scrapes_workers_and_router(capsys):
    from pathlib import Path

    import yaml

    from pdlab.cli import main

    params = Path(__file__).resolve().parents[1] / "params" / "demo-local.yaml"
    assert main(["manifests", str(params), "--monitoring"]) == 0
    (pm,) = [d for d in yaml.safe_load_all(capsys.readouterr().out) if d]  # only the PodMonitor
    assert pm["kind"] == "PodMonitor"
    assert main(["manifests", str(params)]) == 0
    rbg = next(d for d in yaml.safe_load_all(capsys.readouterr().out) if d and d["kind"] == "RoleBasedGroup")
    assert pm["apiVersion"] == "monitoring.coreos.com/v1"
    assert pm["metadata"]["namespace"] == rbg["metadata"]["namespace"]
    assert pm["spec"]["selector"]["matchLabels"] == {"pdlab.io/experiment": rbg["metadata"]["name"]}
    assert pm["spec"]["selector"]["matchExpressions"] == [{"key": "pdlab.io/role", "operator": "Exists"}]
    ports = {e["port"] for e in pm["spec"]["podMetricsEndpoints"]}
    named = {p["name"] for r in rbg["spec"]["roles"] for c in r["template"]["spec"]["containers"] for p in c["ports"]}
    assert ports == {"http", "metrics"} and ports <= named  # every scraped port exists on the pods
    worker_ep = next(e for e in pm["spec"]["podMetricsEndpoints"] if e["port"] == "http")
    assert {"regex": "scheduler", "action": "drop"}.items() <= worker_ep["relabelings"][0].items()


def _tiny(**metrics) -> object:
    from pdlab.experiment.loader import experiment_from_dict

    return experiment_from_dict({
        "name": "promrun", "model": {"name": "Qwen3-8B", "path": "/models/Qwen3-8B/"},
        "topology": {"kind": "pd", "prefill": {"replicas": 1, "tp": 1}, "decode": {"replicas": 1, "tp": 1}},
        "emulator": {"time_scale": 0.05}, "metrics": metrics,
        "workload": {"dataset": {"input_len": 128, "output_len": 8}, "rates": [8], "duration_s": None,
                     "num_prompts": 6, "warmup": 1, "timeout_s": 30}})


@pytest.mark.slow
@needs_prometheus
def test_run_reads_server_metrics_from_prometheus(tmp_path):
    from pdlab.analysis.results import load_run
    from pdlab.measure.run import run_experiment

    with prometheus(tmp_path) as prom:
        exp = _tiny(prometheus=prom.url, file_sd=str(prom.file_sd), step_s=1.0, wait_s=30)
        run = load_run(run_experiment(exp, results=tmp_path / "results", run_name="p", progress=False))
    assert run.complete, run.incomplete
    assert run.provenance["metrics_source"]["kind"] == "prometheus"
    sm = run.server_metrics
    assert {"prefill", "decode"} <= set(sm["role"])
    done = sm[(sm.metric == "sglang:num_requests_total")].groupby("name")["value"].max()
    assert done.sum() >= 6  # the workers' counters, read back from Prometheus, saw the requests
    assert (sm[sm.metric == "pdlab:scrape_up"]["value"] == 1.0).any()


@pytest.mark.slow
@needs_prometheus
def test_prometheus_without_the_series_stops_the_run_clearly_and_tears_down(tmp_path):
    from pdlab.analysis.results import load_run
    from pdlab.deploy.local import cleanup_local
    from pdlab.measure.run import run_experiment

    with prometheus(tmp_path) as prom:  # up, but nobody tells it about the workers
        exp = _tiny(prometheus=prom.url, step_s=1.0, wait_s=3)
        with pytest.raises(PrometheusError, match=r"has no series for pod\(s\) promrun-"):
            run_experiment(exp, results=tmp_path / "results", run_name="p", progress=False)
    run = load_run(tmp_path / "results" / "promrun" / "p")
    assert not run.complete and "PrometheusError" in run.incomplete["reason"]
    assert cleanup_local(experiment="promrun") == []  # nothing left running


def test_prometheus_that_does_not_answer_fails_before_deploying(tmp_path):
    from pdlab.analysis.results import load_run
    from pdlab.measure.run import run_experiment

    exp = _tiny(prometheus=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(PrometheusError, match="metrics.prometheus: .* does not answer"):
        run_experiment(exp, results=tmp_path / "results", run_name="p", progress=False)
    run = load_run(tmp_path / "results" / "promrun" / "p")
    assert not run.complete and "router_url" not in run.provenance  # nothing was deployed
