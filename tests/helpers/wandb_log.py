"""Read W&B offline transaction logs (`run-<id>.wandb`) back, for tests.

The file is a 7-byte header (":W&B", magic 0xBEE1, version) followed by a LevelDB-style log: 32 KiB blocks of
records, each `crc32c(4) length(2 LE) type(1) payload`, type 1 = full, 2/3/4 = first/middle/last fragment.
Payloads are `wandb_internal_pb2.Record` protobufs.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

BLOCK = 32 * 1024
HEADER = 7


def _payloads(data: bytes) -> list[bytes]:
    out, pending, pos = [], b"", HEADER
    while pos + 7 <= len(data):
        room = BLOCK - pos % BLOCK
        if room < 7:  # block trailer padding
            pos += room
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == 0 and length == 0:
            continue
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            out.append(pending)
            pending = b""
    return out


def read_run(path: Path) -> dict:
    """{"run_id": str, "history": [dict, ...], "summary": dict, "config": dict} from one offline .wandb file; summary
    and config hold the last value each key was given (media as W&B's JSON, e.g. {"_type": "image-file", "path":
    "media/images/....png", ...}, the path relative to the run's `files/` folder)."""
    from wandb.proto import wandb_internal_pb2 as pb

    run_id, history, summary, config = None, [], {}, {}
    for payload in _payloads(Path(path).read_bytes()):
        record = pb.Record()
        record.ParseFromString(payload)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run_id = record.run.run_id
        elif kind == "history":
            history.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                            for item in record.history.item})
        elif kind == "summary":
            summary.update({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                            for item in record.summary.update})
        if kind == "run" or kind == "config":
            items = record.run.config.update if kind == "run" else record.config.update
            config.update({item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in items})
    return {"run_id": run_id, "history": history, "summary": summary, "config": config}


def read_runs(out_dir: Path) -> list[dict]:
    """All offline runs written under `<out_dir>/wandb`, oldest first."""
    return [read_run(f) for f in sorted(Path(out_dir).glob("wandb/offline-run-*/run-*.wandb"))]


def assert_wandb_matches_metrics(out_dir: Path) -> None:
    """Across all offline segments of the run, W&B holds every row of metrics.jsonl, each step in exactly one
    segment, with the values metrics.jsonl holds."""
    import math

    rows: dict[int, dict] = {}
    for line in (Path(out_dir) / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        rows.setdefault(row["global_step"], {}).update(
            {k: v for k, v in row.items() if isinstance(v, int | float) and not isinstance(v, bool)
             and k != "global_step"})
    segments: dict[int, list[int]] = {}
    held: dict[int, dict] = {}
    for index, run in enumerate(read_runs(out_dir)):
        for entry in run["history"]:
            segments.setdefault(entry["_step"], []).append(index)
            held.setdefault(entry["_step"], {}).update(entry)
    twice = {step: where for step, where in segments.items() if len(where) > 1}
    assert not twice, f"steps logged to W&B in several segments: {dict(list(twice.items())[:5])}"
    missing = sorted(set(rows) - set(held))
    assert not missing, f"W&B lacks {len(missing)} of {len(rows)} steps of metrics.jsonl: {missing[:10]}"
    for step, values in rows.items():
        for key, value in values.items():
            got = held[step].get(key)
            assert got is not None and math.isclose(got, value, rel_tol=1e-6, abs_tol=1e-12), \
                f"step {step}: W&B has {key}={got}, metrics.jsonl {value}"
    extra = sorted(set(held) - set(rows))
    assert not extra, f"W&B holds steps metrics.jsonl does not: {extra[:10]}"
