"""Run state, DeepSpeed checkpoints and phase hand-off weights, all resumable and validated on load.

Layout of a run directory:
    state.json                   completed phases (with their results), the current phase's last checkpoint, the
                                 submission that last started the run (`sparsetrain.submission`) and `kernels`:
                                 its regularizer, gradient path and resolved backend (`report.kernel_setup`)
    checkpoints/<phase>-stepN/   DeepSpeed checkpoint (weights, optimizer, LR schedule, client state) + RNG/rank
                                 + each rank's packed masks (masks-rank<r>.safetensors, by element range)
    weights/<phase>.safetensors  model weights at the end of each phase (start point of the next phase)

Elastic resume: a checkpoint written by N ranks resumes on M ranks. Under ZeRO 0 DeepSpeed's checkpoint holds the
whole model and optimizer, readable by any number of ranks. Under ZeRO 1-3 each rank wrote its partition; rank 0
converts the checkpoint once with DeepSpeed's own universal-checkpoint tool (`ds_to_universal`, into
`<tag>-universal/`: every parameter's fp32 value and optimizer state whole), which every rank then loads through
DeepSpeed's `load_universal` path, cutting its new partition; module buffers (BatchNorm statistics), which that path
leaves alone, come from rank 0's model states (`restore_buffers`). That tool and DeepSpeed's ZeRO-3 loader know Adam's
state only (exp_avg, exp_avg_sq), so elastic resume under ZeRO >= 1 needs optim.name adam or adamw. Masks are
read back by element ranges (`pruning.sharded_masks.read_ranges`), the batch order is a function of the step, and
the regularizer state is identical on every rank.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sparsetrain.engine.distributed import DistInfo, barrier
from sparsetrain.errors import ResumeError
from sparsetrain.pruning.sharded_masks import ShardedMasks, read_ranges, write_range_file

STATE_FILE = "state.json"  # the run's completed phases and current checkpoint (layout above)
UNIVERSAL_OPTIMIZERS = ("adam", "adamw")  # the optimizer states ds_to_universal and the ZeRO-3 loader know


class CheckpointError(ResumeError):
    """A checkpoint or run-state file is missing, truncated or from an incompatible run."""


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:160]}" if text else type(err).__name__


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _parse_run_state(path: Path) -> dict[str, Any]:
    """state.json's content, checked to be a mapping with a `completed` mapping.

    Raises:
        OSError: unreadable. ValueError: not JSON, or not of that shape.
    """
    state = json.loads(path.read_text())
    if not isinstance(state, dict) or not isinstance(state.get("completed"), dict):
        raise ValueError("missing 'completed'")
    return state


def load_run_state(out_dir: Path) -> dict[str, Any]:
    """{"completed": {phase: results}, "current": {"phase", "tag", "step"} | None}; a fresh state when there is no
    state.json yet.

    Raises:
        CheckpointError: state.json is unreadable or malformed (one line naming it and the way out).
    """
    path = out_dir / STATE_FILE
    if not path.exists():
        return {"completed": {}, "current": None}
    try:
        return _parse_run_state(path)
    except (ValueError, OSError) as err:
        raise CheckpointError(f"resume: {path} is corrupt ({_first_line(err)}); delete the run dir or set "
                              "resume=false") from None


def read_run_state(out_dir: Path) -> dict[str, Any] | None:
    """state.json of the run directory `out_dir`, or None when it is missing, unreadable or malformed (the same
    check as `load_run_state`): for looking at a run from outside it (the resume settings check, export, eval,
    `model.checkpoint`), where a directory without a usable state is simply not a run with finished phases; the
    pipeline itself reports a corrupt state.json through `load_run_state`."""
    try:
        return _parse_run_state(out_dir / STATE_FILE)
    except (ValueError, OSError):
        return None


def write_run_state(out_dir: Path, state: dict[str, Any]) -> None:
    """Write state.json atomically (the caller is rank 0; no barrier)."""
    atomic_write_text(out_dir / STATE_FILE, json.dumps(state, indent=2))


def save_run_state(out_dir: Path, state: dict[str, Any], dist_info: DistInfo) -> None:
    """Rank 0 writes state.json; every rank waits for it."""
    if dist_info.is_main:
        write_run_state(out_dir, state)
    barrier()


RUN_OUTPUTS = ("state.json", "checkpoints", "weights", "export", "baselines", "report.json", "metrics.jsonl",
               "wandb_run_id.txt")


def clear_run_outputs(out_dir: Path, keep: tuple[str, ...] = ()) -> None:
    """Remove a previous run's state and results before a fresh start (logs of launchers and W&B stay, and the
    `RUN_OUTPUTS` names in `keep`: already the new run's, e.g. its W&B run id)."""
    for name in (name for name in RUN_OUTPUTS if name not in keep):
        path = out_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Checkpointer:
    """Saves and restores mid-phase DeepSpeed checkpoints of one run directory."""

    def __init__(self, out_dir: Path, dist_info: DistInfo, keep: int) -> None:
        self.out_dir, self.dist, self.keep = out_dir, dist_info, keep
        self.ckpt_dir = out_dir / "checkpoints"

    def save(self, engine: Any, phase: str, step: int, client_state: dict[str, Any], state: dict[str, Any],
             masks: ShardedMasks | None = None, elapsed_s: float | None = None) -> str:
        """Write checkpoint `<phase>-step<step>` and point state.json's `current` at it, with `elapsed_s` (the phase's
        wall seconds so far, which a resume continues from); returns the tag."""
        tag = f"{phase}-step{step:07d}"
        engine.save_checkpoint(str(self.ckpt_dir), tag=tag, client_state=client_state)
        torch.save(rng_state(), self.ckpt_dir / tag / f"rng-rank{self.dist.rank}.pt")
        if masks is not None:
            write_range_file(self.ckpt_dir / tag / f"masks-rank{self.dist.rank}.safetensors", masks.shards.values())
        barrier()  # every rank's files are on disk before state.json points at them
        state["current"] = {"phase": phase, "tag": tag, "step": step, "world_size": self.dist.world_size,
                            "elapsed_s": elapsed_s}
        save_run_state(self.out_dir, state, self.dist)
        self._remove_old(phase, tag)
        return tag

    def _remove_old(self, phase: str, newest: str) -> None:
        if not self.dist.is_main:
            return
        tags = sorted(p.name for p in self.ckpt_dir.glob(f"{phase}-step*") if p.is_dir()
                      and not p.name.endswith("-universal"))
        for tag in tags[:-self.keep]:
            if tag != newest:
                shutil.rmtree(self.ckpt_dir / tag, ignore_errors=True)
                shutil.rmtree(self.ckpt_dir / f"{tag}-universal", ignore_errors=True)

    def saved_world_size(self, tag: str, recorded: int | None) -> int:
        """Ranks that wrote checkpoint `tag` (from state.json; counted from its RNG files for older runs)."""
        return recorded or len(list((self.ckpt_dir / tag).glob("rng-rank*.pt"))) or self.dist.world_size

    def prepare_elastic(self, tag: str, saved_world: int, zero_stage: int, optimizer: str) -> bool:
        """Whether checkpoint `tag` must load through DeepSpeed's universal format (written by another number of
        ranks under ZeRO >= 1); then rank 0 converts it once (`<tag>-universal/`). All ranks call this.

        Raises:
            CheckpointError: the conversion cannot hold this optimizer's state, or failed (one line).
        """
        if saved_world == self.dist.world_size or zero_stage == 0:
            return False
        if optimizer not in UNIVERSAL_OPTIMIZERS:
            raise CheckpointError(f"resume: checkpoint {self.ckpt_dir / tag} was written by {saved_world} ranks; "
                                  f"resuming on {self.dist.world_size} under ZeRO {zero_stage} goes through "
                                  f"DeepSpeed's universal checkpoint, which holds the state of optim.name "
                                  f"{'/'.join(UNIVERSAL_OPTIMIZERS)} only (got {optimizer}); resume on {saved_world} "
                                  "ranks")
        target = self.ckpt_dir / f"{tag}-universal"
        if self.dist.is_main and not (target / "zero").is_dir():
            _to_universal(self.ckpt_dir / tag, target)
        barrier()
        return True

    def load(self, engine: Any, tag: str, universal: bool = False) -> dict[str, Any]:
        """Restore engine state and this rank's RNG (rank 0's when the checkpoint had fewer ranks); returns the
        client state. `universal`: read the converted checkpoint of `prepare_elastic` (its module buffers from rank
        0's model states, `restore_buffers`)."""
        where = self.ckpt_dir / tag
        if not where.is_dir():
            raise CheckpointError(f"resume: checkpoint {where} is missing; delete the run dir or set resume=false")
        rng_file = where / f"rng-rank{self.dist.rank}.pt"
        try:
            path, client_state = engine.load_checkpoint(str(self.ckpt_dir),
                                                        tag=f"{tag}-universal" if universal else tag)
            if universal and path is not None:
                restore_buffers(engine.module, where)
            rng = torch.load(rng_file if rng_file.exists() else where / "rng-rank0.pt", weights_only=False)
        except Exception as err:  # torch/DeepSpeed raise many types for truncated files
            raise CheckpointError(f"resume: checkpoint {where} is unreadable ({_first_line(err)}); delete it or "
                                  "set resume=false") from None
        if path is None or client_state is None:
            raise CheckpointError(f"resume: checkpoint {where} could not be loaded; delete it or set resume=false")
        set_rng_state(rng)
        return client_state

    def load_masks(self, tag: str, wanted: list[tuple[str, int, int]], device: torch.device) -> ShardedMasks | None:
        """The masks of element ranges `wanted` from checkpoint `tag`'s per-rank files (any number of ranks wrote
        them); None when the checkpoint has no masks."""
        files = sorted((self.ckpt_dir / tag).glob("masks-rank*.safetensors"))
        if not files:
            return None
        try:
            return read_ranges(files, wanted, device)
        except (ValueError, OSError) as err:
            raise CheckpointError(f"resume: masks of checkpoint {self.ckpt_dir / tag} are unreadable "
                                  f"({_first_line(err)}); delete it or set resume=false") from None

    def clear_phase(self, phase: str) -> None:
        """Drop a finished phase's mid-phase checkpoints (its end weights live in weights/), and DeepSpeed's files
        that only served them (`_remove_leftovers`)."""
        if self.dist.is_main:
            for path in self.ckpt_dir.glob(f"{phase}-step*"):
                shutil.rmtree(path, ignore_errors=True)
            (self.ckpt_dir / "latest_universal").unlink(missing_ok=True)
            self._remove_leftovers()
        barrier()

    def _remove_leftovers(self) -> None:
        """What DeepSpeed's `save_checkpoint` writes beside the step folders: `latest` once the tag it names is
        gone, and when no checkpoint folder remains its `zero_to_fp32.py` / `zero_to_torch.py` scripts and the empty
        `checkpoints/` itself. A resume never reads them: it loads the tag state.json names, and a phase's next
        checkpoint writes them again."""
        latest = self.ckpt_dir / "latest"
        if latest.is_file() and not (self.ckpt_dir / latest.read_text().strip()).is_dir():
            latest.unlink()
        if self.ckpt_dir.is_dir() and not any(path.is_dir() for path in self.ckpt_dir.iterdir()):
            for script in self.ckpt_dir.glob("zero_to_*.py"):
                script.unlink()
            with contextlib.suppress(OSError):  # something else is there: left as it is
                self.ckpt_dir.rmdir()


