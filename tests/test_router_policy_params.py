"""Router policies and PD transfer settings as params, rendered for the real sglang-router and workers."""

import pytest

from pdlab.core.errors import SpecError
from pdlab.experiment.commands import router_args, worker_args
from pdlab.experiment.loader import experiment_from_dict
from pdlab.experiment.topology import build


def _pd(**router) -> dict:
    return {"topology": {"kind": "pd", "ratio": "2P1D", "transfer_backend": "nixl", "ib_device": "mlx5_0",
                         "router": router}}


def test_pd_policies_and_thresholds_reach_the_router_command():
    exp = experiment_from_dict(_pd(prefill_policy="cache_aware", decode_policy="power_of_two",
                                   cache_threshold=0.5, balance_abs_threshold=16, balance_rel_threshold=1.2))
    cmd = router_args(exp, prefill=[("http://p0:30000", 34000)], decode=["http://d0:30000"])
    s = " ".join(cmd)
    assert "--prefill-policy cache_aware" in s and "--decode-policy power_of_two" in s
    assert "--cache-threshold 0.5" in s and "--balance-abs-threshold 16" in s and "--balance-rel-threshold 1.2" in s
    assert "--policy" not in cmd  # unset: the router's own default


def test_colocated_policy_and_worker_transfer_flags():
    exp = experiment_from_dict({"topology": {"kind": "colocated", "router": {"policy": "round_robin"}}})
    assert "--policy round_robin" in " ".join(router_args(exp, workers=["http://w0:1"]))
    pd = experiment_from_dict(_pd())
    args = worker_args(pd, build(pd).role("decode"), host="0.0.0.0", port=30000)
    s = " ".join(args)
    assert "--disaggregation-transfer-backend nixl" in s and "--disaggregation-ib-device mlx5_0" in s


@pytest.mark.parametrize("doc, match", [
    (_pd(policy="least_busy"), "allowed: cache_aware, round_robin, power_of_two, random"),
    (_pd(decode_policy="cache-aware"), "did you mean 'cache_aware'"),
    ({"topology": {"kind": "pd", "transfer_backend": "rdma"}}, "allowed: mooncake, nixl, ascend, fake"),
    ({"topology": {"kind": "colocated", "router": {"prefill_policy": "random"}}}, "PD topologies only"),
])
def test_bad_policy_or_backend_lists_the_allowed_values(doc, match):
    with pytest.raises(SpecError, match=match):
        experiment_from_dict(doc)


def test_role_faults_become_emulator_flags():
    from pdlab.emulator.cli import parse
    from pdlab.experiment.commands import emulator_args

    exp = experiment_from_dict({"topology": {"kind": "pd", "prefill": {"replicas": 1, "tp": 2, "faults": {
        "error_rate": 0.25, "error_status": 500, "kv_fail_rate": 0.1, "crash_after": 50}}}})
    flags = emulator_args(exp, "prefill")
    assert flags[-8:] == ["--emu-fault-error-rate", "0.25", "--emu-fault-error-status", "500",
                          "--emu-fault-crash-after", "50", "--emu-fault-kv-fail-rate", "0.1"]
    assert "--emu-fault-error-rate" not in emulator_args(exp, "decode")
    cfg = parse(worker_args(exp, build(exp).role("prefill"), host="127.0.0.1", port=1) + flags)
    assert cfg.faults.error_rate == 0.25 and cfg.faults.crash_after == 50 and cfg.faults.error_status == 500
    with pytest.raises(SpecError, match="error_status"):
        experiment_from_dict({"topology": {"kind": "colocated", "worker": {"faults": {"error_status": 404}}}})


def test_role_faults_reach_the_emulated_cluster_annotation():
    import json

    from pdlab.deploy import manifests as M

    exp = experiment_from_dict({"topology": {"kind": "pd", "decode": {"faults": {"crash_at_s": 30}}}})
    objs = [{"kind": "RoleBasedGroup", "spec": {"roles": [{"name": r, "template": {"spec": {}}} for r in ("prefill", "decode")]}}]
    M.annotate_emulator_args(objs, exp)
    ann = {r["name"]: json.loads(r["template"]["metadata"]["annotations"][M.EMULATOR_ARGS_ANNOTATION])
           for r in objs[0]["spec"]["roles"]}
    assert ann["decode"][-2:] == ["--emu-fault-crash-at-s", "30.0"] and "--emu-fault-crash-at-s" not in ann["prefill"]


def test_sglang_version_is_recorded_and_gates_newer_flags():
    exp = experiment_from_dict({"topology": {"kind": "pd"}})
    assert exp.sglang_version == "0.5.5"  # from the default image tag, written to params.yaml
    doc = {"image": "lmsysorg/sglang:v0.5.5", "topology": {
        "kind": "pd", "decode": {"args": {"disaggregation-decode-enable-radix-cache": True}}}}
    with pytest.raises(SpecError, match=r"--disaggregation-decode-enable-radix-cache needs SGLang ≥ 0.5.11, but "
                                        r"the image is SGLang 0.5.5"):
        experiment_from_dict(doc)
    newer = experiment_from_dict({**doc, "image": "lmsysorg/sglang:v0.5.12-cu129"})
    assert newer.sglang_version == "0.5.12"
    assert experiment_from_dict({**doc, "image": "my/sglang:latest"}).sglang_version is None  # unknown: no gate


def test_router_flags_pdlab_sets_are_refused_in_router_args():
    with pytest.raises(SpecError, match="set topology.router.decode_policy instead"):
        experiment_from_dict(_pd(args={"decode-policy": "random"}))
