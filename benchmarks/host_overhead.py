"""Where the host time of one ``l0_grad_mask_`` call goes, on a real weight list (cProfile of many calls).

Usage: ``python -m benchmarks.host_overhead [--model resnet50] [--calls 200]`` (CUDA; on CPU the torch backend).
"""

from __future__ import annotations

import argparse
import cProfile
import pstats

import torch

from benchmarks.common import pick_device
from benchmarks.kernels import BETA, L2, layer_alphas, model_weights
from triton_kernels import get_ops


def main(argv: list[str] | None = None) -> None:
    """Profiles ``--calls`` calls with masks and prints the functions with the most own time."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.host_overhead", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args(argv)
    device = pick_device()
    ops = get_ops("triton" if device.type == "cuda" else "torch")
    weights = [w.to(device) for w in model_weights(args.model, None)]
    grads = [torch.randn_like(w) * 1e-3 for w in weights]
    masks = [torch.rand(w.shape, device=device) > 0.5 for w in weights]
    alphas = layer_alphas(weights)

    def calls() -> None:
        for _ in range(args.calls):
            ops.l0_grad_mask_(weights, grads, masks, alphas=alphas, beta=BETA, l2=L2)

    calls()  # warm: compiled kernel and launch tables cached
    profiler = cProfile.Profile()
    profiler.enable()
    calls()
    profiler.disable()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    stats = pstats.Stats(profiler).sort_stats("tottime")
    print(f"{args.model}: {len(weights)} tensors, {args.calls} calls, "
          f"{1e3 * stats.total_tt / args.calls:.3f} ms host per call under cProfile")
    stats.print_stats(18)


if __name__ == "__main__":
    main()
