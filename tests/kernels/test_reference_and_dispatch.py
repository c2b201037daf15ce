"""l0_penalty gradient vs finite differences and vs the fused gradient term; get_ops backend selection."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import triton_kernels
import triton_kernels._multi_tensor as mt
from tests.kernels.kernel_testing import TINY, assert_close, flat_views
from triton_kernels import PackedMask, get_ops, l0_grad_mask_reference_, l0_penalty


def _weights_away_from_zero(sizes: list[int], seed: int) -> list[torch.Tensor]:
    """fp64 leaves with |w| in [0.05, 1.05]: finite differences stay off the kink of |w| at 0."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for n in sizes:
        magnitude = torch.rand(n, generator=gen, dtype=torch.float64) + 0.05
        sign = torch.where(torch.rand(n, generator=gen) > 0.5, 1.0, -1.0).double()
        out.append((magnitude * sign).requires_grad_())
    return out


def test_l0_penalty_gradient_matches_finite_differences() -> None:
    weights = _weights_away_from_zero([5, 3], seed=20)
    assert torch.autograd.gradcheck(
        lambda a, b: l0_penalty([a, b], alphas=[0.3, 0.7], beta=4.0, l2=0.05), tuple(weights), eps=1e-6, atol=1e-7
    ), "l0_penalty gradient vs central finite differences"


def test_l0_penalty_gradient_is_the_kernel_term() -> None:
    """Autograd-in-loss and the fused kernel add the same gradient and report the same value."""
    weights = _weights_away_from_zero([7, 130], seed=21)
    weights[0].data[0] = 0.0  # sign(0) = 0 on both paths
    alphas, beta, l2 = [0.2, 0.5], 3.0, 0.01
    penalty = l0_penalty(weights, alphas, beta, l2)
    penalty.backward()
    w32 = [w.detach().float() for w in weights]
    grads = [torch.zeros_like(w) for w in w32]
    value = triton_kernels.l0_grad_mask_(w32, grads, None, alphas=alphas, beta=beta, l2=l2, config=TINY)
    for i, (g, w) in enumerate(zip(grads, weights, strict=True)):
        assert_close(g, w.grad.float(), 1e-6, 1e-5, f"kernel term vs autograd grad of l0_penalty, tensor {i}")
    assert_close(value, penalty.float().detach(), 1e-5, 1e-5, "kernel value vs l0_penalty")


def test_l0_penalty_empty() -> None:
    assert l0_penalty([], [], 1.0, 1.0).item() == 0.0, "empty penalty must be 0"


def _one_call(ops: triton_kernels.KernelOps) -> torch.Tensor:
    gen = torch.Generator().manual_seed(22)
    weights, grads = flat_views([37, 5], torch.float32, gen), flat_views([37, 5], torch.float32, gen)
    return ops.l0_grad_mask_(weights, grads, None, alphas=0.1, beta=2.0, l2=0.01, config=TINY)


def test_get_ops_backends_agree() -> None:
    ops = {name: get_ops(name) for name in ("torch", "auto", "triton")}
    assert ops["torch"].l0_grad_mask_ is l0_grad_mask_reference_, "torch backend must be the reference"
    values = {name: _one_call(o) for name, o in ops.items()}
    for name in ("auto", "triton"):
        assert_close(values[name], values["torch"], 1e-5, 1e-5, f"backend {name} value vs torch")
    masks, counts = ops["auto"].threshold_masks([torch.tensor([0.1, -2.0, 3.0])], 1.0, config=TINY)
    assert counts.tolist() == [2] and masks[0].tolist() == [False, True, True], f"auto threshold: {masks}, {counts}"


def test_get_ops_rejects_unknown_backend() -> None:
    with pytest.raises(ValueError, match="backend: must be one of"):
        get_ops("cuda")


def test_without_interpreter_on_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """No interpreter and no CUDA: "triton" fails in one line, "auto" falls back to the reference."""
    monkeypatch.setattr(mt, "INTERPRET", False)
    monkeypatch.setattr(triton_kernels.dispatch, "INTERPRET", False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="backend 'triton' cannot run") as info:
        get_ops("triton")
    assert "\n" not in str(info.value), f"error must be one line: {info.value!r}"
    reference_value = _one_call(get_ops("torch"))
    assert_close(_one_call(get_ops("auto")), reference_value, 0.0, 0.0, "auto fallback vs reference")


