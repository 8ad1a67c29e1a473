"""Run every pdlab benchmark in turn and print its figures (`make bench`).

    python benchmarks/run_all.py            # emulator (fidelity, scale, pd-effect) + client (quick) + plan fidelity + perf model + load pods (quick)
                                            # + perf-model accuracy + load pods
    python benchmarks/run_all.py --full     # client benchmark at full size (100k-request memory run)

Each benchmark measures its own baseline in the same run and prints ratios; nothing is asserted.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--full", action="store_true", help="full-size client benchmark instead of --quick")
    args = ap.parse_args()
    runs = [
        [sys.executable, str(HERE / "bench_emulator.py"), "all"],
        [sys.executable, str(HERE / "bench_client.py")] + ([] if args.full else ["--quick"]),
        [sys.executable, str(HERE / "bench_plan.py")],
        [sys.executable, str(HERE / "bench_perfmodel.py")],
        [sys.executable, str(HERE / "bench_loadpods.py")] + ([] if args.full else ["--quick"]),
    ]
    failed = 0
    for cmd in runs:
        print(f"\n=== {' '.join(Path(c).name if c.endswith('.py') else c for c in cmd[1:])}", flush=True)
        t = time.monotonic()
        rc = subprocess.call(cmd)
        print(f"=== exit {rc} after {time.monotonic() - t:.0f} s", flush=True)
        failed += rc != 0
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