MODEL_STATES = ("mp_rank_00_model_states.pt",  # DeepSpeed's module state without ZeRO 3 (rank 0 writes it)
                "zero_pp_rank_0_mp_rank_00_model_states.pt")  # ZeRO 3: one per rank, rank 0's


@torch.no_grad()
def restore_buffers(module: torch.nn.Module, folder: Path) -> None:
    """Load `module`'s buffers (BatchNorm running statistics and batch counts) from rank 0's DeepSpeed model states
    in checkpoint `folder`.

    DeepSpeed's universal-checkpoint load (elastic resume) restores parameters and optimizer state from `zero/` and
    skips the module state (`DeepSpeedEngine._load_checkpoint` calls `load_module_state_dict` only without
    `load_universal`), so the buffers would stay those of the phase's start. Every rank holds the same buffers when a
    checkpoint is written (`distributed.average_norm_statistics`), so rank 0's are every rank's.

    Raises:
        OSError, KeyError: no model-states file, or one without the module's buffers (`load` reports it in one line).
    """
    path = next((folder / name for name in MODEL_STATES if (folder / name).is_file()), folder / MODEL_STATES[0])
    saved = torch.load(path, map_location="cpu", weights_only=False, mmap=True)["module"]
    persistent = set(module.state_dict())  # non-persistent buffers are not saved
    for name, buffer in module.named_buffers():
        if name in persistent:
            buffer.copy_(saved[name])


