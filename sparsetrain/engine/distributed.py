"""Process-group set-up from the standard env vars, and small collective helpers."""

from __future__ import annotations

import contextlib
import glob
import hashlib
import io
import os
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

# what `init_distributed` sets for a process started without a launcher (a single rank)
SINGLE_PROCESS_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pick_device(preference: str, local_rank: int) -> torch.device:
    """cuda:<local_rank> when asked for (or auto and available), else cpu."""
    if preference == "cuda" and not torch.cuda.is_available():
        raise ValueError("train.device: cuda requested but no CUDA device is visible")
    if preference in ("cuda", "auto") and torch.cuda.is_available():
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def use_environment_extension_cache() -> None:
    """Give this Python environment its own JIT-extension cache, unless TORCH_EXTENSIONS_DIR is set.

    DeepSpeed compiles its CPU comm op on first use (~30 s of two cores) into torch's extension cache. The build is
    keyed by include paths inside the environment, so two environments sharing ~/.cache/torch_extensions rebuild
    each other's op in turn, and their runs wait on each other's build lock (minutes).
    """
    if "TORCH_EXTENSIONS_DIR" not in os.environ:
        env_id = hashlib.sha256(sys.prefix.encode()).hexdigest()[:12]
        cache = os.path.join(os.path.expanduser("~"), ".cache", "torch_extensions", f"env-{env_id}")
        os.environ["TORCH_EXTENSIONS_DIR"] = cache


SHM_OP = "deepspeed_shm_comm"  # DeepSpeed's ShareMemCommBuilder.NAME: its CPU shared-memory comm op
SHM_OP_BUILT = f"DeepSpeed deepspeed.ops.comm.{SHM_OP}_op built successfully"  # printed on every start, also cached


def comm_op_build_note() -> str | None:
    """The line to print before DeepSpeed JIT-compiles its CPU comm op, None when it will not compile.

    DeepSpeed's process group (`deepspeed.comm.torch.build_shm_op`) builds the op when its accelerator has one (the
    CPU accelerator; compatible, not installed prebuilt), unless torch's extension cache holds it already:
    `$TORCH_EXTENSIONS_DIR/deepspeed_shm_comm[_vN]/deepspeed_shm_comm[_vN].so` (`use_environment_extension_cache`).
    """
    import deepspeed.ops
    from deepspeed.accelerator import get_accelerator
    from deepspeed.git_version_info import installed_ops

    builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
    if builder is None or not deepspeed.ops.__compatible_ops__.get(builder.NAME, False) or installed_ops.get(
            builder.NAME, False):
        return None
    cache = os.environ.get("TORCH_EXTENSIONS_DIR")
    if cache is None or glob.glob(os.path.join(glob.escape(cache), f"{SHM_OP}*", f"{SHM_OP}*.so")):
        return None
    return f"building DeepSpeed's CPU communication op once (~1 min, cached in {cache})"


@contextlib.contextmanager
def _without_line(line: str) -> Iterator[None]:
    """Print what the block prints to stdout, without the lines that are exactly `line` (printed when it ends)."""
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stdout(buffer):
            yield
    finally:
        sys.stdout.write("".join(kept for kept in buffer.getvalue().splitlines(keepends=True)
                                 if kept.rstrip("\n") != line))


def init_distributed(device_preference: str, backend: str, timeout_min: float = 10.0) -> DistInfo:
    """Initialize torch.distributed through DeepSpeed from RANK/WORLD_SIZE/... (single process when unset)."""
    use_environment_extension_cache()
    import deepspeed

    if "WORLD_SIZE" not in os.environ:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",  # SINGLE_PROCESS_ENV
                          MASTER_PORT=str(_free_port()))
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    device = pick_device(device_preference, local_rank)
    if backend == "auto":
        backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        note = comm_op_build_note()
        if note and local_rank == 0:  # the ranks of a node build it in turn (a file lock); the first one takes long
            print(note, file=sys.stderr, flush=True)
        # DeepSpeed's "built successfully" follows a build, said by the rank that builds; after only loading the
        # cached op (also the node's other ranks, which wait for that build) it says nothing new
        with contextlib.nullcontext() if note and local_rank == 0 else _without_line(SHM_OP_BUILT):
            deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False, verbose=False,
                                       timeout=timedelta(minutes=timeout_min))
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=device)


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over all ranks (no-op for one process). gloo needs CPU tensors for float64 on CPU anyway."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_min(tensor: torch.Tensor) -> torch.Tensor:
    """Element-wise minimum over all ranks, in place (no-op for one process)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
    return tensor


def average_norm_statistics(module: torch.nn.Module) -> None:
    """Replace every rank's BatchNorm running statistics (buffers named running_mean / running_var) by their mean
    over the ranks, in place; a collective every rank runs (no-op for one process). `num_batches_tracked` needs
    nothing: every rank counts the same steps.

    Each rank updates these buffers from its own micro-batches and nothing in DeepSpeed syncs them (ZeRO 0-3
    partition parameters, never buffers), so without this each rank would evaluate its shard of the test set with
    other statistics than the ones rank 0 saves and exports. The mean is what timm's training script keeps
    (`timm.utils.distribute_bn(reduce=True)`, called here): like the statistics of the global batch, unlike rank 0's
    alone. The update rule is linear, so averaging at every checkpoint and at the phase end gives the same end
    values as averaging once.
    """
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return
    from timm.utils import distribute_bn

    distribute_bn(module, dist.get_world_size(), reduce=True)


def any_rank(flag: bool, device: torch.device) -> bool:
    """True when `flag` is set on any rank (a collective: every rank must call it).

    One process needs no collective, and skipping it avoids a device sync every step on the GPU.
    """
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    return bool(all_reduce_sum(value).item() > 0)


def shutdown_distributed() -> None:
    """Destroy the process group at the end of a run (NCCL warns about leaked resources otherwise).

    Through DeepSpeed's `deepspeed.comm.destroy_process_group`, which also drops the groups DeepSpeed cached
    (`deepspeed.utils.groups`): torch's own call left those behind, and the next run in the same process (a second
    `cli.main(["run", ...])`) failed with "Group ... is not registered".
    """
    if dist.is_initialized():
        import deepspeed.comm

        deepspeed.comm.destroy_process_group()


@contextlib.contextmanager
def process_group_scope() -> Iterator[None]:
    """Leave torch.distributed as the block found it (a library call: the process is the caller's).

    A process group that exists before the block (the caller's own) is used and left alone. One the block creates
    (`init_distributed`) is destroyed at its end, also when it raises, with what its set-up changed process-wide:
    `sys.excepthook` (torch's `init_process_group` installs one that prefixes every later traceback with `[rank0]:`)
    and the variables `init_distributed` sets for a single process (RANK, WORLD_SIZE, ...).
    """
    if dist.is_initialized():
        yield
        return
    hook, env = sys.excepthook, {key: os.environ.get(key) for key in SINGLE_PROCESS_ENV}
    try:
        yield
    finally:
        shutdown_distributed()
        sys.excepthook = hook
        for key, value in env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def broadcast_object(obj: object) -> object:
    """Rank 0's object on every rank."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