def test_triton_backend_rejects_unusable_device(monkeypatch: pytest.MonkeyPatch) -> None:
    ops = get_ops("triton")
    monkeypatch.setattr(mt, "INTERPRET", False)
    with pytest.raises(RuntimeError, match="need CUDA tensors"):
        ops.apply_masks_([torch.ones(3)], [torch.ones(3, dtype=torch.bool)])


def test_tables_chunks_and_alignment_flags() -> None:
    base = torch.zeros(300)
    views = [base[:260], base[1:6], torch.empty(0), base[4:8]]  # aligned, 4-byte offset, empty, 16-byte offset
    tensor_table, chunk_table, scalars = mt.build_tables([views, views], [1.0, 2.0, 3.0, 4.0], 128, base.device)
    assert tensor_table[:, 2].tolist() == [260, 5, 0, 4], f"numel column: {tensor_table[:, 2].tolist()}"
    assert tensor_table[:, 3].tolist() == [1, 0, 1, 1], f"aligned flags: {tensor_table[:, 3].tolist()}"
    assert tensor_table[1, 0].item() == base.data_ptr() + 4, "a view's address includes its storage offset"
    assert chunk_table.tolist() == [[0, 0], [0, 128], [0, 256], [1, 0], [3, 0]], f"chunks: {chunk_table.tolist()}"
    assert scalars.dtype == torch.float32 and scalars.tolist() == [1.0, 2.0, 3.0, 4.0], f"scalars: {scalars}"


def test_tables_store_bit_addresses_of_packed_masks() -> None:
    """A packed mask's entry is 8 · byte address + bit offset, and it does not clear the aligned flag."""
    weights = torch.zeros(64)
    packed = PackedMask.pack(torch.ones(200, dtype=torch.bool))
    masks = [packed.narrow(0, 16), packed.narrow(13, 16), packed.narrow(75, 32)]  # offsets 0, 5, 3
    views = [weights[:16], weights[16:32], weights[32:64]]  # 0, 64 and 128 bytes in: all aligned
    tensor_table, _, _ = mt.build_tables([views, masks], [0.0] * 3, 128, weights.device)
    base = packed.bits.data_ptr()
    expected = [8 * base, 8 * (base + 1) + 5, 8 * (base + 9) + 3]
    assert tensor_table[:, 1].tolist() == expected, f"bit addresses: {tensor_table[:, 1].tolist()} vs {expected}"
    assert tensor_table[:, 3].tolist() == [1, 1, 1], f"packed masks must not clear aligned: {tensor_table[:, 3]}"
    with pytest.raises(ValueError, match="column 1 mixes packed masks"):
        mt.build_tables([views, [masks[0], torch.ones(16, dtype=torch.bool), masks[2]]], [0.0] * 3, 128, weights.device)


_PLAIN_CPU_CALLS = """
import torch, triton_kernels as tk
from triton_kernels import PackedMask
w, g, m = [torch.zeros(5)], [torch.zeros(5)], [torch.ones(5, dtype=torch.bool)]
calls = {
    "l0_grad_mask_": lambda: tk.l0_grad_mask_(w, g, None, alphas=1e-3, beta=10.0, l2=1e-4),
    "l0_grad_mask_ bf16 packed": lambda: tk.l0_grad_mask_([w[0].bfloat16()], [g[0].bfloat16()],
                                                           [PackedMask.pack(m[0])], alphas=1e-3, beta=10.0, l2=1e-4),
    "l0_grad_mask_ zero-numel": lambda: tk.l0_grad_mask_([torch.zeros(0)], [torch.zeros(0)], None, alphas=1e-3,
                                                          beta=10.0, l2=1e-4),
    "plan_l0_grad_mask_": lambda: tk.plan_l0_grad_mask_(w, g, m, alphas=1e-3, beta=10.0, l2=1e-4),
    "apply_masks_": lambda: tk.apply_masks_(w, m),
    "plan_apply_masks_": lambda: tk.plan_apply_masks_(w, m),
    "threshold_masks": lambda: tk.threshold_masks(w, 0.5),
}
for name, call in calls.items():
    try:
        call()
        print(f"{name}: no error")
    except Exception as exc:
        print(f"{name}: {type(exc).__name__}: {exc}".replace(chr(10), " | "))
"""


