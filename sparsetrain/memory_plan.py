"""Per-rank memory plan of a run before it starts: model states under ZeRO, masks, activations.

Model states follow the ZeRO accounting (Rajbhandari et al., "ZeRO: Memory Optimizations Toward Training Trillion
Parameter Models", SC 2020, Sec. 3-5) as DeepSpeed implements it, for Ψ parameters and N data-parallel ranks:

    working weights   w·Ψ              (w = 2 bytes in bf16, 4 in fp32)          / N from ZeRO stage 3
    working grads     w·Ψ                                                         / N from stage 2
    fp32 grads        4·Ψ              (bf16 only: DeepSpeed accumulates in fp32) / N from stage 1
    fp32 masters      4·Ψ              (bf16, or any ZeRO stage >= 1)              / N from stage 1
    optimizer state   k·4·Ψ            (Adam/AdamW k = 2, SGD with momentum k = 1) / N from stage 1
    stage-3 gather    2·w·L            (the largest layer's weights and grads, L its parameter count)
    buffers           w·min(bucket, Ψ) per communication bucket at DeepSpeed's default sizes (reduce and
                      all-gather buckets for stages 1-2, reduce and prefetch buckets for stage 3)

`deepspeed.offload_optimizer=cpu` moves fp32 grads, masters and optimizer state to host memory. Masks cost one
bit per prunable weight (packed), each rank holding those of its optimizer partition (all of them under ZeRO 0),
beside the fp32 masters (in host memory under offload); the gradient
regularizers add no tensor of the weights' size (fused in place). Activations are what autograd saves for
backward in a forward pass on the meta device at the micro-batch size (no memory, no compute; the same bytes a
real forward saves); with `train.grad_checkpointing`, the checkpointed forward's saved tensors plus one block's
activations, held again while backward recomputes that block. Allocator fragmentation and kernels' scratch space
are not counted. DeepSpeed's own estimator of the model states is shown beside ours (mixed-precision Adam;
`estimate_zero2/3_model_states_mem_needs`) as a cross-check.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

MASK_BYTES_PER_WEIGHT = 1 / 8  # keep-masks packed 1 bit per weight (pruning.sharded_masks)
GiB = 2**30


@dataclass(frozen=True)
class MemoryPlan:
    """Bytes per rank, by kind. `gpu`: parameters, gradients, optimizer, masks, buffers, activations, total."""

    world_size: int
    micro_batch: int
    zero_stage: int
    precision: str
    offload: str
    total_params: int
    largest_layer: int
    prunable: int
    gpu: dict[str, int] = field(default_factory=dict)
    cpu: dict[str, int] = field(default_factory=dict)
    deepspeed_estimate: int | None = None  # DeepSpeed's estimate of model states per GPU, when it applies
    checkpointing: bool = False  # train.grad_checkpointing: activations counted for a checkpointed forward


def _largest_layer(model: nn.Module) -> int:
    return max((sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules()), default=0)


def _optimizer_slots(name: str, momentum: float) -> int:
    """fp32 state tensors per parameter kept by the optimizer."""
    if name in ("adam", "adamw"):
        return 2
    return 1 if momentum > 0 else 0


def model_states(total: int, largest: int, stage: int, bf16: bool, slots: int, world: int, offload: bool
                 ) -> tuple[dict[str, int], dict[str, int]]:
    """(GPU bytes, host bytes) per rank for the model states (see the module docstring for the formulas)."""
    w = 2 if bf16 else 4
    split = lambda bytes_, from_stage: bytes_ // world if stage >= from_stage else bytes_  # noqa: E731
    params = split(w * total, 3) + (2 * w * largest if stage == 3 else 0)
    grads = split(w * total, 2)
    fp32_grads = split(4 * total, 1) if bf16 else 0
    masters = split(4 * total, 1) if (bf16 or stage >= 1) else 0
    states = split(4 * slots * total, 1)
    offloaded = {"gradients": fp32_grads, "optimizer": masters + states}
    if offload:
        return {"parameters": params, "gradients": grads, "optimizer": 0}, offloaded
    return {"parameters": params, "gradients": grads + fp32_grads, "optimizer": masters + states}, {}


def communication_buffers(total: int, stage: int, bf16: bool) -> int:
    """Bytes of DeepSpeed's gradient-reduction / parameter-gather buckets at its default sizes."""
    if stage == 0:
        return 0
    from deepspeed.runtime.zero.config import DeepSpeedZeroConfig

    defaults = DeepSpeedZeroConfig(stage=stage)
    second = defaults.prefetch_bucket_size if stage == 3 else defaults.allgather_bucket_size
    return (2 if bf16 else 4) * (min(defaults.reduce_bucket_size, total) + min(second, total))


