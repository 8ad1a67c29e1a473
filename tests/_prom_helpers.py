"""Start a real Prometheus server (Debian's `prometheus` binary) on 127.0.0.1 for tests.

Its config scrapes every second the targets of a file_sd file that the test (or pdlab, via
`metrics.file_sd`) writes. Tests skip with a reason where the binary is absent; CI installs it.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from pdlab.core.fsutil import free_port

BINARY = shutil.which("prometheus")
needs_prometheus = pytest.mark.skipif(BINARY is None, reason="the `prometheus` binary is not installed "
                                      "(apt-get install prometheus; .ci/run installs it)")


@dataclass
class Prom:
    url: str
    file_sd: Path
    log: Path


@contextlib.contextmanager
def prometheus(tmp: Path, scrape_interval: str = "1s") -> Iterator[Prom]:
    """A Prometheus on a free loopback port scraping the targets listed in `tmp/targets.json`."""
    assert BINARY is not None
    sd = tmp / "targets.json"
    sd.write_text("[]")
    cfg = {"global": {"scrape_interval": scrape_interval, "scrape_timeout": scrape_interval},
           "scrape_configs": [{"job_name": "pdlab", "file_sd_configs": [{"files": [str(sd)],
                                                                         "refresh_interval": "1s"}]}]}
    (tmp / "prometheus.yml").write_text(json.dumps(cfg))
    port = free_port()
    log = tmp / "prometheus.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([BINARY, f"--config.file={tmp / 'prometheus.yml'}",
                                 f"--web.listen-address=127.0.0.1:{port}", f"--storage.tsdb.path={tmp / 'tsdb'}"],
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/-/ready", timeout=1, trust_env=False).status_code == 200:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"prometheus did not start: {log.read_text()[-2000:]}")
            time.sleep(0.1)
        yield Prom(url, sd, log)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
