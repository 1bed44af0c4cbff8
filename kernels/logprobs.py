"""Per-token log-probabilities of a linear head without building the (N x vocab) logits.

    logp = linear_logprobs(hidden, weight, targets)   # hidden (N, dim), weight (vocab, dim)
    # logp[i] = log_softmax(hidden[i] @ weight.T)[targets[i]], float32, shape (N,)

SFT and DPO only need log p(target) per token, yet the obvious code
`log_softmax(hidden @ weight.T).gather(...)` builds an (N x vocab) matrix, in fp32 often
several times over: for 16k tokens and a 32k vocabulary that is 2 GB per copy. Only two
numbers per row are needed:

    logp[i] = z[i, t_i] - lse[i],   lse[i] = log sum_j exp(z[i, j]),   z = hidden @ weight^T

Forward (Triton, `_lse_kernel`): each program takes BLOCK_M rows and a slice of the
vocabulary, computes the logits one (BLOCK_M x BLOCK_V) tile at a time (a small matmul over
dim) and folds every tile into a running max m and running sum l of exp(z - m), the same
"online" log-sum-exp that flash attention uses; it also picks out z[i, t_i] when the target
falls in the tile. Partial (m, l, z_t) of the vocabulary slices are merged in PyTorch.
The logits never reach memory.

Backward: with g the incoming gradient per token,
    d logp[i] / d z[i, j] = [j == t_i] - softmax(z[i])_j,   so   dZ = g * (onehot(t) - P),
    d hidden = dZ @ weight,   d weight = dZ^T @ hidden.
P is recomputed from the saved lse, one vocabulary chunk at a time: a Triton kernel
(`_grad_logits_kernel`) computes the chunk's logits tile by tile and writes dZ for it
directly (no logits, no P), then two ordinary matmuls add the chunk's share to d hidden and
give that chunk's rows of d weight. Memory: one (N x chunk) dZ buffer plus an fp32
accumulator for d hidden.

Ignored positions (prompt, padding): targets == ignore_index gives logp 0 and no gradient.

Three versions, to compare line by line:
  linear_logprobs_reference  plain PyTorch, full logits (tests, reading)
  linear_logprobs_chunked    plain PyTorch, vocabulary chunks (CPU fallback, no Triton)
  linear_logprobs            Triton kernels for forward and dZ (GPU; CPU only when
                             TRITON_INTERPRET=1, which is how the tests run it)
Tests: python -m pytest -q tests/kernels/test_linear_logprobs.py
Speed and memory: python -m kernels.bench --only logprobs
"""
import os

import torch
import triton
import triton.language as tl

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
_LOG2E = 1.4426950408889634
LOG2E = tl.constexpr(_LOG2E)  # the same number, readable from inside @triton.jit code
# Chunk width is chosen so that one (N x chunk) buffer holds about this many elements.
DEFAULT_CHUNK_ELEMS = 1 << 24  # 16M: 64 MiB in fp32; 16k tokens -> 1024-column chunks


# ----------------------------------------------------------------------------------------
# Plain PyTorch reference: the full logits.
# ----------------------------------------------------------------------------------------
def linear_logprobs_reference(hidden, weight, targets, ignore_index=-100):
    """log_softmax(hidden @ weight.T)[i, targets[i]] in fp32; 0 where targets == ignore_index."""
    logits = (hidden @ weight.T).float()  # (N, vocab)
    logprobs = torch.log_softmax(logits, dim=-1)  # (N, vocab)
    valid = targets != ignore_index
    safe_targets = torch.where(valid, targets, 0)
    picked = logprobs.gather(1, safe_targets[:, None]).squeeze(1)  # (N,)
    return torch.where(valid, picked, 0.0)


# ----------------------------------------------------------------------------------------
# Triton kernels
# ----------------------------------------------------------------------------------------
def _cfg(block_m, block_v, block_k, warps, stages):
    return triton.Config({"BLOCK_M": block_m, "BLOCK_V": block_v, "BLOCK_K": block_k},
                         num_warps=warps, num_stages=stages)


if INTERPRET:  # one small config: the interpreter cannot autotune and is slow
    _CONFIGS = [_cfg(16, 16, 16, 4, 1)]
else:  # matmul-shaped tiles that suit Hopper
    _CONFIGS = [  # 8 warps: with 4 these tiles spill registers (checked with ptxas for sm_90a)
        _cfg(128, 64, 64, 8, 3), _cfg(64, 128, 64, 8, 3), _cfg(128, 128, 64, 8, 3),
        _cfg(128, 128, 64, 8, 4), _cfg(128, 64, 32, 8, 4), _cfg(64, 64, 64, 4, 3),
    ]
