"""Leave a finished sparsetrain process without Python's interpreter teardown.

With torch, timm and DeepSpeed imported, tearing the interpreter down (freeing every module, then the objects they
held) costs ~1.5 s of CPU at each exit and does nothing a finished command needs: measured on 2 cores, importing
`sparsetrain.pipeline` and exiting took 7.0 s wall, of which 1.7 s after the last line of the script; leaving with
`exit_now` took 4.8 s. Every rank of a multi-process run, every `sparsetrain` command and every peak-memory child
process pays it.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading

__all__ = ["exit_now", "exit_status"]


def exit_status(code: object) -> int:
    """The process exit status `sys.exit(code)` would give: None -> 0, an int as is, anything else (a message) -> 1
    after printing it to stderr, as Python does."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def exit_now(code: object = 0) -> None:
    """Exit with `exit_status(code)` after what a normal exit does that matters: the atexit handlers (W&B finishing
    its run, logging's flush, multiprocessing's children, weakref finalizers such as temporary directories) and a
    flush of stdout / stderr; then `os._exit`, skipping the teardown. When a non-daemon thread is still running, a
    normal exit (`sys.exit`) waits for it, as Python does.

    Only for a process's entry point (`python -m sparsetrain`, the `sparsetrain` script, `python -m
    sparsetrain.deploy.memory`), never inside a library call: it does not return.
    """
    status = exit_status(code)
    main = threading.main_thread()
    if any(t is not main and not t.daemon and t.is_alive() for t in threading.enumerate()):
        sys.exit(status)
    atexit._run_exitfuncs()  # CPython's own exit path for registered handlers
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):  # closed or replaced stream: nothing left to write
            pass
    os._exit(status)
