"""Tests for kernels/logprobs.py: fused linear log-probs against the full-logits reference.

    python -m pytest -q tests/kernels/test_linear_logprobs.py

On CPU the Triton kernels run under the interpreter (tests/conftest.py sets TRITON_INTERPRET=1),
so shapes are tiny. `chunk_elems` is set small so the vocabulary is split into several chunks,
the last one partial. GPU tests (skipped without CUDA) use bf16/fp16 at a real vocabulary size.
"""
import math

import pytest
import torch
import torch.nn.functional as F

from kernels import logprobs as lp
from kernels.logprobs import linear_logprobs, linear_logprobs_chunked, linear_logprobs_reference

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
IMPLS = [linear_logprobs, linear_logprobs_chunked]


def _inputs(N, V, D, dtype, device="cpu", n_ignored=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(N, D, generator=g)
    weight = torch.randn(V, D, generator=g) / math.sqrt(D) * 3  # logits of a few units, like an LM
    targets = torch.randint(0, V, (N,), generator=g)
    targets[torch.randperm(N, generator=g)[:n_ignored]] = -100
    grad = torch.randn(N, generator=g)
    return hidden.to(device, dtype), weight.to(device, dtype), targets.to(device), grad.to(device)


def _out_and_grads(fn, hidden, weight, targets, grad, **kw):
    hidden, weight = (x.detach().clone().requires_grad_() for x in (hidden, weight))
    out = fn(hidden, weight, targets, **kw)
    d_hidden, d_weight = torch.autograd.grad(out, (hidden, weight), grad)
    return out, d_hidden, d_weight


# ---------------------------------------------------------------- the reference itself
def test_reference_hand_computed():
    """hidden = [1, 0], weight rows [1, 0], [0, 0], [-1, 0]  ->  logits [1, 0, -1].

    lse = log(e + 1 + 1/e) = log(4.0862...) = 1.40761;  log p(0) = 1 - lse = -0.40761,
    log p(2) = -1 - lse = -2.40761; the second row is ignored and gives 0.
    """
    hidden = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    weight = torch.tensor([[1.0, 0.0], [0.0, 0.0], [-1.0, 0.0]])
    out = linear_logprobs_reference(hidden, weight, torch.tensor([0, -100]))
    torch.testing.assert_close(out, torch.tensor([-0.40761, 0.0]), atol=1e-5, rtol=0)
    out = linear_logprobs_reference(hidden, weight, torch.tensor([2, 1]))
    torch.testing.assert_close(out, torch.tensor([-2.40761, -1.40761]), atol=1e-5, rtol=0)


def test_reference_matches_cross_entropy():
    """Peer check: log p(target) is minus PyTorch's per-token cross-entropy."""
    hidden, weight, targets, _ = _inputs(13, 50, 8, torch.float32)
    expected = -F.cross_entropy(hidden @ weight.T, targets, reduction="none", ignore_index=-100)
    torch.testing.assert_close(linear_logprobs_reference(hidden, weight, targets), expected)
    if hasattr(F, "linear_cross_entropy"):
        expected = -F.linear_cross_entropy(hidden, weight, targets, reduction="none")
        torch.testing.assert_close(linear_logprobs_reference(hidden, weight, targets), expected)


# ---------------------------------------------------------------- implementations vs reference
@pytest.mark.parametrize("fn", IMPLS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("N,V,D", [(21, 100, 24), (5, 64, 16), (17, 131, 40)])
def test_matches_reference_fp32(fn, N, V, D):
    hidden, weight, targets, grad = _inputs(N, V, D, torch.float32, DEVICE)
    got = _out_and_grads(fn, hidden, weight, targets, grad, chunk_elems=N * 64)  # 64-column chunks
    want = _out_and_grads(linear_logprobs_reference, hidden, weight, targets, grad)
    for name, a, b in zip(["logp", "d_hidden", "d_weight"], got, want):
        assert a.dtype == b.dtype and a.shape == b.shape, name
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("fn", IMPLS, ids=lambda f: f.__name__)
def test_ignored_positions_give_zero_and_no_gradient(fn):
    hidden, weight, targets, grad = _inputs(11, 70, 16, torch.float32, DEVICE, n_ignored=4)
    ignored = targets == -100
    out, d_hidden, d_weight = _out_and_grads(fn, hidden, weight, targets, grad)
    assert torch.all(out[ignored] == 0) and torch.all(out[~ignored] < 0)
    assert torch.all(d_hidden[ignored] == 0)
    # everything ignored: zeros everywhere, also in d_weight
    all_ignored = torch.full_like(targets, -100)
    out, d_hidden, d_weight = _out_and_grads(fn, hidden, weight, all_ignored, grad)
    assert not out.any() and not d_hidden.any() and not d_weight.any()


@pytest.mark.parametrize("fn", IMPLS, ids=lambda f: f.__name__)
def test_custom_ignore_index_and_frozen_weight(fn):
    """ignore_index=0 (a pad id), and a head that needs no gradient (only hidden's is computed)."""
    hidden, weight, targets, grad = _inputs(9, 40, 16, torch.float32, DEVICE, n_ignored=0)
    targets[[1, 4]] = 0
    hidden.requires_grad_()
    out = fn(hidden, weight, targets, ignore_index=0)
    (d_hidden,) = torch.autograd.grad(out, (hidden,), grad)
    h2 = hidden.detach().clone().requires_grad_()
    ref = linear_logprobs_reference(h2, weight, targets, ignore_index=0)
    (d_ref,) = torch.autograd.grad(ref, (h2,), grad)
    assert out[1] == 0 and out[4] == 0
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(d_hidden, d_ref, atol=1e-5, rtol=1e-5)


def _max_err(a, b):
    return (a.float() - b.float()).abs().max().item()


def _check_low_precision(fn, hidden, weight, targets, grad, factor=2.0, atol=1e-3, **kw):
    """The implementation's error against fp32 stays within a small multiple of plain PyTorch's."""
    got = _out_and_grads(fn, hidden, weight, targets, grad, **kw)
    plain = _out_and_grads(linear_logprobs_reference, hidden, weight, targets, grad)
    exact = _out_and_grads(linear_logprobs_reference, hidden.float(), weight.float(), targets, grad)
    assert got[0].dtype == torch.float32
    assert got[1].dtype == hidden.dtype and got[2].dtype == weight.dtype
    for name, a, p, e in zip(["logp", "d_hidden", "d_weight"], got, plain, exact):
        kernel_err, torch_err = _max_err(a, e), _max_err(p, e)
        assert kernel_err <= factor * torch_err + atol, f"{name}: {kernel_err:.3g} vs torch {torch_err:.3g}"


@pytest.mark.parametrize("fn", IMPLS, ids=lambda f: f.__name__)
def test_fp16_error_within_pytorch_error(fn):
    hidden, weight, targets, grad = _inputs(19, 90, 32, torch.float16, DEVICE, seed=1)
    _check_low_precision(fn, hidden, weight, targets, grad, chunk_elems=19 * 64)


# ---------------------------------------------------------------- bad input
def test_rejects_bad_input():
    hidden, weight, targets, _ = _inputs(6, 30, 8, torch.float32)
    targets[2] = 30
    with pytest.raises(ValueError, match=r"targets\[2\] = 30"):
        linear_logprobs_chunked(hidden, weight, targets)
    with pytest.raises(ValueError, match="shape mismatch"):
        linear_logprobs_chunked(hidden, weight[:, :4], targets)
    with pytest.raises(ValueError, match="dtype"):
        linear_logprobs_chunked(hidden, weight.double(), targets)


def test_cpu_without_interpreter_says_what_to_use(monkeypatch):
    monkeypatch.setattr(lp, "INTERPRET", False)
    hidden, weight, targets, _ = _inputs(6, 30, 8, torch.float32, "cpu")
    with pytest.raises(RuntimeError, match="linear_logprobs_chunked"):
        linear_logprobs(hidden, weight, targets)


# ---------------------------------------------------------------- GPU: a real vocabulary
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("fn", IMPLS, ids=lambda f: f.__name__)
def test_gpu_error_within_pytorch_error(fn, dtype):
    hidden, weight, targets, grad = _inputs(1000, 32000, 256, dtype, "cuda", n_ignored=100, seed=2)
    _check_low_precision(fn, hidden, weight, targets, grad, factor=2.0, atol=1e-4, chunk_elems=1000 * 4096)


# ---------------------------------------------------------------- GPU code generation, no GPU needed
HOPPER_COMPILE = r'''
from kernels import logprobs as L

for dtype in ["bf16", "fp32"]:
    c = dict(UPCAST=False, PRECISION="ieee" if dtype == "fp32" else "tf32")
    ptrs = {"H": "*" + dtype, "W": "*" + dtype, "DZ": "*" + dtype, "TARGETS": "*i64"}
    ptrs |= {n: "*fp32" for n in ["PART_M", "PART_L", "PART_T", "LSE", "GRAD_OUT"]}
    k = build(L._lse_kernel, ptrs, c, L._CONFIGS[0])
    assert dtype == "fp32" or "wgmma" in k.asm["ptx"], "expected Hopper tensor-core instructions"
    build(L._grad_logits_kernel, ptrs, c, L._CONFIGS[0])
print("compiled")
'''


def test_kernels_compile_for_hopper_without_a_gpu(hopper_compile):
    """Compile both kernels to sm_90a PTX, which the interpreter never does (catches GPU-only errors)."""
    hopper_compile(HOPPER_COMPILE)