_KEY = ["N_BUCKET", "V", "DIM"]


@triton.jit
def _logits_tile(H, W, offs_m, offs_v, N, V, DIM, stride_h, stride_w,
                 BLOCK_M: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_K: tl.constexpr,
                 UPCAST: tl.constexpr, PRECISION: tl.constexpr):
    """z = hidden[offs_m] @ weight[offs_v]^T, a (BLOCK_M, BLOCK_V) tile in fp32."""
    offs_k = tl.arange(0, BLOCK_K)
    row_ok = offs_m < N
    col_ok = offs_v < V
    acc = tl.zeros([BLOCK_M, BLOCK_V], dtype=tl.float32)
    for k0 in range(0, DIM, BLOCK_K):
        ks = k0 + offs_k
        k_ok = ks < DIM
        h = tl.load(H + offs_m[:, None] * stride_h + ks[None, :],
                    mask=row_ok[:, None] & k_ok[None, :], other=0.0)  # (BLOCK_M, BLOCK_K)
        wT = tl.load(W + offs_v[None, :] * stride_w + ks[:, None],
                     mask=col_ok[None, :] & k_ok[:, None], other=0.0)  # (BLOCK_K, BLOCK_V)
        if UPCAST:
            h = h.to(tl.float32)
            wT = wT.to(tl.float32)
        acc += tl.dot(h, wT, input_precision=PRECISION)
    return acc


@triton.autotune(configs=_CONFIGS, key=_KEY)
@triton.jit
def _lse_kernel(H, W, TARGETS, PART_M, PART_L, PART_T,
                N, V, DIM, stride_h, stride_w, vocab_per_split, N_BUCKET,
                UPCAST: tl.constexpr, PRECISION: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_K: tl.constexpr):
    """For BLOCK_M rows and one vocabulary slice: running max, sum of exp, target logit.

    Writes, in base-2 units (z * log2(e)), m = max_j z, l = sum_j 2^(z - m) and z[t] (or -inf
    when the target is not in this slice) to PART_*[split, row].
    """
    pid_m = tl.program_id(0)
    split = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = offs_m < N
    targets = tl.load(TARGETS + offs_m, mask=row_ok, other=-1).to(tl.int32)

    v_lo = split * vocab_per_split
    v_hi = tl.minimum(V, v_lo + vocab_per_split)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    z_t = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    for v0 in range(v_lo, v_hi, BLOCK_V):
        offs_v = v0 + tl.arange(0, BLOCK_V)
        z = _logits_tile(H, W, offs_m, offs_v, N, V, DIM, stride_h, stride_w,
                         BLOCK_M, BLOCK_V, BLOCK_K, UPCAST, PRECISION) * LOG2E
        z = tl.where(offs_v[None, :] < v_hi, z, float("-inf"))  # (BLOCK_M, BLOCK_V)
        m_new = tl.maximum(m_i, tl.max(z, 1))
        l_i = l_i * tl.math.exp2(m_i - m_new) + tl.sum(tl.math.exp2(z - m_new[:, None]), 1)
        m_i = m_new
        is_target = offs_v[None, :] == targets[:, None]
        z_t = tl.maximum(z_t, tl.max(tl.where(is_target, z, float("-inf")), 1))
    out = split * N + offs_m
    tl.store(PART_M + out, m_i, mask=row_ok)
    tl.store(PART_L + out, l_i, mask=row_ok)
    tl.store(PART_T + out, z_t, mask=row_ok)


@triton.autotune(configs=_CONFIGS, key=_KEY)
@triton.jit
def _grad_logits_kernel(H, W, TARGETS, LSE, GRAD_OUT, DZ,
                        N, V, DIM, stride_h, stride_w, v_start, chunk, N_BUCKET,
                        UPCAST: tl.constexpr, PRECISION: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_K: tl.constexpr):
    """dZ[:, v_start : v_start + chunk] = g * (onehot(t) - exp(z - lse)), written as (N, chunk)."""
    pid_m = tl.program_id(0)
    pid_v = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_c = pid_v * BLOCK_V + tl.arange(0, BLOCK_V)  # column inside the chunk
    offs_v = v_start + offs_c  # column in the whole vocabulary
    row_ok = offs_m < N
    col_ok = (offs_c < chunk) & (offs_v < V)
    z = _logits_tile(H, W, offs_m, offs_v, N, V, DIM, stride_h, stride_w,
                     BLOCK_M, BLOCK_V, BLOCK_K, UPCAST, PRECISION)  # (BLOCK_M, BLOCK_V)
    lse = tl.load(LSE + offs_m, mask=row_ok, other=0.0)
    g = tl.load(GRAD_OUT + offs_m, mask=row_ok, other=0.0)  # already 0 on ignored rows
    targets = tl.load(TARGETS + offs_m, mask=row_ok, other=-1).to(tl.int32)
    probs = tl.math.exp2((z - lse[:, None]) * LOG2E)
    onehot = tl.where(offs_v[None, :] == targets[:, None], 1.0, 0.0)
    dz = g[:, None] * (onehot - probs)
    tl.store(DZ + offs_m[:, None] * chunk + offs_c[None, :], dz.to(DZ.dtype.element_ty),
             mask=row_ok[:, None] & col_ok[None, :])


