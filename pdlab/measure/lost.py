"""Workers a run lost: endpoints whose /metrics stopped answering and never came back, and since when.

Read from the scraper's own `pdlab:scrape_up` samples (1 = the scrape worked), so it works for every backend:
a worker is lost at the time of its first failed scrape after its last successful one, when every scrape from
then to the end of the run failed. The time is in seconds from the run's t0 (as the request records).
"""

from __future__ import annotations

import pandas as pd

UP = "pdlab:scrape_up"


def lost_workers(server_metrics: pd.DataFrame) -> list[dict]:
    """[{name, role, lost_at_s, last_seen_s}] for every endpoint that stopped answering for good."""
    if server_metrics is None or server_metrics.empty:
        return []
    up = server_metrics[server_metrics["metric"] == UP].sort_values("t")
    out = []
    for (name, role), g in up.groupby(["name", "role"], sort=True):
        ok = g[g["value"] >= 1]
        if g["value"].iloc[-1] >= 1 or ok.empty:
            continue  # still answering, or never answered (not started: the deploy step reports that)
        last = float(ok["t"].iloc[-1])
        first_down = float(g[(g["t"] > last)]["t"].iloc[0])
        out.append({"name": str(name), "role": str(role), "lost_at_s": round(first_down, 3),
                    "last_seen_s": round(last, 3)})
    return out
