"""The project's own errors: every check sparsetrain makes raises one of these, phrased as one line.

The CLI prints such an error as `error: <first line>` (never a traceback) and exits with the class's code:

    0  success
    1  anything else (a bug, or a library failing in a way sparsetrain does not check): traceback
    2  bad input: config, data, pruning settings, launch settings (`InputError` and its subclasses, `ConfigError`
     for the config's values)
    3  resume or preemption: an unreadable checkpoint, or a run stopped on request (SIGTERM, SIGUSR1) after
       saving one (`run` prints one `preempted:` line with the command that resumes, not `error:`), or a rank whose
       peer rank died (one `peer lost:` line with the last checkpoint and the command that resumes)
    4  non-finite numbers: training stopped at the first bad step, the last good checkpoint kept
    5  set-up: a library behaves differently from what sparsetrain was built against (`SetupError`)
  130  interrupted by Ctrl-C: `run` checkpoints at the next step (a second Ctrl-C quits at once) and prints one
       `interrupted:` line with the command that resumes

Subclasses keep the built-in base they always had (`ValueError`, `RuntimeError`) so callers that catch those
still work.
"""

from __future__ import annotations


class SparsetrainError(Exception):
    """Base of every error raised by sparsetrain's own checks; `exit_code` is what the CLI returns."""

    exit_code = 1


class InputError(SparsetrainError, ValueError):
    """Bad input (config, data, settings): one line naming the field and what was expected."""

    exit_code = 2


class ConfigError(InputError):
    """A config problem (a recipe's or an override's value), phrased as one line naming the field and what was
    expected."""


class ResumeError(SparsetrainError, RuntimeError):
    """A run could not continue from its saved state, or stopped on request after saving it."""

    exit_code = 3


class NonFiniteError(SparsetrainError, ArithmeticError):
    """Training produced a non-finite number; nothing after the last good checkpoint was kept."""

    exit_code = 4


class SetupError(SparsetrainError, RuntimeError):
    """A library (DeepSpeed, Triton) is not laid out the way sparsetrain expects."""

    exit_code = 5


def alike_on_every_rank(err: SparsetrainError) -> SparsetrainError:
    """Mark `err` as raised by every rank alike (a check of the settings that gives the same answer everywhere, e.g.
    `train.batch_size` against the world size): the CLI prints it from rank 0 only, not once per rank."""
    err.alike_on_every_rank = True
    return err


def said_here(err: BaseException, rank: str) -> bool:
    """Whether this rank (RANK; "0" in a single process) prints `err`: rank 0 always; the others unless `err` is one
    every rank raised alike (`alike_on_every_rank`)."""
    return rank == "0" or not getattr(err, "alike_on_every_rank", False)


def first_line(err: BaseException) -> str:
    """The first line of an error's message (the whole message for one-line errors)."""
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__
