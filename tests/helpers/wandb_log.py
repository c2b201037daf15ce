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
    """{"run_id": str, "history": [dict, ...]} from one offline .wandb file."""
    from wandb.proto import wandb_internal_pb2 as pb

    run_id, history = None, []
    for payload in _payloads(Path(path).read_bytes()):
        record = pb.Record()
        record.ParseFromString(payload)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run_id = record.run.run_id
        elif kind == "history":
            history.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                            for item in record.history.item})
    return {"run_id": run_id, "history": history}


def read_runs(out_dir: Path) -> list[dict]:
    """All offline runs written under `<out_dir>/wandb`, oldest first."""
    return [read_run(f) for f in sorted(Path(out_dir).glob("wandb/offline-run-*/run-*.wandb"))]
