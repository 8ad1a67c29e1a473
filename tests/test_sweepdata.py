"""Which runs a report labels 'emulated'."""

from pdlab.analysis.sweepdata import is_emulated


def test_local_emulator_runs_are_emulated() -> None:
    assert is_emulated({"backend": {"kind": "local", "engine": "emulator"}})
    assert not is_emulated({"backend": {"kind": "local", "engine": "sglang"}})


def test_k8s_runs_are_emulated_only_on_the_fake_cluster() -> None:
    params = {"backend": {"kind": "k8s", "engine": "emulator"}}
    assert not is_emulated(params, {"cluster": {"emulated": False}})
    assert is_emulated(params, {"cluster": {"emulated": True, "nodes": []}})
