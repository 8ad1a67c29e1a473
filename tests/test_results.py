"""Results store (atomic summary, loaders) and run_experiment with a fake live deployment."""

import json
import time

import pandas as pd
import pytest
from _load_helpers import serve

from pdlab.analysis.results import load_run, load_sweep
from pdlab.analysis.summary_table import format_summary, print_summary
from pdlab.core.errors import PdlabError
from pdlab.deploy.base import Deployment, Endpoint
from pdlab.experiment.loader import experiment_from_dict
from pdlab.measure.run import run_experiment
from pdlab.measure.writer import RunWriter


class FakeDeployment(Deployment):
    """A 'deployment' that is just the test server (router and one worker)."""

    def __init__(self, url):
        self.url = url
        self.torn_down = False

    @property
    def router_url(self):
        return self.url

    @property
    def endpoints(self):
        return [Endpoint("scheduler", "router", self.url, self.url + "/metrics"),
                Endpoint("worker", "worker-0", self.url, self.url + "/metrics", pid=123)]

    def wait_ready(self, timeout=None):
        pass

    def logs(self, name, tail=100):
        return f"log of {name}\n"

    def scale(self, role, replicas):
        raise NotImplementedError

    def teardown(self):
        self.torn_down = True


def exp(**workload):
    w = {"dataset": {"input_len": 16, "output_len": 3}, "arrival": "constant", "rates": [20, 40],
         "duration_s": None, "num_prompts": 10, "warmup": 1}
    w.update(workload)
    return experiment_from_dict({"name": "t", "topology": {"kind": "colocated", "worker": {"replicas": 2, "tp": 2}},
                                 "workload": w, "arm": "colo", "labels": {"arm": "colo", "repeat": "1", "note": "x"},
                                 "storage": {"oss": {"bucket": "b"}}})


@pytest.fixture(scope="module")
def url():
    with serve() as u:
        yield u


def test_run_experiment_complete_and_loaders(url, tmp_path, capsys):
    dep = FakeDeployment(url)
    rd = run_experiment(exp(), results=tmp_path, sweep="s1", run_name="r1", progress=False, deployment=dep)
    assert rd == tmp_path / "s1" / "r1" and not dep.torn_down  # a passed-in deployment is not torn down
    for f in ("params.yaml", "manifests.yaml", "provenance.json", "requests.parquet", "server_metrics.parquet",
              "summary.json"):
        assert (rd / f).exists(), f
    assert not (rd / "incomplete.json").exists() and not (rd / ".requests.parts").exists()
    prov = json.loads((rd / "provenance.json").read_text())
    assert prov["pdlab_version"] and prov["started_at"] and prov["finished_at"] and "git_commit" in prov
    assert "processes" in (rd / "manifests.yaml").read_text()
    run = load_run(rd)
    assert run.complete and len(run.summary) == 2 and len(run.requests) == 22
    assert {"ttft_ms", "tpot_ms", "e2e_ms", "lag_ms"} <= set(run.requests.columns)
    assert run.summary["completed"].tolist() == [10, 10]
    assert run.summary["gpus"].tolist() == [4, 4]
    assert set(run.server_metrics["name"]) == {"router", "worker-0"}
    assert run.params["storage"]["oss"]["bucket"] == "b"
    # the second level uses different prompts (its own range of the seeded dataset)
    assert set(run.requests[run.requests.level == 0].req_id).isdisjoint(run.requests[run.requests.level == 1].req_id)
    text = format_summary(rd)
    assert "r1" in text and "TTFT p50" in text and len(text.splitlines()) >= 4
    print_summary(rd)
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(rd)
    with pytest.raises(PdlabError, match="already holds a complete run"):
        run_experiment(exp(), results=tmp_path, sweep="s1", run_name="r1", progress=False, deployment=dep)

    # a second run (PD arm) and load_sweep across both
    pd_exp = experiment_from_dict({"name": "t", "topology": {"kind": "pd", "ratio": "1P1D"}, "workload": {
        "dataset": {"input_len": 16, "output_len": 3}, "rates": [30], "duration_s": None, "num_prompts": 5}})
    run_experiment(pd_exp, results=tmp_path, sweep="s1", run_name="r2", progress=False, deployment=dep)
    df = load_sweep(tmp_path / "s1")
    assert len(df) == 3
    r1 = df[df.run == "r1"]
    assert r1["arm"].tolist() == ["colo", "colo"] and r1["repeat"].tolist() == [1, 1]
    assert r1["ratio"].tolist() == ["colocated-2x"] * 2 and r1["label_note"].tolist() == ["x", "x"]
    assert r1["rate"].tolist() == [20.0, 40.0] and r1["gpus"].tolist() == [4, 4]
    r2 = df[df.run == "r2"].iloc[0]
    assert (r2["arm"], r2["topology_kind"], r2["prefill"], r2["decode"], r2["gpus"]) == ("1P1D (TP2)", "pd", 1, 1, 4)
    assert r2["ratio"] == "1P1D" and json.loads((tmp_path / "s1" / "r2" / "summary.json").read_text())["arm"]["gpus"] == 4
    assert pd.api.types.is_float_dtype(df["ttft_p99_ms"]) and df["completed"].tolist() == [10, 10, 5]


