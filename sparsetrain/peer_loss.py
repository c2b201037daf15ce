"""A run whose process group broke because another rank died (`kill -9`, an OOM kill, a lost node).

The surviving ranks then fail inside a collective with the backend's error (gloo: `Read error ...: Connection reset
by peer`), a traceback of ~100 lines that names neither sparsetrain nor what to do. `run` reports it as one line
instead, with the last checkpoint and the command that resumes, and writes the traceback to a file in out_dir.
"""

from __future__ import annotations

import os
import re
import traceback
from pathlib import Path

# gloo's words for a peer that went away (its TCP transport), as the survivor's collective reports them
_GLOO_PEER_GONE = ("Connection reset by peer", "Connection closed by peer", "Broken pipe", "Connection refused")


def broken_process_group(err: BaseException) -> str | None:
    """The backend's short reason when `err` (or an error it was raised from or while handling) is a collective
    failing because a peer rank went away; None for anything else, and in a single-rank run (WORLD_SIZE unset or 1).

    torch's own distributed errors (`torch.distributed.DistError`: backend, network and store errors) count, and the
    plain `RuntimeError` gloo raises when a peer's connection drops.
    """
    if int(os.environ.get("WORLD_SIZE", "1") or 1) <= 1:
        return None
    import torch.distributed as dist

    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        text = str(current)
        if isinstance(current, getattr(dist, "DistError", ())) or (
                isinstance(current, RuntimeError) and "gloo" in text and any(w in text for w in _GLOO_PEER_GONE)):
            return _short_reason(text)
        current = current.__cause__ or current.__context__
    return None


def _short_reason(text: str) -> str:
    """The error's first line without the backend's source location and its generic advice:
    `[/__w/.../gloo/transport/tcp/pair.cc:545] Read error [127.0.0.1]:1209: Connection reset by peer. This is
    typically caused by ...` -> `gloo: Read error [127.0.0.1]:1209: Connection reset by peer`."""
    line = (text.strip().splitlines() or [""])[0]
    backend = "gloo: " if "gloo" in line else ""
    line = re.sub(r"^\[[^\]]*\]\s*", "", line)
    return backend + line.split(". This is typically", 1)[0].rstrip(". ")


def write_traceback(err: BaseException, out_dir: Path) -> Path | None:
    """Write `err`'s full traceback to `out_dir/error-rank<RANK>.log` (one file per surviving rank); None when the
    folder cannot be written (the one-line report still goes out)."""
    path = Path(out_dir) / f"error-rank{os.environ.get('RANK', '0')}.log"
    try:
        path.write_text("".join(traceback.format_exception(err)))
    except OSError:
        return None
    return path
