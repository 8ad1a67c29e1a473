"""Lost workers from the scraper's scrape_up samples."""

import pandas as pd

from pdlab.measure.lost import lost_workers


def _frame(rows):
    return pd.DataFrame([(0.0, t, n, r, "pdlab:scrape_up", "{}", v) for n, r, t, v in rows],
                        columns=["time", "t", "name", "role", "metric", "labels", "value"])


def test_a_worker_that_stops_answering_for_good_is_lost_since_its_first_failed_scrape():
    df = _frame([("w0", "worker", 0, 1), ("w0", "worker", 5, 1), ("w0", "worker", 10, 0), ("w0", "worker", 15, 0),
                 ("w1", "worker", 0, 1), ("w1", "worker", 5, 0), ("w1", "worker", 10, 1),  # a blip: back again
                 ("w2", "worker", 0, 0), ("w2", "worker", 5, 0)])  # never answered: not "lost"
    assert lost_workers(df) == [{"name": "w0", "role": "worker", "lost_at_s": 10.0, "last_seen_s": 5.0}]
    assert lost_workers(df.iloc[:0]) == []
