"""A resumed run sends W&B the rows of metrics.jsonl it lacks, and says which in the progress log's terms."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sparsetrain.config.schema import TrackingConfig
from sparsetrain.tracking import Tracker

DENSE = [{"global_step": 5, "phase": "dense", "step": 5, "loss": 2.0},
         {"global_step": 10, "phase": "dense", "step": 10, "loss": 1.5},
         {"global_step": 10, "phase": "dense", "event": "phase_end", "dense/metric": 80.0}]
LATER = [{"global_step": 15, "phase": "sparsify", "step": 5, "loss": 1.4},
         {"global_step": 20, "phase": "sparsify", "step": 10, "loss": 1.3},
         {"global_step": 20, "phase": "prune", "event": "phase_end", "prune/metric": 79.0}]


def _segment(out: Path, rows: list[dict], caplog: pytest.LogCaptureFixture) -> list[str]:
    """Append `rows` to metrics.jsonl, start the offline W&B run (a resume: it replays what W&B lacks), close it."""
    with (out / "metrics.jsonl").open("a") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)
    caplog.clear()
    tracker = Tracker(TrackingConfig(mode="offline"), out, {}, is_main=True)
    with caplog.at_level("INFO", logger="sparsetrain"):
        tracker.start()
    tracker.close()
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("W&B lacks")]


def test_the_replay_line_names_phases_and_their_own_steps(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert _segment(tmp_path, DENSE, caplog) == [
        "W&B lacks 3 of the 3 rows of metrics.jsonl (dense steps 5-10 and its phase-end row); sending them again"]
    assert _segment(tmp_path, LATER, caplog) == [  # the first segment's offline file holds the dense rows
        "W&B lacks 3 of the 6 rows of metrics.jsonl (sparsify steps 5-10, prune's phase-end row); sending them again"]