def _repeated_blocks(model: nn.Module) -> list[nn.Module]:
    """Children of the innermost containers holding >= 2 modules of one class (ViT blocks, ResNet/ConvNeXt
    stages' blocks): the units timm's `set_grad_checkpointing` recomputes one at a time."""
    blocks = []
    for module in model.modules():
        if isinstance(module, (nn.Sequential, nn.ModuleList)):
            children = list(module.children())
            inner = any(isinstance(m, (nn.Sequential, nn.ModuleList)) for c in children for m in c.modules())
            if len(children) >= 2 and len({type(c) for c in children}) == 1 and not inner:
                blocks.extend(children)
    return blocks


def saved_for_backward(model: nn.Module, x: torch.Tensor) -> tuple[int, dict[int, int]]:
    """Bytes autograd saves for backward in one forward pass (parameters excluded, views and in-place results
    counted once), in total and per repeated block (by `id`). On the meta device this costs nothing and gives
    exactly what a real CPU forward saves."""
    params = {id(p) for p in model.parameters()}
    blocks = _repeated_blocks(model)
    current: list[int] = []
    saved: dict[int, tuple[torch.Tensor, int | None]] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        base = t._base if t._base is not None else t
        if id(base) not in params and id(base) not in saved:
            saved[id(base)] = (base, current[-1] if current else None)  # the reference keeps ids unique
        return t

    def enter(module: nn.Module, _args: object) -> None:
        current.append(id(module))

    def leave(_module: nn.Module, _args: object, _out: object) -> None:
        current.pop()

    handles = [b.register_forward_pre_hook(enter) for b in blocks] + [b.register_forward_hook(leave) for b in blocks]
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    per_block: dict[int, int] = {}
    for tensor, block in saved.values():
        if block is not None:
            per_block[block] = per_block.get(block, 0) + tensor.numel() * tensor.element_size()
    return sum(t.numel() * t.element_size() for t, _ in saved.values()), per_block


def activation_bytes(model: nn.Module, input_shape: tuple[int, ...], micro_batch: int, dtype: torch.dtype,
                     checkpointing: bool) -> int:
    """Activation bytes autograd keeps on one rank at the peak of backward (see the module docstring).

    Args:
        model: The model on the meta device, in training mode; its grad-checkpointing flag is restored.
        input_shape: One sample's shape (C, H, W).
        micro_batch: Samples per rank and micro-step.
        dtype: Activation dtype (bf16 runs compute in bf16).
        checkpointing: Whether repeated blocks are recomputed in backward: then the forward keeps only block
            inputs, and backward holds one block's activations again while recomputing it.
    """
    model = model.to(dtype)
    x = torch.empty(micro_batch, *input_shape, device="meta", dtype=dtype)
    total, per_block = saved_for_backward(model, x)
    if not checkpointing or not hasattr(model, "set_grad_checkpointing"):
        return total
    model.set_grad_checkpointing(True)
    try:
        kept, _ = saved_for_backward(model, x)
    finally:
        model.set_grad_checkpointing(False)
    return kept + max(per_block.values(), default=0)


def _deepspeed_estimate(total: int, largest: int, stage: int, world: int, offload: bool) -> int | None:
    """DeepSpeed's own model-state estimate per GPU (it assumes mixed-precision Adam, one node of `world` GPUs)."""
    if stage == 3:
        from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

        return estimate_zero3_model_states_mem_needs(total, largest, world, 1, cpu_offload=offload,
                                                     cpu_offload_params=False, additional_buffer_factor=1.0)[1]
    if stage == 2:
        from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

        return estimate_zero2_model_states_mem_needs(total, world, 1, cpu_offload=offload,
                                                     additional_buffer_factor=1.0)[1]
    return None


