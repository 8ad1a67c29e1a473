"""The `pdlab` command: manifests, validate, plan, deploy, run, sweep, report, cleanup, calibrate.

Errors a user can fix print one message (file, field, fix) and exit 2, without a traceback.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from pdlab import __version__
from pdlab.core.errors import PdlabError


def _add_set(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD.PATH=VALUE",
                   help="override a field of the params file (repeatable; YAML values, e.g. workload.rates=[1,2])")


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="pdlab", description="Prefill/decode disaggregation experiments, "
                                 "locally (emulated) or on Kubernetes.")
    ap.add_argument("--version", action="version", version=f"pdlab {__version__}")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("manifests", help="print the Kubernetes objects (RoleBasedGroup, Service, ...) of a params file")
    p.add_argument("params", nargs="?", help="params YAML file (not needed with --rbac alone)")
    p.add_argument("--api", choices=["v1alpha1", "v1alpha2"], default=None,
                   help="RoleBasedGroup API version (default: backend.k8s.api_version, v1alpha1 as ACK installs it)")
    p.add_argument("--run-id", default=None, help="value of the pdlab.io/run label (default: the experiment name)")
    p.add_argument("--no-storage", action="store_true", help="leave out the OSS PV/PVC even if storage.oss is set")
    p.add_argument("--with-secrets", action="store_true",
                   help="include the OSS Secret, reading its keys from the environment variables the spec names")
    p.add_argument("--rbac", action="store_true", help="print the least-privilege RBAC pdlab itself needs")
    p.add_argument("--namespace", default=None, help="namespace for --rbac (default: the params' namespace)")
    p.add_argument("--monitoring", action="store_true",
                   help="print only a PodMonitor (Prometheus operator / ACK Managed Prometheus) that scrapes the "
                        "experiment's pods, for backend.k8s.prometheus")
    _add_set(p)

    p = sub.add_parser("validate", help="check a params or sweep file and print the resolved spec / points")
    p.add_argument("params", metavar="FILE", help="a params YAML file, or a sweep file (then its points are listed)")
    _add_set(p)

    p = sub.add_parser("plan", help="recommend a deployment for a GPU budget: every TP, colocated and PD, the highest "
                       "rate meeting the SLO, in virtual time (seconds); --rate-curve ranks fixed arms per rate")
    p.add_argument("params", help="params YAML file: model, GPU type and node shape, workload and SLOs to plan for")
    p.add_argument("--budget", type=int, default=None, help="GPUs to plan for (default: the params' topology's GPUs)")
    p.add_argument("--json", action="store_true", help="print the plan as one JSON object")
    p.add_argument("--emit", default=None, metavar="DIR",
                   help="write the winner's params, a sweep measuring the plan, and its predictions into DIR")
    p.add_argument("--rate-curve", action="store_true",
                   help="instead: every xPyD at one TP and the colocated baseline at workload.rates, ranked per rate")
    p.add_argument("--tp", type=int, default=None, help="with --rate-curve: TP of every instance (default: the params')")
    p.add_argument("--csv", default=None, help="also write the table to this CSV file")
    _add_set(p)

    p = sub.add_parser("deploy", help="bring a topology up, print its endpoint, hold until Ctrl-C")
    p.add_argument("params", help="params YAML file whose topology and backend to bring up")
    _add_set(p)

    p = sub.add_parser("run", help="deploy, drive every load level, save results, tear down",
                       epilog="exit codes: 0 every level measured; 2 bad input; 3 a level failed (more than "
                       "workload.max_failed_share of its requests failed; summary.json has its top errors); "
                       "130 Ctrl-C, 143 SIGTERM (the run is saved incomplete)")
    p.add_argument("params", help="params YAML file: topology, workload levels, SLOs, backend")
    p.add_argument("--results", default="results", help="results root (default: ./results)")
    p.add_argument("--name", default=None, help="run directory name (default: <experiment>-<timestamp>)")
    _add_set(p)

    p = sub.add_parser("sweep", help="run a sweep file point by point (papermill), then the compare report")
    p.add_argument("sweep", help="sweep YAML file: a base params file, a grid, baselines and repeats")
    p.add_argument("--results", default="results", help="results root (default: ./results)")
    p.add_argument("--force", action="store_true", help="re-run points that already completed (overwrites them)")
    p.add_argument("--dry-run", action="store_true", help="list the points and exit")
    _add_set(p)

    p = sub.add_parser("report", help="render the HTML report of a sweep directory")
    p.add_argument("sweep_dir", help="a sweep's results directory, e.g. results/demo-sweep")
    p.add_argument("--with-code", action="store_true", help="show code cells in the report")

    p = sub.add_parser("export", help="write every run of a run or sweep directory in another tool's format")
    p.add_argument("path", metavar="RUN_OR_SWEEP", help="a run directory, or a sweep directory (every run in it)")
    p.add_argument("--format", choices=["llm-d"], required=True,
                   help="llm-d: llm-d-benchmark's Benchmark Report v0.2, one YAML file per run and load level")
    p.add_argument("--out", default=None, help="output directory (default: RUN_OR_SWEEP/llm-d)")

    p = sub.add_parser("import", help="bring llm-d Benchmark Reports (v0.2.x) in as runs, arms of the compare report")
    p.add_argument("files", nargs="+", metavar="FILE", help="Benchmark Report files (YAML or JSON)")
    p.add_argument("--into", required=True, help="the sweep directory to add them to, e.g. results/my-sweep")
    p.add_argument("--arm", default=None, help="arm label (default: each report's run.description)")

    p = sub.add_parser("cleanup", help="end what a crashed run left behind (only pdlab's own processes/objects)")
    p.add_argument("--backend", choices=["local", "k8s"], default="local",
                   help="where to look: local processes (default) or a Kubernetes cluster")
    p.add_argument("--experiment", default=None, help="only this experiment's leftovers")
    p.add_argument("--kubeconfig", default=None,
                   help="k8s: kubeconfig file (default: $KUBECONFIG, ~/.kube/config, or the in-cluster account)")
    p.add_argument("--context", default=None, help="k8s: kubeconfig context (default: its current context)")
    p.add_argument("--namespace", default=None,
                   help="k8s: the namespace to clean (default: the kubeconfig context's namespace)")
    p.add_argument("--all-namespaces", action="store_true",
                   help="k8s: every namespace (needs cluster-wide list rights, beyond pdlab's rendered Role)")

    from pdlab.calibrate.command import __doc__ as calibrate_doc
    from pdlab.calibrate.command import add_arguments as calibrate_arguments

    p = sub.add_parser("calibrate", help="measure this GPU with the model's layer shapes (or fit a finished run) "
                       "and write a GPU profile for gpu.profile", description=calibrate_doc,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    calibrate_arguments(p)
    for name, sp in sub.choices.items():
        if name in EXAMPLES:
            sp.epilog = (sp.epilog + "\n\n" if sp.epilog else "") + "example:\n  " + "\n  ".join(EXAMPLES[name])
            sp.formatter_class = argparse.RawDescriptionHelpFormatter
    return ap


EXAMPLES = {  # shown under each command's --help
    "manifests": ["pdlab manifests params/seed-2p1d.yaml | kubectl apply -f -",
                  "pdlab manifests --rbac --namespace llm | kubectl apply -f -",
                  "pdlab manifests params/seed-2p1d.yaml --monitoring | kubectl apply -f -"],
    "validate": ["pdlab validate params/seed-2p1d.yaml --set topology.ratio=3P1D",
                 "pdlab validate params/demo-sweep.yaml"],
    "plan": ["pdlab plan params/seed-2p1d.yaml --budget 8", "pdlab plan params/seed-2p1d.yaml --budget 8 --json",
             "pdlab plan params/seed-2p1d.yaml --budget 8 --emit plans/seed && pdlab sweep plans/seed/sweep.yaml",
             "pdlab plan params/demo-local.yaml --rate-curve --budget 4 --set workload.rates=[2,4,6]"],
    "deploy": ["pdlab deploy params/demo-local.yaml"],
    "run": ["pdlab run params/demo-local.yaml --set workload.rates=[1,2] --name first-try"],
    "sweep": ["pdlab sweep params/demo-sweep.yaml --dry-run", "pdlab sweep params/demo-sweep.yaml"],
    "report": ["pdlab report results/demo-sweep"],
    "export": ["pdlab export results/demo-sweep --format llm-d"],
    "import": ["pdlab import llmd-reports/*.yaml --into results/demo-sweep --arm 'llm-d 2P2D' && "
               "pdlab report results/demo-sweep"],
    "cleanup": ["pdlab cleanup", "pdlab cleanup --backend k8s --context my-ack-context --namespace llm"],
    "calibrate": ["pdlab calibrate --model Qwen3-32B --tp 1 2 --out l20-qwen3-32b.yaml",
                  "pdlab calibrate params/seed-2p1d.yaml --backend k8s --out l20-qwen3-32b.yaml",
                  "pdlab calibrate --from-run results/seed/run-1 --base L20 --out seed-fitted.yaml"],
}


def cmd_manifests(a: argparse.Namespace) -> int:
    from pdlab.deploy import manifests
    from pdlab.experiment.loader import load_experiment

    objs: list[dict] = []
    if a.params:
        exp = load_experiment(a.params, a.overrides)
        api = a.api or exp.backend.k8s.api_version
        objs += manifests.render(exp, api=api, run_id=a.run_id, include_storage=not a.no_storage,
                                 with_secrets=a.with_secrets)
        if a.monitoring:  # only the PodMonitor: `pdlab run` applies the rest itself
            from pdlab.deploy.monitoring import pod_monitor

            objs = [pod_monitor(exp, run_id=a.run_id)]
        namespace = a.namespace or exp.namespace
    else:
        if a.monitoring:
            raise PdlabError("--monitoring needs a params file (the PodMonitor selects that experiment's pods)")
        if not a.rbac:
            raise PdlabError("give a params file (or --rbac for pdlab's own RBAC)")
        namespace = a.namespace or "default"
    if a.rbac:
        from pdlab.deploy.k8s import rbac_manifests

        objs = rbac_manifests(namespace) + ([] if not a.params else objs)
    sys.stdout.write(manifests.to_yaml(objs, header=f"rendered by pdlab {__version__}"))
    return 0


def cmd_validate(a: argparse.Namespace) -> int:
    from pdlab.experiment.spec import dump_yaml, is_sweep_doc, read_yaml, resolved

    doc = read_yaml(a.params)
    if is_sweep_doc(doc):
        from pdlab.experiment.sweepspec import load_sweep

        sw = load_sweep(a.params, a.overrides)
        print(f"sweep '{sw.name}': {len(sw.points)} point(s)")
        for pt in sw.points:
            print(f"  {pt.run:<28} {pt.arm:<24} {pt.gpus} GPUs  {pt.overrides or ''}")
        return 0
    from pdlab.experiment.loader import load_experiment
    from pdlab.experiment.topology import build

    exp = load_experiment(a.params, a.overrides)
    topo = build(exp)
    sys.stdout.write(dump_yaml(resolved(exp)))
    print(f"# {topo.label}: {topo.gpus} GPUs of {exp.gpu.type}; OK")
    return 0


def cmd_plan(a: argparse.Namespace) -> int:
    from pdlab.plan.command import run

    return run(a.params, a.overrides, budget=a.budget, tp=a.tp, rate_curve=a.rate_curve, as_json=a.json,
               emit_dir=a.emit, csv=a.csv)


def cmd_deploy(a: argparse.Namespace) -> int:
    from pdlab.deploy.hold import deploy_and_hold
    from pdlab.experiment.loader import load_experiment

    deploy_and_hold(load_experiment(a.params, a.overrides))
    return 0


def cmd_run(a: argparse.Namespace) -> int:
    from pdlab.analysis.results import load_run
    from pdlab.analysis.summary_table import format_summary
    from pdlab.experiment.loader import load_experiment
    from pdlab.measure.run import EXIT_LEVEL_FAILED, run_experiment

    exp = load_experiment(a.params, a.overrides)
    run_dir = run_experiment(exp, results=a.results, run_name=a.name, progress=True)
    print(format_summary(run_dir))
    print(run_dir)
    failed = load_run(run_dir).meta.get("failed_levels") or []
    if failed:
        print(f"pdlab run: {len(failed)} level(s) failed (more than {exp.workload.max_failed_share:.0%} of their "
              f"requests failed; see the top errors above); exit code {EXIT_LEVEL_FAILED}", file=sys.stderr)
        return EXIT_LEVEL_FAILED
    return 0


def cmd_sweep(a: argparse.Namespace) -> int:
    from pdlab.orchestrate.sweep import run_sweep

    return run_sweep(a.sweep, overrides=a.overrides, results=a.results, force=a.force, dry_run=a.dry_run)


def cmd_export(a: argparse.Namespace) -> int:
    from pdlab.analysis.llmd_export import export_llmd

    files = export_llmd(a.path, a.out)
    for f in files:
        print(f)
    return 0


def cmd_import(a: argparse.Namespace) -> int:
    from pdlab.analysis.llmd_import import import_reports

    for rd in import_reports(a.files, a.into, arm=a.arm):
        print(rd)
    return 0


def cmd_report(a: argparse.Namespace) -> int:
    from pdlab.orchestrate.report import render_report

    path = render_report(Path(a.sweep_dir), with_code=a.with_code)
    print(path)
    return 0


def cmd_cleanup(a: argparse.Namespace) -> int:
    if a.backend == "local":
        from pdlab.deploy.local import cleanup_local

        removed = cleanup_local(experiment=a.experiment)
    else:
        from pdlab.deploy.k8s import cleanup_k8s

        try:
            removed = cleanup_k8s(kubeconfig=a.kubeconfig, context=a.context, namespace=a.namespace,
                                  experiment=a.experiment, all_namespaces=a.all_namespaces)
        except PdlabError as e:  # its hints name params fields; here they are flags
            e.args = (str(e).replace("backend.k8s.kubeconfig", "--kubeconfig")
                      .replace("backend.k8s.context", "--context"),)
            raise
    for item in removed:
        print(f"removed {item}")
    print(f"{len(removed)} leftover(s) removed" if removed else "nothing to clean up")
    return 0


def cmd_calibrate(a: argparse.Namespace) -> int:
    from pdlab.calibrate.command import run

    return run(a)


COMMANDS = {"calibrate": cmd_calibrate, "manifests": cmd_manifests, "validate": cmd_validate, "plan": cmd_plan, "deploy": cmd_deploy, "run": cmd_run,
            "sweep": cmd_sweep, "report": cmd_report, "export": cmd_export, "import": cmd_import,
            "cleanup": cmd_cleanup}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `pdlab` console script."""
    args = _parser().parse_args(argv)
    _restore_ctrl_c()
    try:
        return COMMANDS[args.command](args) or 0
    except PdlabError as e:
        print(f"pdlab {args.command}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"pdlab {args.command}: interrupted; everything deployed was torn down", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


def _restore_ctrl_c() -> None:
    """Make SIGINT stop pdlab (KeyboardInterrupt: save what was measured, tear down) even where it was started
    with SIGINT ignored, as a shell does for background jobs (`pdlab run … &`, CI scripts): a `kill -INT` then
    still ends the run cleanly instead of being dropped."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)


if __name__ == "__main__":
    raise SystemExit(main())
