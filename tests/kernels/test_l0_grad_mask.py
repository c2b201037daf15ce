"""Fused l0_grad_mask_ vs the torch reference: awkward sizes, dtypes, mask kinds (bytes and packed bits),
non-finite values in pruned slots, launches, errors."""

from __future__ import annotations

import pytest
import torch

import triton_kernels
from tests.kernels.kernel_testing import (
    DTYPES,
    MASK_KINDS,
    SIZE_CASES,
    TINY,
    TOLERANCES,
    as_mask_kind,
    assert_close,
    assert_equal,
    flat_views,
    keep_of,
    random_masks,
)
from triton_kernels import PackedMask, l0_grad_mask, l0_grad_mask_, l0_grad_mask_reference_

BETA, L2 = 5.0, 1e-2


def _alphas(n: int) -> list[float]:
    return [0.05 * (i % 4 + 1) for i in range(n)]


def _run_both(sizes, dtype, mask_kind, seed=0):
    gen = torch.Generator().manual_seed(seed)
    weights = flat_views(sizes, dtype, gen, scale=0.5)
    grads = flat_views(sizes, dtype, gen)
    masks = random_masks(sizes, mask_kind, gen)
    ref_grads = [g.clone() for g in grads]
    value = l0_grad_mask_(weights, grads, masks, alphas=_alphas(len(sizes)), beta=BETA, l2=L2, config=TINY)
    ref_value = l0_grad_mask_reference_(weights, ref_grads, masks, alphas=_alphas(len(sizes)), beta=BETA, l2=L2)
    return weights, grads, ref_grads, masks, value, ref_value


