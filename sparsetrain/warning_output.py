"""How Python warnings reach the terminal in every sparsetrain process (the CLI and each rank).

- each warning (category and text) is shown at most once per process. Python's own "once per location" registry
  is not enough: every `warnings.catch_warnings()` or `simplefilter()` call empties it (Python 3.11 bumps the filters'
  version), and `subprocess.Popen` enters one (`os.get_exec_path`). DeepSpeed's CPU accelerator starts
  `numactl --hardware` from `device_count()`, which ZeRO 3 calls on every step, so a warning raised per step came
  back on every step (354 lines in an 88-step run);
- deprecations (FutureWarning, DeprecationWarning) are said by rank 0 only: every rank runs the same code and would
  repeat them word for word; other warnings may be a rank's own and are shown on every rank;
- a deprecation is one `warning: ...` line (a config key and its replacement), other warnings as Python prints them;
- torch's deprecation of `all_gather_into_tensor` / `reduce_scatter_tensor` is not shown: DeepSpeed calls them
  inside ZeRO (sparsetrain does not), so the user can do nothing about it;
- on a machine without GPUs, two log lines that are expected there and ask nothing of the user are not shown
  (`CPU_ONLY_NOTES`): DeepSpeed's "Setting accelerator to CPU ..." and torch's "No CUDA runtime is found, using
  CUDA_HOME=..." (printed when DeepSpeed loads its CPU comm op). Where a GPU device exists they stay: there they say
  that it was not found.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable
from pathlib import Path

# raised by torch (in torch.distributed.c10d_logger, under DeepSpeed's deepspeed.comm.torch calls)
DEEPSPEED_COLLECTIVE_DEPRECATIONS = (r"`torch\.distributed\.(all_gather_into_tensor|reduce_scatter_tensor)` "
                                     r"is deprecated")
DEPRECATIONS = (FutureWarning, DeprecationWarning)
# (logger, exact unformatted message) of log records not shown on a machine without GPUs (`no_gpu_device`)
CPU_ONLY_NOTES = (
    ("DeepSpeed", "Setting accelerator to CPU. If you have GPU or other accelerator, we were unable to detect it."),
    ("torch.utils.cpp_extension", "No CUDA runtime is found, using CUDA_HOME='%s'"),
)
GPU_DEVICE_FILES = ("nvidia[0-9]*", "kfd")  # /dev entries of NVIDIA GPUs and of AMD ones (ROCm)

_FORMAT_WARNING = warnings.formatwarning
_shown: set[tuple[type[Warning], str]] = set()


def install() -> None:
    """Set up this process's warning output (idempotent: the CLI's `main` may run more than once in a process)."""
    warnings.formatwarning = one_line_warning
    warnings.filterwarnings("ignore", message=DEEPSPEED_COLLECTIVE_DEPRECATIONS, category=FutureWarning)
    if not getattr(warnings.showwarning, "once_per_process", False):
        warnings.showwarning = _once(warnings.showwarning)
    for name, message in CPU_ONLY_NOTES:
        logger = logging.getLogger(name)  # DeepSpeed's and torch's loggers keep the filter when they set up later
        if not any(isinstance(f, _CpuOnlyNote) and f.message == message for f in logger.filters):
            logger.addFilter(_CpuOnlyNote(message))


def no_gpu_device() -> bool:
    """Whether this machine has no GPU device file (/dev/nvidia0, ..., /dev/kfd): a CPU machine, where DeepSpeed's
    and torch's notes about finding no GPU are expected."""
    return not any(any(Path("/dev").glob(pattern)) for pattern in GPU_DEVICE_FILES)


class _CpuOnlyNote(logging.Filter):
    """Drops the log record whose unformatted message is exactly `message`, on a machine without GPUs."""

    def __init__(self, message: str) -> None:
        super().__init__()
        self.message = message

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.msg == self.message and no_gpu_device())


def one_line_warning(message: Warning | str, category: type[Warning], *args: object, **kwargs: object) -> str:
    """Deprecations (FutureWarning: a config key and its replacement) as one `warning:` line; others as Python
    prints them."""
    if category is FutureWarning:
        return f"warning: {message}\n"
    return _FORMAT_WARNING(message, category, *args, **kwargs)


def _once(show: Callable[..., None]) -> Callable[..., None]:
    """`show` (warnings.showwarning) for a warning not shown before in this process and, for a deprecation, on
    rank 0 (RANK unset in a single process)."""

    def show_once(message: Warning | str, category: type[Warning], *args: object, **kwargs: object) -> None:
        key = (category, str(message))
        if key in _shown or (issubclass(category, DEPRECATIONS) and os.environ.get("RANK", "0") != "0"):
            return
        _shown.add(key)
        show(message, category, *args, **kwargs)

    show_once.once_per_process = True  # type: ignore[attr-defined]
    return show_once