def test_crash_keeps_partial_results(url, tmp_path, monkeypatch):
    import pdlab.measure.run as runmod

    real = runmod.run_level_sync
    calls = []

    def flaky(*a, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(runmod, "run_level_sync", flaky)
    dep = FakeDeployment(url)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(exp(), results=tmp_path, sweep="s", run_name="crash", progress=False, deployment=dep)
    rd = tmp_path / "s" / "crash"
    assert not (rd / "summary.json").exists()
    inc = json.loads((rd / "incomplete.json").read_text())
    assert inc["reason"] == "interrupted (Ctrl-C)" and inc["levels_completed"] == 1 and inc["requests_saved"] == 11
    run = load_run(rd)
    assert not run.complete and len(run.requests) == 11 and len(run.summary) == 1  # computed from the records
    assert "INCOMPLETE" in format_summary(rd)
    assert load_sweep(tmp_path / "s").empty
    assert len(load_sweep(tmp_path / "s", include_incomplete=True)) == 1
    # a re-run of the crashed run replaces it
    monkeypatch.setattr(runmod, "run_level_sync", real)
    run_experiment(exp(), results=tmp_path, sweep="s", run_name="crash", progress=False, deployment=dep)
    assert load_run(rd).complete and not (rd / "incomplete.json").exists()


def test_deploy_failure_is_recorded_and_owned_deployment_torn_down(url, tmp_path, monkeypatch):
    import pdlab.deploy.registry as registry

    dep = FakeDeployment(url)

    class Boom(Exception):
        pass

    class FakeBackend:
        def deploy(self, e, *, run_dir=None, run_id=None, wait=True):
            return dep

    monkeypatch.setattr(registry, "get_backend", lambda e: FakeBackend())
    import pdlab.measure.run as runmod

    monkeypatch.setattr(runmod, "Scraper", lambda *a, **k: (_ for _ in ()).throw(Boom("scraper broke")))
    with pytest.raises(Boom):
        run_experiment(exp(), results=tmp_path, run_name="x", progress=False)
    assert dep.torn_down
    rd = tmp_path / "t" / "x"
    assert "scraper broke" in json.loads((rd / "incomplete.json").read_text())["reason"]
    assert (rd / "logs" / "worker-0.log").read_text() == "log of worker-0\n"


def test_writer_atomic_summary_and_manifests(tmp_path):
    w = RunWriter(tmp_path / "run")
    w.begin({"a": 1, "password": "hunter2"})
    assert "hunter2" not in (tmp_path / "run" / "params.yaml").read_text()
    w.write_manifests([{"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "stringData": {"k": "v"}},
                       {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "svc"}}])
    text = (tmp_path / "run" / "manifests.yaml").read_text()
    assert text.count("---") == 1 and "<redacted>" in text and "k: v" not in text
    w.write_manifests("kind: Raw\n")
    assert (tmp_path / "run" / "manifests.yaml").read_text() == "kind: Raw\n"
    w.finish({"levels": [{"x": float("nan")}]})
    doc = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert doc["complete"] and doc["levels"] == [{"x": None}]
    assert not list((tmp_path / "run").glob(".*tmp*"))
    time.sleep(0)
