"""Launch plans: validated once, they repeat the op on the tensors they were built with, skip the per-call checks
and table look-ups, keep the memory they write alive, and exist for every backend."""

from __future__ import annotations

import gc

import pytest
import torch
from torch.multiprocessing.reductions import StorageWeakRef

import triton_kernels
from tests.kernels.kernel_testing import (
    SIZE_CASES,
    TINY,
    TOLERANCES,
    assert_close,
    assert_equal,
    flat_views,
    random_masks,
)
from triton_kernels import apply_masks, apply_masks_reference_, get_ops, l0_grad_mask, l0_grad_mask_reference_

BETA, L2 = 4.0, 1e-2
SIZES = SIZE_CASES["awkward"] + SIZE_CASES["with_empty"]


def _inputs(seed: int, mask_kind: str = "packed_mixed"):
    gen = torch.Generator().manual_seed(seed)
    weights, grads = flat_views(SIZES, torch.float32, gen, scale=0.5), flat_views(SIZES, torch.float32, gen)
    return weights, grads, random_masks(SIZES, mask_kind, gen), [0.1 + 0.01 * i for i in range(len(SIZES))]


@pytest.mark.parametrize("backend", ["triton", "torch", "auto"])
def test_plan_repeats_the_op_on_new_values(backend: str) -> None:
    """Three steps: new gradient values written in place each step; the plan gives what a plain call gives."""
    ops = get_ops(backend)
    weights, grads, masks, alphas = _inputs(seed=1)
    plan = ops.plan_l0_grad_mask_(weights, grads, masks, alphas=alphas, beta=BETA, l2=L2, config=TINY)
    mask_plan = ops.plan_apply_masks_(weights, masks, config=TINY)
    gen = torch.Generator().manual_seed(2)
    for step in range(3):
        for g in grads:
            g.copy_(torch.randn(g.shape, generator=gen))
        expected_grads = [g.clone() for g in grads]
        expected_value = l0_grad_mask_reference_(weights, expected_grads, masks, alphas=alphas, beta=BETA, l2=L2)
        value = plan()
        for i, (g, e) in enumerate(zip(grads, expected_grads, strict=True)):
            assert_close(g, e, *TOLERANCES[torch.float32], f"{backend} plan, step {step}: grads[{i}]")
        assert_close(value, expected_value, 1e-5, 1e-5, f"{backend} plan, step {step}: regularizer value")
        expected_weights = [w.clone() for w in weights]
        apply_masks_reference_(expected_weights, masks)
        mask_plan()
        for i, (w, e) in enumerate(zip(weights, expected_weights, strict=True)):
            assert_equal(w, e, f"{backend} apply plan, step {step}: weights[{i}]")
        with torch.no_grad():
            for w in weights:
                w.add_(0.01)  # the next step sees other weights too


def test_plan_skips_validation_and_table_lookup(monkeypatch: pytest.MonkeyPatch) -> None:
    weights, grads, masks, alphas = _inputs(seed=3)
    plan = triton_kernels.plan_l0_grad_mask_(weights, grads, masks, alphas=alphas, beta=BETA, l2=L2, config=TINY)
    mask_plan = triton_kernels.plan_apply_masks_(weights, masks, config=TINY)
    expected = [g.clone() for g in grads]
    expected_value = l0_grad_mask_reference_(weights, expected, masks, alphas=alphas, beta=BETA, l2=L2)

    def forbidden(*_: object, **__: object) -> None:
        raise AssertionError("a plan call must not validate arguments or look launch tables up")

    for module in (l0_grad_mask, apply_masks):
        for name in ("check_float_list", "check_masks", "build_tables"):
            monkeypatch.setattr(module, name, forbidden)
    monkeypatch.setattr(l0_grad_mask, "check_companions", forbidden)
    value = plan()
    mask_plan()
    assert_close(value, expected_value, 1e-5, 1e-5, "plan value with validation disabled")
    assert_close(grads[1], expected[1], *TOLERANCES[torch.float32], "plan grads[1] with validation disabled")
    with pytest.raises(AssertionError, match="must not validate"):  # the plain call does validate
        triton_kernels.l0_grad_mask_(weights, grads, masks, alphas=alphas, beta=BETA, l2=L2, config=TINY)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda w, g, m: (w, g[:-1], m), "grads: has 11 tensors"),
        (lambda w, g, m: (w, g, m[:3] + [m[4]] + m[4:]), r"masks\[3\]: .*129 .*numel 127"),
        (lambda w, g, m: ([w[0].double()] + w[1:], g, m), r"weights\[0\]: dtype"),
    ],
)
def test_plan_validates_when_built(change, match: str) -> None:
    weights, grads, masks, alphas = _inputs(seed=4)
    weights, grads, masks = change(weights, grads, masks)
    with pytest.raises(ValueError, match=match):
        triton_kernels.plan_l0_grad_mask_(weights, grads, masks, alphas=alphas, beta=BETA, l2=L2, config=TINY)


