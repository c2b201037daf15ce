"""Deterministic batch order: the batch of any global step is a pure function of (seed, phase, step).

That is what makes resume exact (no repeated or skipped samples) and makes N ranks see the same global batch
as one rank: the global batch of a step is split into world_size × grad_accum equal micro-batches.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset

from sparsetrain.errors import InputError, SparsetrainError


def check_batch_split(global_batch: int, world_size: int, grad_accum: int) -> int:
    """The number of micro-batches a global batch is split into (world_size × grad_accum), as `run` and `--dry-run`
    check it.

    Raises:
        InputError: one line naming `train.batch_size` and every factor when they do not divide it.
    """
    parts = world_size * grad_accum
    if global_batch % parts:
        raise InputError(f"train.batch_size: {global_batch} is not divisible by world_size {world_size} × "
                         f"gradient_accumulation_steps {grad_accum} = {parts}")
    return parts


@dataclass(frozen=True)
class BatchPlan:
    num_samples: int
    global_batch: int
    world_size: int
    rank: int
    grad_accum: int
    seed: int

    def __post_init__(self) -> None:
        parts = check_batch_split(self.global_batch, self.world_size, self.grad_accum)
        if self.global_batch > self.num_samples:
            fits = self.num_samples // parts * parts  # the largest batch that fits and divides into the ranks' parts
            hint = (f"; set train.batch_size={fits} or less" if fits else
                    f"; fewer than world_size × gradient_accumulation_steps = {parts}")
            raise InputError(f"train.batch_size: {self.global_batch} exceeds the {self.num_samples} training "
                             f"samples{hint}")

    @property
    def micro_batch(self) -> int:
        return self.global_batch // (self.world_size * self.grad_accum)

    @property
    def steps_per_epoch(self) -> int:
        return self.num_samples // self.global_batch

    def _epoch_order(self, epoch: int) -> torch.Tensor:
        return _epoch_order(self.num_samples, self.seed * 100_003 + epoch)

    def micro_batches(self, step: int) -> list[list[int]]:
        """Sample indices of this rank's micro-batches for optimizer step `step`."""
        epoch, within = divmod(step, self.steps_per_epoch)
        chunk = self._epoch_order(epoch)[within * self.global_batch:(within + 1) * self.global_batch]
        parts = chunk.view(self.grad_accum, self.world_size, self.micro_batch)[:, self.rank]
        return [row.tolist() for row in parts]


@functools.lru_cache(maxsize=2)
def _epoch_order(num_samples: int, seed: int) -> torch.Tensor:
    """The sample order of one epoch (read-only); cached, since a fresh randperm of 60,000 indices every step
    costs as much as a LeNet-300-100 forward pass."""
    return torch.randperm(num_samples, generator=torch.Generator().manual_seed(seed))


class _StepSampler:
    """Batch sampler yielding the micro-batches of steps [start, stop) in order."""

    def __init__(self, plan: BatchPlan, start: int, stop: int) -> None:
        self.plan, self.start, self.stop = plan, start, stop

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start, self.stop):
            yield from self.plan.micro_batches(step)

    def __len__(self) -> int:
        return (self.stop - self.start) * self.plan.grad_accum


def _already_collated(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    return batch


def iterate_micro_batches(dataset: Dataset, plan: BatchPlan, start: int, stop: int,
                          num_workers: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (inputs, targets) micro-batches for steps [start, stop); in-memory sets skip the DataLoader."""
    if hasattr(dataset, "__getitems__") and num_workers == 0:
        for indices in _StepSampler(plan, start, stop):
            yield dataset.__getitems__(indices)
        return
    collate = _already_collated if hasattr(dataset, "__getitems__") else None
    loader = DataLoader(dataset, batch_sampler=_StepSampler(plan, start, stop), num_workers=num_workers,
                        collate_fn=collate)
    yield from worker_errors(loader)


def worker_errors(batches: Iterable) -> Iterator:
    """The batches of a DataLoader, with sparsetrain's own errors raised in a worker process given back their one-line
    message.

    DataLoader re-raises a worker's exception with the worker's traceback as its message (first line `Caught DataError
    in DataLoader worker process 0.`), which would hide the file a `DataError` names; the traceback's last line is
    `<module>.<class>: <message>`.
    """
    try:
        yield from batches
    except SparsetrainError as err:
        lines = str(err).strip().splitlines()
        if len(lines) < 2 or not lines[0].startswith("Caught "):
            raise
        raise type(err)(lines[-1].partition(": ")[2]) from None


def eval_shard(num_samples: int, world_size: int, rank: int) -> range:
    """Contiguous slice of the evaluation set for this rank (sums are all-reduced afterwards)."""
    per_rank = -(-num_samples // world_size)
    return range(rank * per_rank, min(num_samples, (rank + 1) * per_rank))