def plan_memory(model: nn.Module, input_shape: tuple[int, ...], *, world_size: int, global_batch: int,
                grad_accum: int, zero_stage: int, precision: str, optimizer: str, momentum: float,
                offload: str, checkpointing: bool, prunable: int) -> MemoryPlan:
    """The per-rank plan for `model` (best built on the meta device) trained with these settings."""
    total = sum({p.data_ptr() if p.device.type != "meta" else id(p): p.numel() for p in model.parameters()}.values())
    largest = _largest_layer(model)
    bf16 = precision == "bf16"
    micro = max(1, global_batch // (world_size * grad_accum))
    gpu, cpu = model_states(total, largest, zero_stage, bf16, _optimizer_slots(optimizer, momentum), world_size,
                            offload == "cpu")
    # each rank masks the weights its optimizer partition holds (ZeRO >= 1), ZeRO 0 all of them
    share = -(-prunable // world_size) if zero_stage >= 1 else prunable
    masks = -(-int(share) // int(1 / MASK_BYTES_PER_WEIGHT))
    gpu["masks"] = 0 if cpu else masks
    if cpu:
        cpu["masks"] = masks
    gpu["buffers"] = communication_buffers(total, zero_stage, bf16)
    dtype = torch.bfloat16 if bf16 else torch.float32
    gpu["activations"] = activation_bytes(model, input_shape, micro, dtype, checkpointing)
    gpu["total"] = sum(gpu.values())
    if cpu:
        cpu["total"] = sum(cpu.values())
    ds = _deepspeed_estimate(total, largest, zero_stage, world_size, offload == "cpu") if bf16 else None
    return MemoryPlan(world_size, micro, zero_stage, precision, offload, total, largest, prunable, gpu, cpu, ds,
                      checkpointing and hasattr(model, "set_grad_checkpointing"))


def format_memory_plan(plan: MemoryPlan, gpu_mem_gb: float | None) -> str:
    """The plan as a table in GiB, with a warning line when the GPU total exceeds `gpu_mem_gb` (GiB, as
    `launch.gpu_mem_gb`) naming the settings that would lower it and are not in effect yet (`_remedies`)."""
    lines = [f"memory plan per rank, a model of {plan.total_params:,} parameters (largest layer "
             f"{plan.largest_layer:,}): ZeRO stage {plan.zero_stage}, {plan.precision}, world size "
             f"{plan.world_size}, micro-batch {plan.micro_batch}, optimizer offload {plan.offload}"]
    for kind, value in plan.gpu.items():
        lines.append(f"  {kind:<12} {value / GiB:9.2f} GiB")
    if plan.cpu:
        lines.append("  host memory (offloaded): " + ", ".join(f"{k} {v / GiB:.2f} GiB" for k, v in plan.cpu.items()))
    if plan.deepspeed_estimate is not None:
        ours = sum(plan.gpu[k] for k in ("parameters", "gradients", "optimizer"))
        lines.append(f"  model states: ours {ours / GiB:.2f} GiB, DeepSpeed's estimator "
                     f"{plan.deepspeed_estimate / GiB:.2f} GiB")
    if gpu_mem_gb is not None and plan.gpu["total"] > gpu_mem_gb * GiB:
        lines.append(f"WARNING: {plan.gpu['total'] / GiB:.2f} GiB per rank exceeds launch.gpu_mem_gb={gpu_mem_gb:g} "
                     f"GiB; to lower it: {'; '.join(_remedies(plan))}")
    return "\n".join(lines)


def _remedies(plan: MemoryPlan) -> list[str]:
    """The settings that lower the per-rank total and are not already in effect, largest saving first."""
    found = []
    if plan.zero_stage < 3:
        found.append(f"deepspeed.zero_stage={plan.zero_stage + 1} (now {plan.zero_stage}; partitions more model "
                     "states across ranks)")
    if not plan.checkpointing:
        found.append("train.grad_checkpointing=true (recomputes activations in backward)")
    if plan.offload != "cpu" and plan.zero_stage >= 1:
        found.append("deepspeed.offload_optimizer=cpu (optimizer state in host memory)")
    if plan.zero_stage >= 1:
        found.append(f"more ranks (world size now {plan.world_size}; ZeRO splits model states across them)")
    if plan.micro_batch > 1:
        found.append(f"a smaller train.batch_size (micro-batch now {plan.micro_batch} per rank)")
    return found
