"""Run progress per level with an ETA: plain lines when not on a terminal, always in logs/progress.log."""

from __future__ import annotations

import io
from types import SimpleNamespace

from pdlab.measure.progress import Eta, LineReporter, fmt_s, reporter_for


def test_eta_is_the_remaining_schedule_plus_the_mean_drain_so_far():
    eta = Eta([20.0, 20.0, 20.0])
    assert eta.remaining(0) == 60.0
    eta.finished(20.0, 26.0)  # drained 6 s past its schedule
    assert eta.remaining(1) == 2 * (20.0 + 6.0)
    assert Eta([None, None]).remaining(0) is None  # prompt-bounded levels: unknown until one finished


def test_line_reporter_writes_levels_to_the_stream_and_the_log(tmp_path):
    out, log = io.StringIO(), tmp_path / "logs" / "progress.log"
    rep = LineReporter(stream=out, log=log)
    rep.level_start("level 1/2: 4 req/s", 37, 70.0)
    rep.level_end("level 1/2: 4 req/s", SimpleNamespace(done=37, sent=37, failed=1), 24.0, 30.0)
    text = out.getvalue()
    assert "level 1/2: 4 req/s: 37 requests scheduled; run ETA 1m10s" in text
    assert "done in 24s, 37/37 answered, 1 failed; run ETA 30s" in text
    assert log.read_text().count("level 1/2") == 2


def test_without_a_terminal_progress_is_plain_lines():
    rep = reporter_for(True)  # pytest captures stderr: not a terminal
    assert type(rep) is LineReporter and rep.stream is not None
    assert reporter_for(False).stream is None
    assert fmt_s(185) == "3m05s"