@pytest.mark.parametrize("mask_kind", ["bool", "packed_segments"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", list(SIZE_CASES))
def test_matches_reference(case: str, dtype: torch.dtype, mask_kind: str) -> None:
    sizes = SIZE_CASES[case]
    _, grads, ref_grads, _, value, ref_value = _run_both(sizes, dtype, mask_kind)
    atol, rtol = TOLERANCES[dtype]
    for i, (g, r) in enumerate(zip(grads, ref_grads, strict=True)):
        assert_close(g, r, atol, rtol, f"{case}/{dtype}/{mask_kind} grads[{i}] (numel {g.numel()})")
    assert value.dtype == torch.float32 and value.dim() == 0, f"value: {value.dtype} {tuple(value.shape)}"
    assert_close(value, ref_value, 1e-5, 1e-5, f"{case}/{dtype}/{mask_kind} regularizer value")


@pytest.mark.parametrize("mask_kind", MASK_KINDS)
def test_mask_kinds(mask_kind: str) -> None:
    sizes = SIZE_CASES["awkward"]
    _, grads, ref_grads, masks, value, ref_value = _run_both(sizes, torch.float32, mask_kind, seed=1)
    for i, (g, r) in enumerate(zip(grads, ref_grads, strict=True)):
        assert_close(g, r, *TOLERANCES[torch.float32], f"{mask_kind} grads[{i}]")
        if masks is not None:
            pruned = g.reshape(-1)[~keep_of(masks[i])]
            assert bool((pruned == 0).all()), f"{mask_kind} grads[{i}]: {int((pruned != 0).sum())} masked grads not 0"
    assert_close(value, ref_value, 1e-5, 1e-5, f"{mask_kind} regularizer value")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_packed_and_byte_masks_give_identical_results(dtype: torch.dtype) -> None:
    """The same keep flags as bool tensors and as packed segments: bit-identical gradients and value."""
    sizes = SIZE_CASES["awkward"] + SIZE_CASES["many_tiny"]
    gen = torch.Generator().manual_seed(6)
    weights, grads = flat_views(sizes, dtype, gen, scale=0.5), flat_views(sizes, dtype, gen)
    packed = random_masks(sizes, "packed_segments", gen)
    byte_masks = [m.unpack() for m in packed]
    results = {}
    for label, masks in (("bool", byte_masks), ("packed", packed)):
        out = [g.clone() for g in grads]
        value = l0_grad_mask_(weights, out, masks, alphas=_alphas(len(sizes)), beta=BETA, l2=L2, config=TINY)
        results[label] = out, value
    for i, (a, b) in enumerate(zip(results["packed"][0], results["bool"][0], strict=True)):
        assert_equal(a, b, f"{dtype} packed vs bool grads[{i}] (numel {a.numel()}, bit offset {packed[i].offset})")
    assert_equal(results["packed"][1], results["bool"][1], f"{dtype} packed vs bool regularizer value")


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("mask_kind", ["bool", "uint8", "packed", "packed_segment"])
def test_masked_gradient_is_exactly_zero_whatever_it_held(mask_kind: str, dtype: torch.dtype, backend: str) -> None:
    """Masking is a select: NaN/±inf in a pruned slot become exactly 0; in a kept slot they stay non-finite."""
    gen = torch.Generator().manual_seed(2)
    weights, grads = flat_views([40], dtype, gen), flat_views([40], dtype, gen)
    weights[0].view(-1)[[20, 21]] = float("nan")  # a NaN weight makes its own gradient NaN before the mask
    keep = torch.ones(40, dtype=torch.bool)
    keep[[3, 7, 11, 17, 20]] = False
    g = grads[0].view(-1)
    g[[3, 7, 11, 5, 9]] = torch.tensor([float("nan"), float("inf"), -float("inf"), float("nan"), float("inf")]).to(
        dtype
    )  # 3, 7, 11 pruned; 5, 9 kept
    op = l0_grad_mask_ if backend == "triton" else l0_grad_mask_reference_
    op(weights, grads, [as_mask_kind(keep, mask_kind)], alphas=[0.1], beta=BETA, l2=L2, config=TINY)
    label = f"{backend}/{dtype}/{mask_kind}"
    for slot in (3, 7, 11, 17, 20):
        assert g[slot].item() == 0.0, f"{label}: pruned slot {slot} holds {g[slot].item()}, must be exactly 0"
    assert g[5].isnan() and g[21].isnan(), f"{label}: kept NaN gradients became {g[5].item()}, {g[21].item()}"
    assert g[9].item() == float("inf"), f"{label}: kept inf gradient became {g[9].item()}"
    finite_kept = keep.clone()
    finite_kept[[5, 9, 21]] = False
    assert bool(g[finite_kept].isfinite().all()), f"{label}: NaN/inf spread to other slots"


def test_sign_of_zero_weight_is_zero() -> None:
    weights = [torch.tensor([0.0, 0.0, 1.0, -1.0])]
    grads = [torch.zeros(4)]
    l0_grad_mask_(weights, grads, None, alphas=[1.0], beta=2.0, l2=0.0, config=TINY)
    expected = torch.tensor(
        [0.0, 0.0, 2.0 * torch.exp(torch.tensor(-2.0)).item(), -2.0 * torch.exp(torch.tensor(-2.0))]
    )
    assert_close(grads[0], expected, 1e-6, 1e-5, "gradient at w = 0, ±1")


def test_empty_inputs() -> None:
    value = l0_grad_mask_([], [], None, alphas=[], beta=BETA, l2=L2, config=TINY)
    assert value.item() == 0.0 and value.dtype == torch.float32, f"empty list value: {value}"
    w, g = [torch.empty(0), torch.empty(0, 3)], [torch.empty(0), torch.empty(0, 3)]
    value = l0_grad_mask_(w, g, [torch.empty(0, dtype=torch.bool)] * 2, alphas=0.1, beta=BETA, l2=L2, config=TINY)
    assert value.item() == 0.0, f"zero-size tensors value: {value}"
    empty_packed = PackedMask.pack(torch.ones(9, dtype=torch.bool)).narrow(3, 0)
    value = l0_grad_mask_(w, g, [empty_packed] * 2, alphas=0.1, beta=BETA, l2=L2, config=TINY)
    assert value.item() == 0.0, f"zero-size tensors with empty packed masks value: {value}"


class _CountingKernel:
    """Stands in for a @triton.jit kernel and counts launches ``kernel[grid](...)``."""

    def __init__(self, kernel):
        self.kernel, self.launches = kernel, []

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.launches.append(kwargs["DTYPE"])
            return self.kernel[grid](*args, **kwargs)

        return launch


def test_one_launch_per_dtype_and_mask_kind(monkeypatch: pytest.MonkeyPatch) -> None:
    counter = _CountingKernel(l0_grad_mask._l0_grad_mask_kernel)
    monkeypatch.setattr(l0_grad_mask, "_l0_grad_mask_kernel", counter)
    gen = torch.Generator().manual_seed(3)
    sizes = [3, 50, 7, 200, 1]
    dtypes = [torch.float32, torch.bfloat16, torch.float32, torch.float16, torch.bfloat16]
    weights = [flat_views([n], dt, gen)[0] for n, dt in zip(sizes, dtypes, strict=True)]
    grads = [flat_views([n], dt, gen)[0] for n, dt in zip(sizes, dtypes, strict=True)]
    ref_grads = [g.clone() for g in grads]
    value = l0_grad_mask_(weights, grads, None, alphas=_alphas(5), beta=BETA, l2=L2, config=TINY)
    ref_value = l0_grad_mask_reference_(weights, ref_grads, None, alphas=_alphas(5), beta=BETA, l2=L2)
    assert len(counter.launches) == 3, f"launches per dtype group: {counter.launches}"
    for i, (g, r) in enumerate(zip(grads, ref_grads, strict=True)):
        assert_close(g, r, *TOLERANCES[g.dtype], f"mixed dtypes grads[{i}] ({g.dtype})")
    assert_close(value, ref_value, 1e-5, 1e-5, "mixed dtypes regularizer value")
    counter.launches.clear()
    masks = random_masks([50] * 5, "packed_mixed", gen)  # bool, packed, uint8, bool, packed
    weights, grads = flat_views([50] * 5, torch.float32, gen), flat_views([50] * 5, torch.float32, gen)
    ref_grads = [g.clone() for g in grads]
    l0_grad_mask_(weights, grads, masks, alphas=_alphas(5), beta=BETA, l2=L2, config=TINY)
    l0_grad_mask_reference_(weights, ref_grads, masks, alphas=_alphas(5), beta=BETA, l2=L2)
    assert len(counter.launches) == 2, f"fp32 with byte and packed masks: one launch per kind, {counter.launches}"
    for i, (g, r) in enumerate(zip(grads, ref_grads, strict=True)):
        assert_close(g, r, *TOLERANCES[g.dtype], f"mixed mask kinds grads[{i}] ({masks[i]!r:.30})")


def test_default_config_matches_reference() -> None:
    """The production geometry (block 1024, chunk 16384) on one tensor spanning two chunks."""
    gen = torch.Generator().manual_seed(4)
    weights = flat_views([16384 + 1000, 3], torch.float32, gen, scale=0.5)
    grads = flat_views([16384 + 1000, 3], torch.float32, gen)
    masks = random_masks([16384 + 1000, 3], "bool", gen)
    ref_grads = [g.clone() for g in grads]
    value = triton_kernels.l0_grad_mask_(weights, grads, masks, alphas=[0.1, 0.2], beta=BETA, l2=L2)
    ref_value = l0_grad_mask_reference_(weights, ref_grads, masks, alphas=[0.1, 0.2], beta=BETA, l2=L2)
    for i, (g, r) in enumerate(zip(grads, ref_grads, strict=True)):
        assert_close(g, r, *TOLERANCES[torch.float32], f"default config grads[{i}]")
    assert_close(value, ref_value, 1e-5, 1e-5, "default config regularizer value")


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda w, g, m: (w, g[:1], m), "grads: has 1 tensors"),
        (lambda w, g, m: (w, [g[0].double(), g[1]], m), r"weights\[0\]|grads\[0\]"),
        (lambda w, g, m: (w, [g[0].half(), g[1]], m), r"grads\[0\]: dtype"),
        (lambda w, g, m: (w, [g[0][:-1], g[1]], m), r"grads\[0\]: numel"),
        (lambda w, g, m: (w, g, [m[0].float(), m[1]]), r"masks\[0\]: dtype"),
        (lambda w, g, m: ([w[0], torch.zeros(8, 4).t()], g, m), r"weights\[1\]: must be contiguous"),
        (lambda w, g, m: ([w[0].long(), w[1]], g, m), r"weights\[0\]: dtype"),
        (lambda w, g, m: (w, g, [m[0], PackedMask.pack(m[1]).narrow(1, 31)]), r"masks\[1\]: packed mask of 31"),
        (lambda w, g, m: (w, g, [PackedMask.pack(m[0]).to("meta"), m[1]]), r"masks\[0\]: device meta"),
        (lambda w, g, m: (w, g, [m[0], m[1].bool().view(4, 8).t()]), r"masks\[1\]: must be contiguous"),
        (lambda w, g, m: (w, g, m[:1]), "masks: has 1 tensors"),
    ],
)
def test_rejects_bad_arguments(change, match: str) -> None:
    w = [torch.randn(10), torch.randn(4, 8)]
    g = [torch.randn(10), torch.randn(4, 8)]
    m = [torch.ones(10, dtype=torch.bool), torch.ones(32, dtype=torch.uint8)]
    w, g, m = change(w, g, m)
    with pytest.raises(ValueError, match=match):
        l0_grad_mask_(w, g, m, alphas=0.1, beta=BETA, l2=L2, config=TINY)


