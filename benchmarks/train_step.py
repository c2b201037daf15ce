"""Training-step cost of sparsity training: dense vs fused ℓ0 kernel vs autograd penalty (timm resnet50, Adam).

Variants, each on a fresh model with the same seed and the same batch:

* dense: cross-entropy only;
* fused: cross-entropy; after backward, ``l0_grad_mask_`` adds the ℓ0 + ℓ2 gradient to every conv/linear
  weight gradient in one launch per dtype (Method 1, sparsity training);
* fused_finetune: as fused with masks (half kept), plus ``apply_masks_`` after the optimizer step;
* autograd: cross-entropy + ``l0_penalty`` in the loss (autograd builds and runs the penalty's graph).

The variants run side by side: all four models are built first, then each timed round runs one step of
every variant in turn, so clock changes and other drift hit all of them alike; the median over rounds is
printed as step times and ratios to dense. ``--profile VARIANT`` also prints the top device kernels of a few
steps of that variant and of dense (torch.profiler), to see where a difference comes from.

Needs CUDA to mean anything; on CPU it runs a quick smoke mode (tiny images, batch 2, the torch backend,
`CPU_WARMUP` untimed steps of each variant, then `CPU_ROUNDS` rounds timed in process CPU time on one thread):
those ratios are a smoke test of the code path, not kernel performance (`timing_caveat`, printed as a `note:` line
and in the JSON as `caveat`). A wall-clock median of one round swung 6.6x to 8.8x for one variant on a shared
2-core machine (trial 24), where a niced process waits whole scheduler ticks for a core.

Usage: ``python -m benchmarks.train_step [--quick] [--batch 64] [--image-size 224] [--steps 20]``.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch
import torch.nn.functional as F

from benchmarks.common import OUTPUT_DIR, device_label, kernel_backend, pick_device, write_json
from sparsetrain.argtypes import CommandParser, int_at_least, out_folder, positive_int
from triton_kernels import KernelOps, get_ops, l0_penalty

PROG = "python -m benchmarks.train_step"  # the usage line's command; `sparsetrain bench train_step` passes its own
VARIANTS = ["dense", "fused", "fused_finetune", "autograd"]
CPU_WARMUP = 2  # untimed steps of each variant on CPU: first-step allocations and lazy inits stay out of the times
CPU_ROUNDS = 5  # timed rounds on CPU (one step of each variant per round): the median of one round is noise
CPU_TIMER = "process CPU time, 1 thread, interleaved rounds"
GPU_TIMER = "CUDA events, interleaved rounds"
ALPHA0, BETA, L2 = 1e-6, 10.0, 1e-4


def build(model_name: str, num_classes: int, device: torch.device) -> tuple[torch.nn.Module, list[torch.Tensor]]:
    """A seeded timm model on ``device`` and its conv/linear weights (ndim > 1)."""
    import timm

    torch.manual_seed(0)
    model = timm.create_model(model_name, pretrained=False, num_classes=num_classes).to(device)
    return model, [p for p in model.parameters() if p.ndim > 1]


def make_step(variant: str, model: torch.nn.Module, weights: list[torch.Tensor], ops: KernelOps, amp: bool):
    """One training step of ``variant`` as a closure over its model, optimizer, alphas and masks."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    n_max = max(w.numel() for w in weights)
    alphas = [ALPHA0 * math.sqrt(w.numel() / n_max) for w in weights]
    gen = torch.Generator(device=weights[0].device).manual_seed(1)
    masks = [torch.rand(w.shape, generator=gen, device=w.device) > 0.5 for w in weights]
    device_type = weights[0].device.type

    def step(images: torch.Tensor, labels: torch.Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=amp):
            loss = F.cross_entropy(model(images), labels)
        if variant == "autograd":
            loss = loss + l0_penalty(weights, alphas, BETA, L2)
        loss.backward()
        if variant in ("fused", "fused_finetune"):
            grads = [w.grad for w in weights]
            ops.l0_grad_mask_(
                weights, grads, masks if variant == "fused_finetune" else None, alphas=alphas, beta=BETA, l2=L2
            )
        optimizer.step()
        if variant == "fused_finetune":
            ops.apply_masks_([w.data for w in weights], masks)

    return step


def time_one(step, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Milliseconds of one step (device events on CUDA; on CPU this process's CPU time, so the time it waited for a
    core on a shared machine stays out), the device idle at the start."""
    if images.is_cuda:
        torch.cuda.synchronize(images.device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step(images, labels)
        end.record()
        end.synchronize()
        return start.elapsed_time(end)
    t0 = time.process_time()
    step(images, labels)
    return (time.process_time() - t0) * 1e3


def time_interleaved(steps: dict, images: torch.Tensor, labels: torch.Tensor, warmup: int, rounds: int
                     ) -> dict[str, float]:
    """Median milliseconds per step of every variant, measured round-robin (one step of each per round)."""
    for step in steps.values():
        for _ in range(warmup):
            step(images, labels)
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            times[name].append(time_one(step, images, labels))
    return {name: statistics.median(values) for name, values in times.items()}


def profile_steps(name: str, step, images: torch.Tensor, labels: torch.Tensor, steps: int = 5) -> None:
    """Prints the device kernels of ``steps`` steps of one variant, by total device time."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step(images, labels)
        torch.cuda.synchronize(images.device)
    print(f"--- profile of {steps} steps of {name}")
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=15, max_name_column_width=60))