def _to_universal(source: Path, target: Path) -> None:
    """DeepSpeed's ds_to_universal on one checkpoint folder, in this process (no worker pool), quietly."""
    import io
    from types import SimpleNamespace

    from deepspeed.checkpoint.ds_to_universal import main as ds_to_universal

    args = SimpleNamespace(input_folder=str(source), output_folder=str(target), num_extract_workers=1,
                           num_merge_workers=1, keep_temp_folder=False, strict=True, inject_missing_state=False)
    output = io.StringIO()
    try:
        with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
            ds_to_universal(args)
    except Exception as err:  # DeepSpeed raises assertion/key/runtime errors for checkpoints it cannot convert
        shutil.rmtree(target, ignore_errors=True)
        raise CheckpointError(f"resume: could not convert {source} to DeepSpeed's universal checkpoint "
                              f"({_first_line(err)})") from None


def save_weights(path: Path, tensors: dict[str, torch.Tensor], dist_info: DistInfo) -> None:
    """Rank 0 writes a safetensors file atomically; everyone waits for it."""
    from safetensors.torch import save_file

    if dist_info.is_main:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp))
        os.replace(tmp, path)
    barrier()


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    if not path.is_file():
        raise CheckpointError(f"resume: phase weights {path} are missing; delete the run dir or set resume=false")
    try:
        return load_file(str(path))
    except Exception as err:  # safetensors raises its own error types for truncated files
        raise CheckpointError(f"resume: phase weights {path} are unreadable ({_first_line(err)})") from None