# ----------------------------------------------------------------------------------------
# The two ways of computing (logp, lse) and dZ for a vocabulary chunk
# ----------------------------------------------------------------------------------------
def _kernel_flags(hidden, N):
    return dict(N_BUCKET=triton.next_power_of_2(N),
                UPCAST=INTERPRET and hidden.dtype == torch.bfloat16,
                PRECISION="ieee" if hidden.dtype == torch.float32 else "tf32")


def _forward_triton(hidden, weight, targets, valid, vocab_per_split=None):
    N, dim = hidden.shape
    V = weight.shape[0]
    if vocab_per_split is None:  # enough slices to fill the GPU when N is small
        vocab_per_split = 32 if INTERPRET else 4096
    splits = triton.cdiv(V, vocab_per_split)
    part_m, part_l, part_t = (torch.empty((splits, N), dtype=torch.float32, device=hidden.device)
                              for _ in range(3))
    grid = lambda meta: (triton.cdiv(N, meta["BLOCK_M"]), splits)
    _lse_kernel[grid](hidden, weight, targets, part_m, part_l, part_t,
                      N, V, dim, hidden.stride(0), weight.stride(0), vocab_per_split,
                      **_kernel_flags(hidden, N))
    # merge the slices: lse = M + log2(sum_s l_s * 2^(m_s - M)), all in base 2
    m = part_m.max(dim=0).values  # (N,)
    lse2 = m + torch.log2((part_l * torch.exp2(part_m - m)).sum(dim=0))
    z_t2 = part_t.max(dim=0).values
    lse = lse2 / _LOG2E  # back to natural log
    logp = torch.where(valid, (z_t2 - lse2) / _LOG2E, 0.0)
    return logp, lse


def _forward_torch(hidden, weight, targets, valid, chunk):
    N = hidden.shape[0]
    V = weight.shape[0]
    lse = torch.full((N,), float("-inf"), dtype=torch.float32, device=hidden.device)
    z_t = torch.zeros((N,), dtype=torch.float32, device=hidden.device)
    for v0 in range(0, V, chunk):
        v1 = min(V, v0 + chunk)
        z = (hidden @ weight[v0:v1].T).float()  # (N, v1 - v0)
        lse = torch.logaddexp(lse, torch.logsumexp(z, dim=-1))  # online log-sum-exp
        in_chunk = valid & (targets >= v0) & (targets < v1)
        local = (targets - v0).clamp(0, v1 - v0 - 1)
        z_t += torch.where(in_chunk, z.gather(1, local[:, None]).squeeze(1), 0.0)
    logp = torch.where(valid, z_t - lse, 0.0)
    return logp, lse


def _grad_logits_triton(hidden, weight, targets, lse, g, v0, v1):
    N, dim = hidden.shape
    V = weight.shape[0]
    dz = torch.empty((N, v1 - v0), dtype=hidden.dtype, device=hidden.device)  # (N, chunk)
    grid = lambda meta: (triton.cdiv(N, meta["BLOCK_M"]), triton.cdiv(v1 - v0, meta["BLOCK_V"]))
    _grad_logits_kernel[grid](hidden, weight, targets, lse, g, dz,
                              N, V, dim, hidden.stride(0), weight.stride(0), v0, v1 - v0,
                              **_kernel_flags(hidden, N))
    return dz


def _grad_logits_torch(hidden, weight, targets, lse, g, v0, v1):
    z = (hidden @ weight[v0:v1].T).float()  # (N, chunk)
    dz = z.sub_(lse[:, None]).exp_().mul_(-g[:, None])  # -g * P, in place: one (N, chunk) buffer
    rows = torch.nonzero((targets >= v0) & (targets < v1) & (g != 0)).squeeze(1)
    dz[rows, targets[rows] - v0] += g[rows]  # + g * onehot(t)
    return dz.to(hidden.dtype)


