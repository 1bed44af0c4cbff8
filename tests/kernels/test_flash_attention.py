"""Tests for kernels/attention.py: the Triton flash attention against a plain PyTorch reference.

    python -m pytest -q tests/kernels/test_flash_attention.py

On CPU the kernels run under the Triton interpreter (tests/conftest.py sets TRITON_INTERPRET=1),
so shapes are tiny and dtypes are fp32/fp16. The GPU tests (skipped without CUDA) use bf16/fp16
and larger shapes, with FlashAttention's style of tolerance: the kernel's error against an fp32
reference may be at most a small multiple of plain PyTorch's error in the same low precision.
"""
import math

import pytest
import torch
import torch.nn.functional as F

from kernels import attention
from kernels.attention import attention_reference, flash_attention

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"


def _inputs(B, H, H_kv, T, S, D, dtype, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, T, D, generator=g)
    k = torch.randn(B, H_kv, S, D, generator=g)
    v = torch.randn(B, H_kv, S, D, generator=g)
    do = torch.randn(B, H, T, D, generator=g)
    return [x.to(device=device, dtype=dtype) for x in (q, k, v, do)]


def _out_and_grads(fn, q, k, v, do, **kw):
    q, k, v = (x.detach().clone().requires_grad_() for x in (q, k, v))
    out = fn(q, k, v, **kw)
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), do)
    return out, dq, dk, dv


# ---------------------------------------------------------------- the reference itself
def test_reference_hand_computed():
    """One head, T = S = 2, head_dim 1, sm_scale 1, causal.

    q = [1, 2], k = [0, 1], v = [10, 20].
    Row 0 (position 0) only sees key 0:                 out = 10.
    Row 1 sees both, scores 2*0 = 0 and 2*1 = 2:        p = [1, e^2] / (1 + e^2),
                                                        out = (10 + 20 e^2) / (1 + e^2).
    """
    q = torch.tensor([1.0, 2.0]).view(1, 1, 2, 1)
    k = torch.tensor([0.0, 1.0]).view(1, 1, 2, 1)
    v = torch.tensor([10.0, 20.0]).view(1, 1, 2, 1)
    out = attention_reference(q, k, v, causal=True, sm_scale=1.0).flatten()
    e2 = math.exp(2.0)
    torch.testing.assert_close(out, torch.tensor([10.0, (10 + 20 * e2) / (1 + e2)]))


@pytest.mark.parametrize("T,S", [(7, 7), (3, 9)])
def test_reference_matches_sdpa(T, S):
    """Peer check: SDPA with a bottom-right causal mask and grouped-query heads."""
    from torch.nn.attention.bias import causal_lower_right

    q, k, v, _ = _inputs(2, 4, 2, T, S, 8, torch.float32)
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=causal_lower_right(T, S), enable_gqa=True)
    torch.testing.assert_close(attention_reference(q, k, v, causal=True), expected, atol=1e-5, rtol=1e-5)
    expected = F.scaled_dot_product_attention(q, k, v, enable_gqa=True, scale=0.3)
    torch.testing.assert_close(attention_reference(q, k, v, causal=False, sm_scale=0.3), expected,
                               atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- kernel vs reference (fp32)
CASES = [
    # B, H, H_kv, T,  S,  D, causal
    (2, 4, 2, 37, 37, 16, True),    # GQA, odd length: tails in every block loop
    (2, 2, 2, 33, 45, 16, False),   # non-causal, T != S
    (1, 4, 1, 5, 41, 32, True),     # KV-cache decode: few queries, bottom-right causal, MQA
    (1, 2, 2, 1, 29, 16, True),     # a single query
    (1, 2, 1, 20, 20, 8, True),     # head dim smaller than the 16 a tl.dot needs
    (1, 2, 2, 17, 17, 24, True),    # head dim not a power of two
]


@pytest.mark.parametrize("B,H,H_kv,T,S,D,causal", CASES)
def test_matches_reference_fp32(B, H, H_kv, T, S, D, causal):
    q, k, v, do = _inputs(B, H, H_kv, T, S, D, torch.float32, DEVICE)
    got = _out_and_grads(flash_attention, q, k, v, do, causal=causal)
    want = _out_and_grads(attention_reference, q, k, v, do, causal=causal)
    for name, a, b in zip(["out", "dq", "dk", "dv"], got, want):
        assert a.shape == b.shape and a.dtype == b.dtype, name
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4, msg=lambda m: f"{name}: {m}")


def test_custom_scale_and_non_contiguous_inputs():
    """The model hands over q, k, v as transposes of (B, T, heads, D) tensors."""
    B, H, H_kv, T, D = 1, 4, 2, 19, 16
    g = torch.Generator().manual_seed(1)
    q = torch.randn(B, T, H, D, generator=g).to(DEVICE).transpose(1, 2)  # (B, H, T, D), strided
    k = torch.randn(B, T, H_kv, D, generator=g).to(DEVICE).transpose(1, 2)
    v = torch.randn(B, T, H_kv, D, generator=g).to(DEVICE).transpose(1, 2)
    do = torch.randn(B, T, H, D, generator=g).to(DEVICE).transpose(1, 2)
    assert not q.is_contiguous()
    got = _out_and_grads(flash_attention, q, k, v, do, causal=True, sm_scale=0.2)
    want = _out_and_grads(attention_reference, q, k, v, do, causal=True, sm_scale=0.2)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4)


