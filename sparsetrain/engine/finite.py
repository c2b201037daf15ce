"""Stop at the first non-finite number: in a training step, in weights about to be saved, in phase results.

During training, `FiniteGuard` keeps a device-side record of the first optimizer step at which an input batch,
the task loss, the regularizer value or the gradient norm was NaN or ±inf. Recording never synchronizes with the
host; the loop reads the record at its check points (every step on CPU and with several ranks, where a
collective runs every step anyway; on one GPU at log, checkpoint and phase boundaries), so the error still names
the exact step, and no checkpoint, log line or phase result is ever written after it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from sparsetrain.config.schema import RunConfig
from sparsetrain.errors import NonFiniteError
from sparsetrain.phases import FINETUNE, SPARSIFY, TRAINING_PHASES

CAUSES = ("input data", "loss", "regularizer value", "gradient norm")  # reported in this order within a step
INPUTS, LOSS, REGULARIZER, GRAD_NORM = range(len(CAUSES))
NO_STEP = 2**62  # "no bad step yet"; larger than any step code
NONFINITE_STOP = "non-finite"  # state.json `current.stopped` after a stop on NaN/inf (`rundir.record_nonfinite_stop`)


class FiniteGuard:
    """Device-side record of the first bad step, as one int64 code `step · len(CAUSES) + cause`."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.first = torch.full((), NO_STEP, dtype=torch.int64, device=device)
        self._bad = torch.zeros(len(CAUSES), dtype=torch.bool, device=device)

    def begin_step(self) -> None:
        self._bad = torch.zeros(len(CAUSES), dtype=torch.bool, device=self.device)

    def note(self, cause: int, value: torch.Tensor) -> None:
        """Flag `cause` for this step when any element of `value` is not finite (no host sync)."""
        bad = ~torch.isfinite(value.detach()).all()
        self._bad[cause] = self._bad[cause] | bad.to(self.device)

    def flag(self, cause: int) -> None:
        """Flag `cause` from a fact the host already knows (DeepSpeed skipped the step on an overflow)."""
        self._bad[cause] = True

    def end_step(self, step: int) -> None:
        """Fold this step's flags into the record; `step` is 1-based like the logged steps."""
        first_cause = torch.argmax(self._bad.to(torch.int8))  # index of the first True
        code = torch.where(self._bad.any(), step * len(CAUSES) + first_cause, NO_STEP)
        torch.minimum(self.first, code, out=self.first)


def decode(code: int) -> tuple[int, str] | None:
    """(step, cause) of a record, or None when every step so far was finite."""
    if code >= NO_STEP:
        return None
    step, cause = divmod(code, len(CAUSES))
    return step, CAUSES[cause]


def nonfinite_stops_from(state: dict[str, Any], phase: str) -> int:
    """How many earlier attempts stopped on non-finite numbers after continuing from `phase`'s current checkpoint (0:
    none, or a newer checkpoint was saved since; a mark from before the count was kept counts once)."""
    current = state.get("current") or {}
    if current.get("phase") != phase or current.get("stopped") != NONFINITE_STOP:
        return 0
    return int(current.get("nonfinite_stops", 1))


def hint(cfg: RunConfig, phase: str, cause: str) -> str:
    """What to change, in config terms, after a non-finite `cause`."""
    if cause == "input data":
        where = f"data.source={cfg.data.source}" + (f", data.path={cfg.data.path}" if cfg.data.path else "")
        return f"check the data ({where}): it holds NaN or inf"
    phase_lr = getattr(cfg.phases, phase).lr if phase in TRAINING_PHASES else None
    lr = phase_lr or cfg.optim.lr
    clip = cfg.deepspeed.gradient_clipping
    parts = [f"lower optim.lr or phases.{phase}.lr (now {lr:g})"]
    if cause == "regularizer value":  # the penalty itself overflowed: its strength comes first
        parts.insert(0, f"lower {_strength(cfg, phase)}")
    if clip == 0:
        parts.append("enable deepspeed.gradient_clipping (e.g. 1.0)")
    parts.append("or check the data")
    return ", ".join(parts)


def _strength(cfg: RunConfig, phase: str) -> str:
    """The strength settings of the penalty `phase` trains with, with their values (`regularizer.alpha0 (now 1e+37)
    or regularizer.alpha2 (now 0.0001)`)."""
    reg = cfg.regularizer
    names = reg.STRENGTH if phase == SPARSIFY or (phase == FINETUNE and reg.penalty_in_finetune) else ("alpha2",)
    return " or ".join(f"regularizer.{name} (now {getattr(reg, name):g})" for name in names)


def training_error(cfg: RunConfig, phase: str, step: int, total: int, cause: str, resume_note: str) -> NonFiniteError:
    """The one-line error for a bad training step."""
    return NonFiniteError(f"non-finite {cause} at {phase} step {step}/{total}: {hint(cfg, phase, cause)}; "
                          f"{resume_note}")


def nonfinite_names(tensors: Mapping[str, torch.Tensor]) -> list[str]:
    """Names of the tensors holding NaN or inf, in order (one host sync for all of them)."""
    names = [n for n, t in tensors.items() if t.is_floating_point()]
    if not names:
        return []
    bad = torch.stack([~torch.isfinite(tensors[n].detach()).all() for n in names]).cpu().tolist()
    return [n for n, b in zip(names, bad, strict=True) if b]


def require_finite(tensors: Mapping[str, torch.Tensor], what: str, advice: str) -> None:
    """Raise `NonFiniteError` naming the first tensors that hold NaN or inf.

    Args:
        tensors: name → tensor (non-float tensors are skipped).
        what: what the tensors are, e.g. "sparsify weights".
        advice: what the user should do, appended after a semicolon.
    """
    bad = nonfinite_names(tensors)
    if bad:
        shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise NonFiniteError(f"non-finite values in {what} ({shown}); {advice}")


def require_finite_results(results: Mapping[str, object], phase: str, data: str | None = None) -> None:
    """Phase results (metrics) must be finite numbers before they are recorded as the phase's outcome (or, in
    `sparsetrain eval`, printed as a measurement).

    Args:
        results: name → value (only floats are checked).
        phase: whose results, e.g. "dense" or "eval".
        data: the test data in config terms (`data.source=npz, data.path=x.npz`), named in the error when given.

    Raises:
        NonFiniteError: naming the results that are NaN or inf.
    """
    bad = [k for k, v in results.items() if isinstance(v, float) and not torch.isfinite(torch.tensor(v))]
    if bad:
        where = f" ({data})" if data else ""
        raise NonFiniteError(f"non-finite {phase} result(s) {', '.join(bad)} (evaluation on the test split); "
                             f"check the test data{where} for NaN or inf")
