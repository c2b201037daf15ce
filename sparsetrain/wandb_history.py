"""Which steps a run's offline W&B files already hold, so a resumed run can send the ones W&B lost.

A process killed hard (SIGKILL, a node failure) loses what W&B's service had not yet written to
`wandb/offline-run-*-<id>/run-<id>.wandb`. W&B ships no Python reader for these files (its Go service owns the
format), so this module reads the framing, which is LevelDB's log format: a 7-byte header (":W&B", magic 0xBEE1,
version), then records in 32 KiB blocks, each `crc32c (4) length (2, LE) type (1) payload`, type 1 = full record,
2/3/4 = first/middle/last fragment of one. Payloads are decoded with wandb's own protobuf class
(`wandb.proto.wandb_internal_pb2.Record`). A file cut short simply ends early; a record that does not decode is
skipped (the checksum is not verified: no crc32c implementation ships with the project's dependencies).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path

BLOCK = 32 * 1024
HEADER = 7
RECORD_HEADER = 7


def _payloads(data: bytes) -> Iterator[bytes]:
    pending, pos = b"", HEADER
    while pos + RECORD_HEADER <= len(data):
        room = BLOCK - pos % BLOCK
        if room < RECORD_HEADER:  # the rest of a block too short for a record header is padding
            pos += room
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + RECORD_HEADER])
        start, pos = pos + RECORD_HEADER, pos + RECORD_HEADER + length
        if pos > len(data):  # cut short while being written
            return
        if kind == 0 and length == 0:
            continue
        pending = data[start:pos] if kind in (1, 2) else pending + data[start:pos]
        if kind in (1, 4):
            yield pending
            pending = b""


def history_steps(path: Path) -> dict[int, set[str]]:
    """{step: keys logged at that step} of one offline run file (W&B's own `_`-keys left out)."""
    from google.protobuf.message import DecodeError
    from wandb.proto import wandb_internal_pb2 as pb

    steps: dict[int, set[str]] = {}
    for payload in _payloads(Path(path).read_bytes()):
        record = pb.Record()
        try:
            record.ParseFromString(payload)
        except DecodeError:
            continue
        if record.WhichOneof("record_type") != "history":
            continue
        items = {item.key or "/".join(item.nested_key): item.value_json for item in record.history.item}
        if "_step" in items:
            keys = {k for k in items if not k.startswith("_")}
            steps.setdefault(int(items["_step"]), set()).update(keys)
    return steps


def offline_steps(wandb_dir: Path, run_id: str, exclude: Path | None = None) -> dict[int, set[str]]:
    """Union of `history_steps` over every offline segment of run `run_id` under `wandb_dir`.

    Args:
        wandb_dir: the `wandb` folder W&B writes under the run directory.
        run_id: the W&B run id shared by the segments (one per start of the run).
        exclude: a segment folder to leave out (the one the current process is writing).
    """
    steps: dict[int, set[str]] = {}
    for file in sorted(wandb_dir.glob(f"offline-run-*-{run_id}/run-{run_id}.wandb")):
        if exclude is not None and file.parent == exclude:
            continue
        for step, keys in history_steps(file).items():
            steps.setdefault(step, set()).update(keys)
    return steps
