"""`backend.k8s.load: job` on the fake cluster: the load runs in an Indexed Job of pdlab load pods next to the
router, records come back through the API and land in the usual results layout; an image that cannot be
pulled and an evicted load pod end the run clearly, keeping what was measured and leaving nothing behind."""

from __future__ import annotations

import json
import threading
import time

import pytest
import yaml

from pdlab.analysis.results import load_run
from pdlab.deploy.loadjob import render_job
from pdlab.experiment.loader import load_experiment
from pdlab.testing.fakekube import Faults
from tests._k8s_helpers import ROOT, fake_kube, pdlab_objects, run_cli

PARAMS = ROOT / "params" / "demo-local.yaml"
JOB = ["backend.k8s.load=job", "backend.k8s.load_pods=3", "backend.k8s.load_start_delay_s=8",
       "emulator.time_scale=0.05", "workload.rates=[30]", "workload.duration_s=3", "workload.warmup=0",
       "workload.dataset.output_len=8"]


def test_the_job_runs_n_indexed_pdlab_load_pods_with_the_image_params():
    exp = load_experiment(PARAMS, ["backend.kind=k8s", "backend.k8s.load_image=reg.example/pd/pdlab",
                                   "backend.k8s.load_image_tag=v9"])
    job = render_job(exp, {"pods": 3, "router_url": "http://x"}, run_id="r1")
    spec = job["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"], spec["backoffLimit"]) == \
        ("Indexed", 3, 3, 0)
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    (ctr,) = pod["containers"]
    assert ctr["image"] == "reg.example/pd/pdlab:v9"
    assert ctr["command"] == ["python", "-m", "pdlab.measure.loadpod"]
    assert json.loads(next(e["value"] for e in ctr["env"] if e["name"] == "PDLAB_LOAD_SPEC"))["pods"] == 3
    assert job["metadata"]["labels"]["pdlab.io/run"] == "r1"


def _gone(kube) -> None:
    assert pdlab_objects(kube) == [] and kube.objects("jobs.batch") == [] and kube.objects("pods") == []


@pytest.mark.slow
def test_three_load_pods_give_the_usual_results_layout(tmp_path):
    with fake_kube(emu_time_scale=None) as kube:
        rc, run_dir = run_cli(kube, tmp_path, *JOB, params=PARAMS, name="job")
        assert rc == 0
        _gone(kube)
    run = load_run(run_dir)
    assert run.complete, run.incomplete
    assert {p.name for p in run_dir.iterdir()} >= {"params.yaml", "manifests.yaml", "provenance.json",
                                                   "requests.parquet", "server_metrics.parquet", "summary.json"}
    req = run.requests
    assert sorted(req["load_pod"].unique()) == [0, 1, 2] and req["ok"].all()
    assert 30 * 3 * 0.6 < len(req) < 30 * 3 * 1.4  # the total rate, split three ways
    assert req.groupby("load_pod").size().min() >= 10
    pods = json.loads((run_dir / "provenance.json").read_text())["load_job"]["pods"]
    assert [p["ok"] for p in pods] == [True, True, True]
    assert run.summary["completed"].iloc[0] == len(req)
    assert {"prefill", "decode"} <= set(run.server_metrics["role"])
    assert any(p.name.startswith("demo-load-") for p in (run_dir / "logs").iterdir())  # the pods' logs
    kinds = [d["kind"] for d in yaml.safe_load_all((run_dir / "manifests.yaml").read_text()) if d]
    assert "Job" in kinds and "RoleBasedGroup" in kinds


@pytest.mark.slow
def test_an_image_that_cannot_be_pulled_fails_fast_and_leaves_nothing(tmp_path, capsys):
    with fake_kube(emu_time_scale=None, faults=Faults(image_pull="no-such-pdlab")) as kube:
        rc, run_dir = run_cli(kube, tmp_path, *JOB, "backend.k8s.load_image=no-such-pdlab", params=PARAMS,
                              name="nopull")
        err = capsys.readouterr().err
        assert rc != 0
        _gone(kube)
    assert "cannot start: ImagePullBackOff" in err and "backend.k8s.load_image" in err
    assert not load_run(run_dir).complete


@pytest.mark.slow
def test_an_evicted_load_pod_keeps_partial_records_and_marks_the_run_incomplete(tmp_path):
    with fake_kube(emu_time_scale=None) as kube:
        box: dict = {}
        sets = [*[s for s in JOB if not s.startswith("workload.duration_s")], "workload.duration_s=8"]
        th = threading.Thread(target=lambda: box.update(r=run_cli(kube, tmp_path, *sets, params=PARAMS,
                                                                    name="evict")))
        th.start()
        victim = None
        deadline = time.monotonic() + 120
        while victim is None and time.monotonic() < deadline:
            for p in kube.objects("pods"):
                labels = p["metadata"].get("labels") or {}
                if labels.get("batch.kubernetes.io/job-completion-index") == "1" and \
                        (p.get("status") or {}).get("phase") == "Running":
                    victim = p["metadata"]["name"]
            time.sleep(0.2)
        assert victim is not None
        time.sleep(8 + 3)  # past the common start, into the level
        assert kube.call(lambda: kube.controller.evict("default", victim))
        th.join(180)
        rc, run_dir = box["r"]
        assert rc != 0
        _gone(kube)
    run = load_run(run_dir)
    assert not run.complete and "load pod 1" in run.incomplete["reason"] and "Evicted" in run.incomplete["reason"]
    per_pod = run.requests.groupby("load_pod").size()
    assert set(per_pod.index) == {0, 1, 2}  # the evicted pod's records up to its eviction are kept
    assert per_pod[1] < per_pod[0]