def parse_args(argv: list[str] | None, prog: str = PROG) -> argparse.Namespace:
    """The arguments; `prog` is the command that the usage line and errors name (`sparsetrain bench train_step`
    from the CLI)."""
    parser = CommandParser(prog=prog, description=__doc__.splitlines()[0], epilog=HELP_CAVEAT)
    parser.add_argument("--quick", action="store_true", help="tiny smoke run (forced on CPU)")
    parser.add_argument("--model", default="resnet50", help="timm model name")
    parser.add_argument("--batch", type=positive_int, default=64)
    parser.add_argument("--image-size", type=positive_int, default=224)
    parser.add_argument("--steps", type=positive_int, default=30,
                        help="timed rounds (one step of each variant per round)")
    parser.add_argument("--warmup", type=int_at_least(0), default=5)
    parser.add_argument("--no-amp", dest="amp", action="store_false", help="fp32 instead of bf16 autocast on CUDA")
    parser.add_argument("--backend", choices=("triton", "torch"),
                        help="kernel backend: triton (default on CUDA) or torch (default on CPU)")
    parser.add_argument("--out", type=out_folder, default=OUTPUT_DIR,
                        help=f"folder for train_step-<device>.json (default {OUTPUT_DIR})")
    parser.add_argument("--profile", choices=VARIANTS, help="also print the top device kernels of this variant (CUDA)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None, prog: str = PROG) -> None:
    """Times each variant, prints step times and ratios to dense, writes ``<out>/train_step-<device>.json``.

    Args:
        argv: The arguments after the command (default: `sys.argv[1:]`).
        prog: The command as typed, for the usage line and errors: `python -m benchmarks.train_step` or
            `sparsetrain bench train_step`.
    """
    args = parse_args(argv, prog)
    device = pick_device()
    cpu = device.type == "cpu"
    if cpu:
        if not args.quick:
            print("no CUDA device: running the CPU smoke mode (--quick)")
        args.quick, args.amp = True, False
    if args.quick:
        args.batch, args.steps = min(args.batch, 2 if cpu else 32), CPU_ROUNDS if cpu else 5
        args.warmup = CPU_WARMUP if cpu else 2
        args.image_size = 32 if cpu else args.image_size
    ops = get_ops(kernel_backend(args.backend, device))
    gen = torch.Generator(device=device).manual_seed(0)
    images = torch.randn(args.batch, 3, args.image_size, args.image_size, generator=gen, device=device)
    labels = torch.randint(0, 1000, (args.batch,), generator=gen, device=device)

    steps = {}
    for variant in VARIANTS:
        model, weights = build(args.model, 1000, device)
        steps[variant] = make_step(variant, model, weights, ops, args.amp)
    threads = torch.get_num_threads()
    if cpu:
        torch.set_num_threads(1)  # CPU time of one thread: the time of the work, not of the threads' waiting
    try:
        medians = time_interleaved(steps, images, labels, args.warmup, args.steps)
    finally:
        torch.set_num_threads(threads)
    rows = [{"variant": variant, "step_ms": medians[variant]} for variant in VARIANTS]
    dense = rows[0]["step_ms"]
    name = device_label(device)
    print(f"device: {name}; {args.model}, batch {args.batch}, {args.image_size}px, amp={args.amp}, ops={ops.backend}; "
          f"median of {args.steps} round(s) after {args.warmup} warm-up step(s) per variant, {timer_words(cpu)}")
    caveat = timing_caveat(device)
    if caveat:
        print(f"note: {caveat}")
    print(f"{'variant':<16}{'step ms':>10}{'vs dense':>10}")
    for row in rows:
        row["ratio_vs_dense"] = row["step_ms"] / dense
        print(f"{row['variant']:<16}{row['step_ms']:>10.2f}{row['ratio_vs_dense']:>10.3f}")
    payload = {"device": name, "model": args.model, "batch": args.batch, "image_size": args.image_size,
               "caveat": caveat, "timer": timer_words(cpu), "warmup_steps": args.warmup, "rounds": args.steps,
               "rows": rows}
    print(f"wrote {write_json(payload, args.out, 'train_step', name)}")
    if args.profile and not cpu:
        for variant in ("dense", args.profile):
            profile_steps(variant, steps[variant], images, labels)


HELP_CAVEAT = (f"On CPU the times are a smoke test of the code path, not kernel performance: tiny images, the torch "
               f"backend, {CPU_WARMUP} warm-up steps per variant, then the median of {CPU_ROUNDS} interleaved rounds "
               "in process CPU time on one thread.")


def timer_words(cpu: bool) -> str:
    """How a step was timed (printed and in the JSON as `timer`)."""
    return CPU_TIMER if cpu else GPU_TIMER


def timing_caveat(device: torch.device) -> str | None:
    """The line that says what CPU times cannot show (printed as `note:` and in the JSON as `caveat`), None on CUDA."""
    if device.type != "cpu":
        return None
    return ("on CPU these times are a smoke test of the code path, not kernel performance: tiny images, the torch "
            "backend, a few rounds; ratios to dense say whether the variants run, not what they cost on a GPU "
            "(process CPU time on one thread)")


if __name__ == "__main__":
    main()