def _max_err(a, b):
    return (a.float() - b.float()).abs().max().item()


def _check_low_precision(q, k, v, do, causal, factor=2.0, atol=1e-3):
    """FlashAttention-style check against an fp32 reference, for out and every gradient."""
    got = _out_and_grads(flash_attention, q, k, v, do, causal=causal)
    plain = _out_and_grads(attention_reference, q, k, v, do, causal=causal)  # PyTorch, low precision
    exact = _out_and_grads(attention_reference, *(x.float() for x in (q, k, v, do)), causal=causal)
    for name, a, p, e in zip(["out", "dq", "dk", "dv"], got, plain, exact):
        assert a.dtype == q.dtype, name
        kernel_err, torch_err = _max_err(a, e), _max_err(p, e)
        assert kernel_err <= factor * torch_err + atol, f"{name}: kernel {kernel_err:.3g} vs torch {torch_err:.3g}"


def test_fp16_error_within_pytorch_error():
    q, k, v, do = _inputs(1, 4, 2, 29, 29, 32, torch.float16, DEVICE, seed=2)
    _check_low_precision(q, k, v, do, causal=True)


def test_gradients_flow_through_a_loss():
    """Training use: a scalar loss built on the output back-propagates into q, k and v."""
    q, k, v, _ = _inputs(1, 2, 1, 9, 9, 16, torch.float32, DEVICE, seed=3)
    q, k, v = (x.requires_grad_() for x in (q, k, v))
    flash_attention(q, k, v).square().sum().backward()
    q2, k2, v2 = (x.detach().clone().requires_grad_() for x in (q, k, v))
    attention_reference(q2, k2, v2).square().sum().backward()
    for a, b in [(q.grad, q2.grad), (k.grad, k2.grad), (v.grad, v2.grad)]:
        torch.testing.assert_close(a, b, atol=5e-5, rtol=1e-4)


# ---------------------------------------------------------------- bad input
def test_rejects_bad_shapes():
    q, k, v, _ = _inputs(1, 3, 2, 4, 4, 16, torch.float32)
    with pytest.raises(ValueError, match="multiple of n_kv_heads"):
        flash_attention(q, k, v)
    q, k, v, _ = _inputs(1, 2, 2, 8, 4, 16, torch.float32)
    with pytest.raises(ValueError, match="more queries"):
        flash_attention(q, k, v, causal=True)
    with pytest.raises(ValueError, match="dtype"):
        flash_attention(q.double(), k.double(), v.double(), causal=False)


def test_cpu_without_interpreter_says_what_to_use(monkeypatch):
    monkeypatch.setattr(attention, "INTERPRET", False)
    q, k, v, _ = _inputs(1, 2, 2, 4, 4, 16, torch.float32, "cpu")
    with pytest.raises(RuntimeError, match="attention_reference"):
        flash_attention(q, k, v)


# ---------------------------------------------------------------- GPU: realistic shapes
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("B,H,H_kv,T,S,D,causal", [
    (2, 8, 2, 1000, 1000, 128, True),
    (2, 8, 8, 777, 777, 64, False),
    (1, 8, 1, 1, 1500, 128, True),     # decode step against a long cache
    (1, 8, 2, 100, 1500, 64, True),    # chunked prefill against a cache
])
def test_gpu_error_within_pytorch_error(dtype, B, H, H_kv, T, S, D, causal):
    q, k, v, do = _inputs(B, H, H_kv, T, S, D, dtype, "cuda", seed=4)
    _check_low_precision(q, k, v, do, causal, factor=2.0, atol=1e-4)


# ---------------------------------------------------------------- GPU code generation, no GPU needed
HOPPER_COMPILE = r'''
from kernels import attention as A

stats = {"LSE": "*fp32", "DELTA": "*fp32"}
for dtype in ["bf16", "fp32"]:
    c = dict(HEAD_DIM=128, BLOCK_D=128, CAUSAL=True, UPCAST=False, PRECISION="ieee" if dtype == "fp32" else "tf32")
    ptrs = {n: "*" + dtype for n in ["Q", "K", "V", "O", "DO", "DQ", "DK", "DV"]} | stats
    k = build(A._fwd_kernel, ptrs, c, A._FWD_CONFIGS[0])
    assert dtype == "fp32" or "wgmma" in k.asm["ptx"], "expected Hopper tensor-core instructions"
    build(A._bwd_dq_kernel, ptrs, c, A._BWD_DQ_CONFIGS[0])
    build(A._bwd_dkdv_kernel, ptrs, c, A._BWD_DKDV_CONFIGS[0])
    build(A._bwd_delta_kernel, ptrs, dict(HEAD_DIM=128, BLOCK_D=128, BLOCK_M=64))
print("compiled")
'''


def test_kernels_compile_for_hopper_without_a_gpu(hopper_compile):
    """Compile every kernel to sm_90a PTX, which the interpreter never does (catches GPU-only errors)."""
    hopper_compile(HOPPER_COMPILE)