def test_kernels_on_plain_cpu_fail_in_one_line_before_launching() -> None:
    """Every public kernel entry on CPU tensors without TRITON_INTERPRET (a real process, as a user runs it) raises
    the documented one-line RuntimeError, not Triton's `0 active drivers ([]). There should only be one.`"""
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "TRITON_INTERPRET": "0", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, "-c", _PLAIN_CPU_CALLS], cwd=repo, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, f"the calls crashed:\n{proc.stderr[-3000:]}"
    expected = ("RuntimeError: backend 'triton' cannot run: Triton kernels need CUDA tensors (or TRITON_INTERPRET=1 "
                "for CPU), got cpu")
    lines = proc.stdout.splitlines()
    assert len(lines) == 7, f"one line per call expected:\n{proc.stdout}"
    for line in lines:
        assert line.split(": ", 1)[1] == expected, f"expected {expected!r}, got {line!r}"


BAD_STRENGTHS = [
    ({"beta": float("nan")}, "beta: must be finite and >= 0, got nan"),
    ({"beta": float("inf")}, "beta: must be finite and >= 0, got inf"),
    ({"alphas": -1e-3}, "alphas: must be finite and >= 0, got -0.001"),
    ({"alphas": [0.1, float("nan")]}, r"alphas\[1\]: must be finite and >= 0, got nan"),
    ({"l2": -1e-4}, "l2: must be finite and >= 0, got -0.0001"),
]


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize(("bad", "match"), BAD_STRENGTHS)
def test_non_finite_or_negative_strengths_are_refused_by_both_backends(backend: str, bad: dict, match: str) -> None:
    """beta=nan returned a NaN value and a negative alpha was accepted; both backends now refuse them in one line."""
    ops = get_ops(backend)
    weights, grads = [torch.randn(7), torch.randn(3)], [torch.randn(7), torch.randn(3)]
    before = [g.clone() for g in grads]
    kwargs = {"alphas": 1e-3, "beta": 10.0, "l2": 1e-4, **bad}
    for fn in (ops.l0_grad_mask_, ops.plan_l0_grad_mask_):
        with pytest.raises(ValueError, match=f"^{match}$"):
            fn(weights, grads, None, config=TINY, **kwargs)
    for g, b in zip(grads, before, strict=True):
        assert torch.equal(g, b), "a refused call must leave the gradients alone"
    if backend == "torch":  # the autograd gradient path's penalty says the same
        with pytest.raises(ValueError, match=f"^{match}$"):
            l0_penalty(weights, kwargs["alphas"], kwargs["beta"], kwargs["l2"])


@pytest.mark.parametrize("device", ["cpu", "cuda", "meta"])
def test_auto_is_one_rule_and_backend_is_the_resolved_name(device: str) -> None:
    """`get_ops("auto")` resolves as `regularizer.backend=auto` does (triton only on CUDA where Triton runs; torch on
    CPU even under TRITON_INTERPRET=1), and `.backend` names what it resolved to, never "auto"."""
    from sparsetrain.backend import resolve_backend

    assert get_ops("auto").backend in ("triton", "torch"), "get_ops('auto') without a device must resolve too"
    ops = get_ops("auto", device)
    assert ops.backend == resolve_backend("auto", torch.device(device)), f"{device}: get_ops vs the run's rule"
    assert ops.backend in ("triton", "torch"), f"{device}: .backend must be resolved, got {ops.backend!r}"
    if device != "cuda" or not torch.cuda.is_available() or mt.INTERPRET:
        assert ops.backend == "torch" and ops.l0_grad_mask_ is l0_grad_mask_reference_, f"{device}: {ops.backend}"
