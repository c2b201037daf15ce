"""Where the host time of one ``l0_grad_mask_`` call goes, on a real weight list, and what a launch plan saves.

Prints (1) a cProfile of many plain calls, (2) host milliseconds per call of plain calls and of a
``plan_l0_grad_mask_`` plan on the same tensors (CUDA: launch-only loops, device idle at the start), and
(3) the host work a plan skips — argument validation, grouping and the launch-table look-up — timed alone.
(1) and (2) need CUDA (on CPU the torch reference's compute would swamp them); (3) is device-independent
Python on CPU tensors, measured everywhere.

Usage: ``python -m benchmarks.host_overhead [--model resnet50] [--calls 200] [--masks bool|packed]``.
"""

from __future__ import annotations

import cProfile
import pstats
import time
from collections.abc import Callable

import torch

from benchmarks.common import pick_device
from benchmarks.kernels import BETA, L2, layer_alphas, make_masks, model_weights
from sparsetrain.argtypes import CommandParser, positive_int
from triton_kernels import get_ops
from triton_kernels._multi_tensor import DEFAULT_CONFIG


def per_call_ms(
    fn: Callable[[], object], calls: int, device: torch.device, clock: Callable[[], float] = time.perf_counter
) -> float:
    """Host milliseconds per call of ``fn`` over ``calls`` calls (the device synchronised before, not inside)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = clock()
    for _ in range(calls):
        fn()
    elapsed = clock() - start
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return elapsed * 1e3 / calls


def skipped_work_ms(weights, grads, masks, alphas, calls: int) -> float | None:
    """Host milliseconds per call of what a plan skips (validation, grouping, table look-up); None without triton."""
    try:
        from triton_kernels import l0_grad_mask
    except ImportError:  # pragma: no cover - no triton here
        return None

    def work() -> None:
        checked, _, _ = l0_grad_mask._checked(weights, grads, masks, alphas, 10.0, 1e-4)  # beta, l2: any valid
        l0_grad_mask._prepare(weights, grads, masks, checked, DEFAULT_CONFIG)

    work()
    # Process CPU time, not wall time: a loaded machine (other processes on the cores) does not inflate it.
    return per_call_ms(work, calls, torch.device("cpu"), clock=time.process_time)


def main(argv: list[str] | None = None) -> None:
    """Profiles and compares plain and planned calls (CUDA), and times the work a plan skips (everywhere)."""
    parser = CommandParser(prog="python -m benchmarks.host_overhead", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--calls", type=positive_int, default=200)
    parser.add_argument("--masks", choices=["bool", "packed"], default="bool", help="mask kind")
    args = parser.parse_args(argv)
    device = pick_device()
    weights = [w.to(device) for w in model_weights(args.model, None)]
    grads = [torch.randn_like(w) * 1e-3 for w in weights]
    masks = make_masks(weights, args.masks, torch.Generator(device=device).manual_seed(0))
    alphas = layer_alphas(weights)
    print(f"{args.model}: {len(weights)} tensors, {args.masks} masks, {args.calls} calls")
    if device.type == "cuda":
        profile_and_compare(weights, grads, masks, alphas, args.calls)
    else:
        print("no CUDA device: only the host work a plan skips is measured")
    try:  # on the weights' own device: the kernels' device check refuses CPU tensors without TRITON_INTERPRET=1
        skipped = skipped_work_ms(weights, grads, masks, alphas, args.calls)
    except RuntimeError as err:
        print(f"host work a plan skips: not measured ({err}); set TRITON_INTERPRET=1 to time it on CPU")
        return
    if skipped is not None:
        print(
            f"host work a plan skips (validation, grouping, table look-up; {device.type.upper()} tensors): "
            f"{skipped:.4f} ms of process CPU time per call"
        )


def profile_and_compare(weights, grads, masks, alphas: list[float], calls: int) -> None:
    """cProfile of plain calls, then host ms per call of plain calls and of a plan (CUDA)."""
    device = weights[0].device
    ops = get_ops("triton")
    kwargs = {"alphas": alphas, "beta": BETA, "l2": L2}
    plain = lambda: ops.l0_grad_mask_(weights, grads, masks, **kwargs)
    plan = ops.plan_l0_grad_mask_(weights, grads, masks, **kwargs)
    plain(), plan()  # warm: compiled kernel and launch tables cached
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(calls):
        plain()
    profiler.disable()
    torch.cuda.synchronize(device)
    stats = pstats.Stats(profiler).sort_stats("tottime")
    print(f"{1e3 * stats.total_tt / calls:.3f} ms host per plain call under cProfile")
    stats.print_stats(18)
    plain_ms, plan_ms = per_call_ms(plain, calls, device), per_call_ms(plan, calls, device)
    print(f"host ms per call: plain {plain_ms:.4f}, plan {plan_ms:.4f}, plain/plan {plain_ms / plan_ms:.2f}x")


if __name__ == "__main__":
    main()