def test_plan_keeps_the_memory_it_writes_alive() -> None:
    """A caller that swaps a buffer (``p.data = ...``) cannot make a plan write into freed memory."""
    weight = torch.full((40,), 2.0)
    mask = random_masks([40], "packed", torch.Generator().manual_seed(5))[0]
    old_weight, old_bits = StorageWeakRef(weight.untyped_storage()), StorageWeakRef(mask.bits.untyped_storage())
    plan = triton_kernels.plan_apply_masks_([weight], [mask], config=TINY)
    weight.data = torch.zeros(40)
    del mask
    gc.collect()
    assert not old_weight.expired() and not old_bits.expired(), "the plan must hold the storage it was built on"
    plan()  # writes into the old, still allocated buffer
    assert weight.eq(0).all(), "the swapped-in buffer is not the plan's"
    del plan
    gc.collect()
    assert old_weight.expired() and old_bits.expired(), "the storage must be released with the plan"


def test_get_ops_plans_by_backend() -> None:
    assert get_ops("torch").plan_l0_grad_mask_ is triton_kernels.plan_l0_grad_mask_reference_, "torch backend"
    assert get_ops("torch").plan_apply_masks_ is triton_kernels.plan_apply_masks_reference_, "torch backend"
    weights, grads, masks, alphas = _inputs(seed=6)
    plan = get_ops("triton").plan_l0_grad_mask_(weights, grads, masks, alphas=alphas, beta=BETA, l2=L2, config=TINY)
    assert repr(plan) == f"LaunchPlan(l0_grad_mask_, {3 * len(SIZES)} tensors)", repr(plan)
    empty = triton_kernels.plan_l0_grad_mask_([], [], None, alphas=[], beta=BETA, l2=L2)
    assert empty().item() == 0.0, "a plan over no tensors returns 0"


@pytest.mark.gpu
@pytest.mark.parametrize("mask_kind", ["mixed", "packed_segments"])
def test_gpu_plan_replays_in_cuda_graph(mask_kind: str) -> None:
    """A plan's tables exist from plan time: capture, then replay on new gradient values."""
    if not torch.cuda.is_available() or triton_kernels._multi_tensor.INTERPRET:
        pytest.skip("needs CUDA and TRITON_INTERPRET=0")
    gen = torch.Generator().manual_seed(7)
    sizes = [5, 4097, 65537, 1_000_003]
    weights = [(torch.randn(n, generator=gen) * 0.5).cuda() for n in sizes]
    grads = [torch.randn(n, generator=gen).cuda() for n in sizes]
    masks = [m.to("cuda") for m in random_masks(sizes, mask_kind, gen)]
    alphas = [0.1, 0.2, 0.3, 0.4]
    plan = triton_kernels.plan_l0_grad_mask_(weights, grads, masks, alphas=alphas, beta=BETA, l2=L2)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        plan()  # compiles the kernel outside capture
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        value = plan()
    for trial in range(3):
        fresh = [torch.randn_like(g) for g in grads]
        for g, f in zip(grads, fresh, strict=True):
            g.copy_(f)
        ref_value = l0_grad_mask_reference_(weights, fresh, masks, alphas=alphas, beta=BETA, l2=L2)
        graph.replay()
        torch.cuda.synchronize()
        for i, (g, r) in enumerate(zip(grads, fresh, strict=True)):
            assert_close(g, r, 1e-6, 2e-5, f"plan graph replay {trial} ({mask_kind}): grads[{i}]")
        assert_close(value, ref_value, 1e-3, 1e-4, f"plan graph replay {trial} ({mask_kind}): value")