def _vocab_chunk(N, V, max_elems):
    """Vocabulary columns per chunk so that an (N x chunk) buffer has about max_elems elements."""
    chunk = max(64, (max_elems // max(N, 1)) // 64 * 64)
    return min(V, chunk)


class LinearLogprobs(torch.autograd.Function):
    """logp = log_softmax(hidden @ weight.T)[targets]; forward and backward in vocabulary chunks."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, ignore_index, use_triton, chunk_elems):
        valid = targets != ignore_index
        chunk = _vocab_chunk(hidden.shape[0], weight.shape[0], chunk_elems)
        if use_triton:
            logp, lse = _forward_triton(hidden, weight, targets, valid)
        else:
            logp, lse = _forward_torch(hidden, weight, targets, valid, chunk)
        ctx.save_for_backward(hidden, weight, targets, valid, lse)
        ctx.use_triton, ctx.chunk = use_triton, chunk
        return logp

    @staticmethod
    def backward(ctx, grad_logp):
        hidden, weight, targets, valid, lse = ctx.saved_tensors
        need_dh, need_dw = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        g = torch.where(valid, grad_logp.float(), 0.0)  # (N,), no gradient through ignored rows
        grad_logits = _grad_logits_triton if ctx.use_triton else _grad_logits_torch
        dh = torch.zeros(hidden.shape, dtype=torch.float32, device=hidden.device) if need_dh else None
        dw = torch.empty_like(weight) if need_dw else None
        V = weight.shape[0]
        for v0 in range(0, V, ctx.chunk):
            v1 = min(V, v0 + ctx.chunk)
            dz = grad_logits(hidden, weight, targets, lse, g, v0, v1)  # (N, chunk), hidden's dtype
            if need_dh:
                dh += dz @ weight[v0:v1]  # (N, dim)
            if need_dw:
                torch.matmul(dz.T, hidden, out=dw[v0:v1])  # (chunk, dim)
        dh = dh.to(hidden.dtype) if need_dh else None
        return dh, dw, None, None, None, None


def _check_inputs(hidden, weight, targets, ignore_index):
    if hidden.dim() != 2 or weight.dim() != 2 or targets.dim() != 1:
        raise ValueError(f"want hidden (N, dim), weight (vocab, dim), targets (N,); got "
                         f"{tuple(hidden.shape)}, {tuple(weight.shape)}, {tuple(targets.shape)}")
    if hidden.shape[1] != weight.shape[1] or hidden.shape[0] != targets.shape[0]:
        raise ValueError(f"shape mismatch: hidden {tuple(hidden.shape)}, weight {tuple(weight.shape)}, "
                         f"targets {tuple(targets.shape)}")
    if hidden.dtype != weight.dtype or not hidden.dtype.is_floating_point:
        raise ValueError(f"hidden and weight must share one floating dtype; got {hidden.dtype}, {weight.dtype}")
    if targets.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"targets must be an integer tensor; got {targets.dtype}")
    bad = (targets != ignore_index) & ((targets < 0) | (targets >= weight.shape[0]))
    if bool(bad.any()):
        i = int(torch.nonzero(bad)[0])
        raise ValueError(f"targets[{i}] = {int(targets[i])} is outside [0, {weight.shape[0]}) "
                         f"and is not ignore_index={ignore_index}")


def linear_logprobs(hidden, weight, targets, ignore_index=-100, chunk_elems=DEFAULT_CHUNK_ELEMS):
    """Per-token log p(targets) under the head `weight`, fp32 (N,), via Triton kernels.

    hidden (N, dim) and weight (vocab, dim) share a dtype (fp16, bf16 or fp32); targets (N,)
    are token ids, ignore_index marks positions that get 0 and no gradient. Differentiable in
    hidden and weight. Needs CUDA tensors (or TRITON_INTERPRET=1); see linear_logprobs_chunked
    for a plain PyTorch version that runs anywhere. chunk_elems bounds the (N x chunk) buffer
    the backward pass works in (smaller: less memory, more, smaller matmuls).
    """
    _check_inputs(hidden, weight, targets, ignore_index)
    if hidden.device.type != "cuda" and not INTERPRET:
        raise RuntimeError(
            "linear_logprobs runs Triton kernels and needs CUDA tensors; on CPU use "
            "linear_logprobs_chunked() (same result, plain PyTorch) or linear_logprobs_reference()")
    hidden, weight = hidden.contiguous(), weight.contiguous()
    return LinearLogprobs.apply(hidden, weight, targets.long().contiguous(), ignore_index, True, chunk_elems)


def linear_logprobs_chunked(hidden, weight, targets, ignore_index=-100, chunk_elems=DEFAULT_CHUNK_ELEMS):
    """Same as linear_logprobs in plain PyTorch: logits only ever exist one vocabulary chunk at a time."""
    _check_inputs(hidden, weight, targets, ignore_index)
    return LinearLogprobs.apply(hidden, weight, targets.long(), ignore_index, False, chunk_elems)