def _gpu_inputs(sizes: list[int], dtype: torch.dtype, layout: str, seed: int, mask_kind: str = "mixed"):
    """CUDA weights, grads and masks: views at odd offsets into flat buffers, or separate 16-byte aligned tensors."""
    gen = torch.Generator().manual_seed(seed)
    if layout == "views":
        weights, grads = flat_views(sizes, dtype, gen, scale=0.5), flat_views(sizes, dtype, gen)
    else:
        weights = [(torch.randn(n, generator=gen) * 0.5).to(dtype) for n in sizes]
        grads = [torch.randn(n, generator=gen).to(dtype) for n in sizes]
    masks = random_masks(sizes, mask_kind, gen)
    return [w.cuda() for w in weights], [g.cuda() for g in grads], [m.to("cuda") for m in masks]


def _skip_unless_compiled() -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    if triton_kernels._multi_tensor.INTERPRET:
        pytest.skip("run GPU tests with TRITON_INTERPRET=0")


@pytest.mark.gpu
@pytest.mark.parametrize("mask_kind", ["mixed", "packed_mixed"])
@pytest.mark.parametrize("layout", ["views", "separate"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_gpu_matches_reference(dtype: torch.dtype, layout: str, mask_kind: str) -> None:
    _skip_unless_compiled()
    sizes = [1, 3, 4097, 65537, 1_000_003, 2**20 + 1, 0] + [7] * 50
    weights, grads, masks = _gpu_inputs(sizes, dtype, layout, seed=5, mask_kind=mask_kind)
    for g in grads[1:4:2]:
        g.view(-1)[0] = float("nan")
    ref_grads = [g.clone() for g in grads]
    alphas = _alphas(len(sizes))
    value = l0_grad_mask_(weights, grads, masks, alphas=alphas, beta=BETA, l2=L2)
    ref_value = l0_grad_mask_reference_(weights, ref_grads, masks, alphas=alphas, beta=BETA, l2=L2)
    atol, rtol = TOLERANCES[dtype]
    label = f"gpu {layout} {mask_kind} {dtype}"
    for i, (g, r) in enumerate(zip(grads, ref_grads, strict=True)):
        # fp32: the GPU's fast exp differs from torch's by a few ulp, far below the gradient's own scale.
        assert_close(g, r, max(atol, 1e-6), max(rtol, 2e-5), f"{label} grads[{i}] (numel {g.numel()})")
        pruned = g.reshape(-1)[~keep_of(masks[i])]
        assert bool((pruned == 0).all()), f"{label} grads[{i}]: masked grads not exactly 0"
    assert_close(value, ref_value, 1e-3, 1e-4, f"{label} regularizer value")


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.parametrize("mask_kind", ["bool", "packed_segment"])
def test_gpu_tensor_past_2_31_elements(mask_kind: str) -> None:
    """int64 offsets: a bf16 tensor of 2^31 + 17 elements, checked at its start and past element 2^31."""
    _skip_unless_compiled()
    n = 2**31 + 17
    if torch.cuda.mem_get_info()[0] < 6 * n:
        pytest.skip("needs ~13 GB of free GPU memory")
    w = torch.randn(n, device="cuda", dtype=torch.bfloat16)
    g = torch.randn(n, device="cuda", dtype=torch.bfloat16)
    keep = torch.rand(n, device="cuda") > 0.5
    m = as_mask_kind(keep, mask_kind)  # packed_segment: a view starting at bit 5 of a 2^31 + 22-bit buffer
    windows = [slice(0, 4096), slice(2**31 - 2048, n)]
    before = [(w[s].clone(), g[s].clone(), keep[s].clone()) for s in windows]
    del keep
    value = l0_grad_mask_([w], [g], [m], alphas=[1e-3], beta=BETA, l2=L2)
    for s, (ws, gs, ms) in zip(windows, before, strict=True):
        l0_grad_mask_reference_([ws], [gs], [ms], alphas=[1e-3], beta=BETA, l2=L2)
        assert_close(g[s], gs, *TOLERANCES[torch.bfloat16], f"2^31+17 elements, {mask_kind}, window {s}")
    expected = sum(  # in pieces: fp32 temporaries of the whole tensor would need ~25 GB
        1e-3 * (1 - torch.exp(-BETA * p.double().abs())).sum() + L2 * p.double().square().sum() for p in w.split(2**27)
    )
    assert_close(value.double(), expected, 1e-2, 1e-4, f"2^31+17 elements, {mask_kind}: regularizer value")


@pytest.mark.gpu
@pytest.mark.parametrize("mask_kind", ["mixed", "packed_segments"])
def test_gpu_call_replays_in_cuda_graph(mask_kind: str) -> None:
    """Captured once after a warm-up, the call replays correctly on new gradient values (no host work)."""
    _skip_unless_compiled()
    sizes = [5, 4097, 65537, 1_000_003]
    weights, grads, masks = _gpu_inputs(sizes, torch.float32, "separate", seed=11, mask_kind=mask_kind)
    alphas = _alphas(len(sizes))
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up outside capture, as CUDA graphs require
        l0_grad_mask_(weights, grads, masks, alphas=alphas, beta=BETA, l2=L2)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        value = l0_grad_mask_(weights, grads, masks, alphas=alphas, beta=BETA, l2=L2)
    for trial in range(3):
        fresh = [torch.randn_like(g) for g in grads]
        for g, f in zip(grads, fresh, strict=True):
            g.copy_(f)
        ref_value = l0_grad_mask_reference_(weights, fresh, masks, alphas=alphas, beta=BETA, l2=L2)
        graph.replay()
        torch.cuda.synchronize()
        for i, (g, r) in enumerate(zip(grads, fresh, strict=True)):
            assert_close(g, r, 1e-6, 2e-5, f"graph replay {trial} ({mask_kind}): grads[{i}]")
        assert_close(value, ref_value, 1e-3, 1e-4, f"graph replay {trial} ({mask_kind}): regularizer value")


def test_bf16_results_round_toward_zero_under_the_interpreter_and_to_nearest_compiled() -> None:
    """Trial 24 item 5: the kernel stores bf16 with ``g.to(DTYPE)``, Triton's default fp32 → bf16 downcast: round to
    nearest even (``arith.truncf``, ``cvt.rn.bf16.f32`` on NVIDIA). The interpreter implements that truncf for bf16
    by dropping the low 16 bits (``triton/runtime/interpreter.py``, ``_convert_float`` with no rounding mode), so
    under TRITON_INTERPRET=1 bf16 results are rounded toward zero, up to 1 bf16 ulp from the reference (which rounds
    to nearest): the interpreter's error, not the kernel's. Compiled on a GPU they round to nearest."""
    interpret = triton_kernels._multi_tensor.INTERPRET
    if not interpret and not torch.cuda.is_available():
        pytest.skip("needs TRITON_INTERPRET=1 or CUDA")
    device = "cpu" if interpret else "cuda"
    gen = torch.Generator().manual_seed(24)
    w = (torch.randn(4099, generator=gen) * 0.2).bfloat16()
    g = (torch.randn(4099, generator=gen) * 2).bfloat16()
    kwargs = {"alphas": 1e-3, "beta": 10.0, "l2": 1e-4}
    exact = [g.float()]
    l0_grad_mask_reference_([w.float()], exact, None, **kwargs)  # the fp32 result before the bf16 store
    nearest = exact[0].bfloat16()
    toward_zero = (exact[0].view(torch.int32) & -(1 << 16)).view(torch.float32).bfloat16()  # exact: low bits are 0
    assert (nearest != toward_zero).sum() > 1000, "the case must tell the two roundings apart"
    ref = [g.clone()]
    l0_grad_mask_reference_([w], ref, None, **kwargs)
    assert_equal(ref[0], nearest, "reference bf16 vs round-to-nearest of the fp32 result")
    ours = [g.clone().to(device)]
    l0_grad_mask_([w.to(device)], ours, None, config=TINY if interpret else None, **kwargs)
    expected, label = (toward_zero, "rounded toward zero") if interpret else (nearest, "rounded to nearest")
    assert_equal(ours[0].cpu(), expected, f"{'interpreter' if interpret else 'compiled'} bf16 store: {label}")
