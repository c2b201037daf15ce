"""The one phase vocabulary: names, order and roles of the pipeline's phases (used everywhere, written once).

    dense     dense baseline training (l2 only), the reference the compressed model is compared with
    sparsify  training with the sparsity strategy (regularizer.name)
    prune     choose what to drop (prune.rule): zero weights under masks (Method 1), or remove filters (Method 2)
    finetune  training of what is left: masked weights stay zero, or the smaller model trains as it is

`report.json` is keyed by these names (`sparsetrain.report`), as are `state.json`, the checkpoints and the
weights in `weights/<phase>.safetensors`.
"""

from __future__ import annotations

from typing import Literal

Phase = Literal["dense", "sparsify", "prune", "finetune"]
DENSE: Phase = "dense"
SPARSIFY: Phase = "sparsify"
PRUNE: Phase = "prune"
FINETUNE: Phase = "finetune"

PHASES: tuple[Phase, ...] = (DENSE, SPARSIFY, PRUNE, FINETUNE)  # run order
TRAINING_PHASES: tuple[Phase, ...] = (DENSE, SPARSIFY, FINETUNE)  # phases that take optimizer steps (config phases.*)
PHASE_SEEDS: dict[Phase, int] = {DENSE: 1, SPARSIFY: 2, PRUNE: 3, FINETUNE: 4}  # data-order seed offsets


def final_phase(completed: dict[str, object]) -> Phase | None:
    """The last phase in run order among `completed` (the one whose weights are the run's result), or None."""
    return next((phase for phase in reversed(PHASES) if phase in completed), None)


def check_phases(wanted: list[str]) -> None:
    """Raises ValueError (one line naming `phase`) when a name is not a phase."""
    unknown = sorted(set(wanted) - set(PHASES))
    if unknown:
        raise ValueError(f"phase: unknown phase(s) {', '.join(unknown)}; expected {', '.join(PHASES)}")
