"""Flash attention in Triton: forward and backward, causal or not, with grouped-query heads.

    out = flash_attention(q, k, v, causal=True)      # q (B, H, T, D), k/v (B, H_kv, S, D)

Attention is softmax(q k^T * sm_scale) v. Written naively it builds the (T x S) score
matrix per head, which costs O(T*S) memory and is slow because every score travels to
memory and back. Flash attention (Dao et al., 2022; FlashAttention-2, 2023) never builds it:

  forward   each program owns BLOCK_M query rows and walks over the keys BLOCK_N at a time,
            keeping a running maximum m, a running sum l of exp(score - m) and an unnormalised
            output acc ("online softmax"). When a new block raises the maximum, the old l and
            acc are rescaled by exp(m_old - m_new). At the end out = acc / l and we keep only
            the log-sum-exp lse = m + log(l) per row, (B, H, T) numbers, for the backward pass.
  backward  with lse the probabilities can be recomputed block by block,
            p = exp(score - lse), so no (T x S) matrix is ever stored. With
            dP = dO V^T and delta = rowsum(dO * O):
                dV = P^T dO,   dS = P * (dP - delta),   dQ = scale * dS K,   dK = scale * dS^T Q.
            One kernel computes dQ (a program per query block), another dK and dV (a program
            per key block, looping over every query head that shares that K/V head).

Details worth knowing when reading the kernels:
  * Scores are scaled by sm_scale * log2(e) so the kernels can use exp2, which is cheaper.
    The saved lse is therefore in base 2 (it is an internal detail of this file).
  * Grouped-query attention: query head h reads K/V head h // (H // H_kv). K and V are never
    repeated in memory.
  * Causal attention with fewer queries than keys (T < S, decoding with a KV cache) is
    "bottom-right aligned": query i sits at absolute position S - T + i and sees keys 0..S-T+i.
  * Any T and S: loads and stores are masked at the tails. Head dims up to 256; small ones
    (e.g. 16) work too, padded to a power of two >= 16 inside the kernel.
  * fp16 / bf16 / fp32 inputs; matmuls accumulate in fp32 and the softmax runs in fp32.
  * On CPU the kernels run only under the Triton interpreter (TRITON_INTERPRET=1 set before
    triton is imported; tests/conftest.py does it). The interpreter gets bf16 matmuls wrong,
    so there the tiles are upcast to fp32 first.

`attention_reference` below is the same maths in plain PyTorch, for tests and for reading.
Tests: python -m pytest -q tests/kernels/test_flash_attention.py
Speed: python -m kernels.bench --only attention   (needs a CUDA GPU)
"""
import math
import os

import torch
import triton
import triton.language as tl

# Decided once, like Triton itself decides at import time whether @triton.jit interprets.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


# ----------------------------------------------------------------------------------------
# Plain PyTorch reference: the same maths, with the full (T x S) score matrix.
# ----------------------------------------------------------------------------------------
def attention_reference(q, k, v, causal=True, sm_scale=None):
    """softmax(q k^T * sm_scale) v with bottom-right causal masking and grouped-query heads.

    Runs in the dtype it is given (the softmax itself in fp32): pass fp32 tensors for a
    precise reference, low-precision ones to see plain PyTorch's own rounding error.
    """
    B, H, T, D = q.shape
    H_kv, S = k.shape[1], k.shape[2]
    sm_scale = 1.0 / math.sqrt(D) if sm_scale is None else sm_scale
    k = k.repeat_interleave(H // H_kv, dim=1)  # (B, H, S, D)
    v = v.repeat_interleave(H // H_kv, dim=1)  # (B, H, S, D)
    scores = (q @ k.transpose(-2, -1)) * sm_scale  # (B, H, T, S)
    if causal:
        # query i is at absolute position S - T + i and may look at keys 0 .. S - T + i
        visible = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(diagonal=S - T)
        scores = scores.masked_fill(~visible, float("-inf"))
    probs = torch.softmax(scores.float(), dim=-1).to(q.dtype)  # (B, H, T, S)
    return probs @ v  # (B, H, T, D)


# ----------------------------------------------------------------------------------------
# Launch configurations. On a GPU: autotune over a few configs that suit Hopper, keyed on
# (power-of-two buckets of) the sequence lengths and on the head dim. Under the interpreter
# a single small config with BLOCK_M != BLOCK_N, so tiny test shapes still cross several
# blocks and both the "diagonal spans two key blocks" and "several query blocks per key
# block" cases are exercised.
# ----------------------------------------------------------------------------------------
def _cfg(block_m, block_n, warps, stages):
    return triton.Config({"BLOCK_M": block_m, "BLOCK_N": block_n}, num_warps=warps, num_stages=stages)


if INTERPRET:
    _FWD_CONFIGS = [_cfg(32, 16, 4, 1)]
    _BWD_DQ_CONFIGS = [_cfg(32, 16, 4, 1)]
    _BWD_DKDV_CONFIGS = [_cfg(16, 32, 4, 1)]
else:
    # Chosen so that none spills registers at head_dim 128 on sm_90a (ptxas -v); a few
    # 4-warp ones that only fit at head_dim 64 let autotuning pick them there.
    _FWD_CONFIGS = [
        _cfg(128, 64, 8, 3), _cfg(128, 64, 8, 4), _cfg(128, 128, 8, 3), _cfg(128, 128, 8, 2),
        _cfg(128, 32, 8, 3), _cfg(64, 64, 8, 3), _cfg(64, 64, 4, 4), _cfg(128, 64, 4, 3),
        _cfg(16, 128, 4, 3),
    ]
    _BWD_DQ_CONFIGS = [
        _cfg(64, 64, 8, 3), _cfg(64, 32, 8, 3), _cfg(64, 64, 4, 3), _cfg(128, 64, 8, 3),
        _cfg(128, 32, 4, 3), _cfg(16, 64, 4, 3),
    ]
    _BWD_DKDV_CONFIGS = [  # BLOCK_N (keys) is the program's block here, BLOCK_M the inner step
        _cfg(32, 64, 8, 3), _cfg(64, 64, 8, 3), _cfg(16, 64, 8, 3), _cfg(64, 64, 8, 2),
        _cfg(32, 128, 8, 3), _cfg(64, 128, 8, 3), _cfg(32, 64, 4, 3),
    ]
_KEY = ["T_BUCKET", "S_BUCKET", "HEAD_DIM", "CAUSAL"]


def _prune_query_blocks(configs, named_args, **kwargs):
    """Drop configs whose query block is far larger than the number of queries (decoding)."""
    t = named_args.get("T_BUCKET", kwargs.get("T_BUCKET", 16))
    kept = [c for c in configs if c.kwargs["BLOCK_M"] <= max(16, t)]
    return kept or configs


def _prune_key_blocks(configs, named_args, **kwargs):
    """Same idea for the dK/dV kernel, whose inner loop steps over queries BLOCK_M at a time."""
    return _prune_query_blocks(configs, named_args, **kwargs)


# ----------------------------------------------------------------------------------------
# Forward
# ----------------------------------------------------------------------------------------
@triton.jit
def _fwd_inner(acc, l_i, m_i, q, K_head, V_head, stride_kt, stride_vt,
               lo, hi, offs_m, offs_d, S, causal_offset, qk_scale,
               HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr, MASKED: tl.constexpr,
               BLOCK_N: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr):
    """Online softmax over key blocks [lo, hi). MASKED blocks may hold invalid columns."""
    offs_n = tl.arange(0, BLOCK_N)
    d_ok = offs_d < HEAD_DIM
    for start_n in range(lo, hi, BLOCK_N):
        cols = start_n + offs_n  # (BLOCK_N,)
        col_ok = cols < S
        # K is loaded already transposed, (HEAD_DIM, BLOCK_N), so the dot is q @ kT
        kT = tl.load(K_head + cols[None, :] * stride_kt + offs_d[:, None],
                     mask=col_ok[None, :] & d_ok[:, None], other=0.0)
        v = tl.load(V_head + cols[:, None] * stride_vt + offs_d[None, :],
                    mask=col_ok[:, None] & d_ok[None, :], other=0.0)  # (BLOCK_N, HEAD_DIM)
        if UPCAST:
            kT = kT.to(tl.float32)
            v = v.to(tl.float32)
        s = tl.dot(q, kT, input_precision=PRECISION) * qk_scale  # (BLOCK_M, BLOCK_N), base-2 units
        if MASKED:
            visible = col_ok[None, :]
            if CAUSAL:
                visible = visible & (cols[None, :] <= offs_m[:, None] + causal_offset)
            s = tl.where(visible, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))  # (BLOCK_M,)
        p = tl.math.exp2(s - m_new[:, None])  # (BLOCK_M, BLOCK_N)
        alpha = tl.math.exp2(m_i - m_new)  # rescales what was accumulated so far
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new
    return acc, l_i, m_i


@triton.autotune(configs=_FWD_CONFIGS, key=_KEY, prune_configs_by={"early_config_prune": _prune_query_blocks})
@triton.jit
def _fwd_kernel(Q, K, V, O, LSE,
                stride_qb, stride_qh, stride_qt, stride_kb, stride_kh, stride_kt,
                stride_vb, stride_vh, stride_vt, stride_ob, stride_oh, stride_ot,
                n_heads, group, T, S, qk_scale, T_BUCKET, S_BUCKET,
                HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr,
                UPCAST: tl.constexpr, PRECISION: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    start_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // n_heads
    h = bh % n_heads
    h_kv = h // group  # grouped-query attention: several query heads share one K/V head

    offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)  # query rows of this program
    offs_d = tl.arange(0, BLOCK_D)
    row_ok = offs_m < T
    d_ok = offs_d < HEAD_DIM
    q = tl.load(Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qt + offs_d[None, :],
                mask=row_ok[:, None] & d_ok[None, :], other=0.0)  # (BLOCK_M, BLOCK_D)
    if UPCAST:
        q = q.to(tl.float32)
    K_head = K + b * stride_kb + h_kv * stride_kh
    V_head = V + b * stride_vb + h_kv * stride_vh

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)  # running max (base 2)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)  # running sum of exp2(s - m_i)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)  # running unnormalised output

    # Split the keys into blocks that need no mask and blocks that do (tail, diagonal).
    causal_offset = S - T  # query i sits at absolute position i + causal_offset
    if CAUSAL:
        # every row of this block sees keys <= start_m * BLOCK_M + causal_offset
        first_row_pos = start_m * BLOCK_M + causal_offset
        full_end = tl.minimum((first_row_pos + 1) // BLOCK_N, S // BLOCK_N) * BLOCK_N
        hi = tl.minimum(S, (start_m + 1) * BLOCK_M + causal_offset)  # past the last row's key
    else:
        full_end = (S // BLOCK_N) * BLOCK_N
        hi = S
    acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, K_head, V_head, stride_kt, stride_vt,
                               0, full_end, offs_m, offs_d, S, causal_offset, qk_scale,
                               HEAD_DIM, CAUSAL, False, BLOCK_N, UPCAST, PRECISION)
    acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, K_head, V_head, stride_kt, stride_vt,
                               full_end, hi, offs_m, offs_d, S, causal_offset, qk_scale,
                               HEAD_DIM, CAUSAL, True, BLOCK_N, UPCAST, PRECISION)
    # With T <= S every row sees at least key 0, so l_i > 0 here.
    out = acc / l_i[:, None]
    tl.store(O + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_ot + offs_d[None, :],
             out.to(O.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])
    tl.store(LSE + bh * T + offs_m, m_i + tl.math.log2(l_i), mask=row_ok)


# ----------------------------------------------------------------------------------------
# Backward
# ----------------------------------------------------------------------------------------
@triton.jit
def _bwd_delta_kernel(O, DO, DELTA, stride_ob, stride_oh, stride_ot, stride_dob, stride_doh, stride_dot,
                      n_heads, T, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr):
    """delta = rowsum(dO * O), (B, H, T) in fp32: the softmax backward's correction term."""
    start_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // n_heads
    h = bh % n_heads
    offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mask = (offs_m[:, None] < T) & (offs_d[None, :] < HEAD_DIM)
    o = tl.load(O + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_ot + offs_d[None, :],
                mask=mask, other=0.0).to(tl.float32)
    do = tl.load(DO + b * stride_dob + h * stride_doh + offs_m[:, None] * stride_dot + offs_d[None, :],
                 mask=mask, other=0.0).to(tl.float32)
    tl.store(DELTA + bh * T + offs_m, tl.sum(o * do, 1), mask=offs_m < T)


@triton.autotune(configs=_BWD_DQ_CONFIGS, key=_KEY, prune_configs_by={"early_config_prune": _prune_query_blocks})
@triton.jit
def _bwd_dq_kernel(Q, K, V, DO, DQ, LSE, DELTA,
                   stride_qb, stride_qh, stride_qt, stride_kb, stride_kh, stride_kt,
                   stride_vb, stride_vh, stride_vt, stride_dob, stride_doh, stride_dot,
                   stride_dqb, stride_dqh, stride_dqt,
                   n_heads, group, T, S, qk_scale, sm_scale, T_BUCKET, S_BUCKET,
                   HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr,
                   UPCAST: tl.constexpr, PRECISION: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """dQ for BLOCK_M query rows: dQ = scale * sum over key blocks of dS K."""
    start_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // n_heads
    h = bh % n_heads
    h_kv = h // group

    offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    row_ok = offs_m < T
    d_ok = offs_d < HEAD_DIM
    qd_mask = row_ok[:, None] & d_ok[None, :]
    q = tl.load(Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qt + offs_d[None, :],
                mask=qd_mask, other=0.0)  # (BLOCK_M, BLOCK_D)
    do = tl.load(DO + b * stride_dob + h * stride_doh + offs_m[:, None] * stride_dot + offs_d[None, :],
                 mask=qd_mask, other=0.0)  # (BLOCK_M, BLOCK_D)
    if UPCAST:
        q = q.to(tl.float32)
        do = do.to(tl.float32)
    lse = tl.load(LSE + bh * T + offs_m, mask=row_ok, other=0.0)  # (BLOCK_M,), base 2
    delta = tl.load(DELTA + bh * T + offs_m, mask=row_ok, other=0.0)  # (BLOCK_M,)
    K_head = K + b * stride_kb + h_kv * stride_kh
    V_head = V + b * stride_vb + h_kv * stride_vh

    causal_offset = S - T
    if CAUSAL:
        hi = tl.minimum(S, (start_m + 1) * BLOCK_M + causal_offset)
    else:
        hi = S
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for start_n in range(0, hi, BLOCK_N):
        cols = start_n + offs_n
        kv_mask = (cols[None, :] < S) & d_ok[:, None]
        kT = tl.load(K_head + cols[None, :] * stride_kt + offs_d[:, None], mask=kv_mask, other=0.0)
        vT = tl.load(V_head + cols[None, :] * stride_vt + offs_d[:, None], mask=kv_mask, other=0.0)
        if UPCAST:
            kT = kT.to(tl.float32)
            vT = vT.to(tl.float32)
        s = tl.dot(q, kT, input_precision=PRECISION) * qk_scale  # (BLOCK_M, BLOCK_N)
        visible = (cols[None, :] < S) & row_ok[:, None]
        if CAUSAL:
            visible = visible & (cols[None, :] <= offs_m[:, None] + causal_offset)
        p = tl.where(visible, tl.math.exp2(s - lse[:, None]), 0.0)  # recomputed probabilities
        dp = tl.dot(do, vT, input_precision=PRECISION)  # (BLOCK_M, BLOCK_N)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(kT.dtype), tl.trans(kT), input_precision=PRECISION)
    dq = dq * sm_scale
    tl.store(DQ + b * stride_dqb + h * stride_dqh + offs_m[:, None] * stride_dqt + offs_d[None, :],
             dq.to(DQ.dtype.element_ty), mask=qd_mask)


@triton.autotune(configs=_BWD_DKDV_CONFIGS, key=_KEY, prune_configs_by={"early_config_prune": _prune_key_blocks})
@triton.jit
def _bwd_dkdv_kernel(Q, K, V, DO, DK, DV, LSE, DELTA,
                     stride_qb, stride_qh, stride_qt, stride_kb, stride_kh, stride_kt,
                     stride_vb, stride_vh, stride_vt, stride_dob, stride_doh, stride_dot,
                     stride_dkb, stride_dkh, stride_dkt, stride_dvb, stride_dvh, stride_dvt,
                     n_heads, n_kv_heads, group, T, S, qk_scale, sm_scale, T_BUCKET, S_BUCKET,
                     HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr,
                     UPCAST: tl.constexpr, PRECISION: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """dK and dV for BLOCK_N keys of one K/V head, summed over the query heads sharing it.

    Works with transposed tiles (keys as rows): sT = k q^T, pT = exp2(sT - lse),
    dV += pT dO, dpT = v dO^T, dsT = pT * (dpT - delta), dK += dsT q.
    """
    start_n = tl.program_id(0)
    bh_kv = tl.program_id(1)
    b = bh_kv // n_kv_heads
    h_kv = bh_kv % n_kv_heads

    offs_n = start_n * BLOCK_N + tl.arange(0, BLOCK_N)  # key rows of this program
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    col_ok = offs_n < S
    d_ok = offs_d < HEAD_DIM
    kd_mask = col_ok[:, None] & d_ok[None, :]
    k = tl.load(K + b * stride_kb + h_kv * stride_kh + offs_n[:, None] * stride_kt + offs_d[None, :],
                mask=kd_mask, other=0.0)  # (BLOCK_N, BLOCK_D)
    v = tl.load(V + b * stride_vb + h_kv * stride_vh + offs_n[:, None] * stride_vt + offs_d[None, :],
                mask=kd_mask, other=0.0)  # (BLOCK_N, BLOCK_D)
    if UPCAST:
        k = k.to(tl.float32)
        v = v.to(tl.float32)

    causal_offset = S - T
    # causal: query i sees key j when j <= i + causal_offset, so start at the first query
    # block that contains i = start_n * BLOCK_N - causal_offset
    if CAUSAL:
        lo = tl.maximum(0, start_n * BLOCK_N - causal_offset) // BLOCK_M * BLOCK_M
    else:
        lo = 0
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    for g in range(group):
        h = h_kv * group + g
        bh = b * n_heads + h
        Q_head = Q + b * stride_qb + h * stride_qh
        DO_head = DO + b * stride_dob + h * stride_doh
        for start_m in range(lo, T, BLOCK_M):
            rows = start_m + offs_m
            row_ok = rows < T
            qT = tl.load(Q_head + rows[None, :] * stride_qt + offs_d[:, None],
                         mask=row_ok[None, :] & d_ok[:, None], other=0.0)  # (BLOCK_D, BLOCK_M)
            do = tl.load(DO_head + rows[:, None] * stride_dot + offs_d[None, :],
                         mask=row_ok[:, None] & d_ok[None, :], other=0.0)  # (BLOCK_M, BLOCK_D)
            if UPCAST:
                qT = qT.to(tl.float32)
                do = do.to(tl.float32)
            lse = tl.load(LSE + bh * T + rows, mask=row_ok, other=0.0)
            delta = tl.load(DELTA + bh * T + rows, mask=row_ok, other=0.0)
            sT = tl.dot(k, qT, input_precision=PRECISION) * qk_scale  # (BLOCK_N, BLOCK_M)
            visible = col_ok[:, None] & row_ok[None, :]
            if CAUSAL:
                visible = visible & (offs_n[:, None] <= rows[None, :] + causal_offset)
            pT = tl.where(visible, tl.math.exp2(sT - lse[None, :]), 0.0)
            dv += tl.dot(pT.to(do.dtype), do, input_precision=PRECISION)
            dpT = tl.dot(v, tl.trans(do), input_precision=PRECISION)  # (BLOCK_N, BLOCK_M)
            dsT = pT * (dpT - delta[None, :])
            dk += tl.dot(dsT.to(qT.dtype), tl.trans(qT), input_precision=PRECISION)
    dk = dk * sm_scale
    tl.store(DK + b * stride_dkb + h_kv * stride_dkh + offs_n[:, None] * stride_dkt + offs_d[None, :],
             dk.to(DK.dtype.element_ty), mask=kd_mask)
    tl.store(DV + b * stride_dvb + h_kv * stride_dvh + offs_n[:, None] * stride_dvt + offs_d[None, :],
             dv.to(DV.dtype.element_ty), mask=kd_mask)


# ----------------------------------------------------------------------------------------
# Python side: checks, launches, autograd
# ----------------------------------------------------------------------------------------
_LOG2E = 1.4426950408889634


def _check_inputs(q, k, v, causal):
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"flash_attention wants 4-D q, k, v as (B, heads, seq, head_dim); "
                         f"got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    B, H, T, D = q.shape
    if k.shape != v.shape or k.shape[0] != B or k.shape[3] != D:
        raise ValueError(f"k and v must both be (B={B}, n_kv_heads, S, head_dim={D}); "
                         f"got k {tuple(k.shape)}, v {tuple(v.shape)}")
    if H % k.shape[1] != 0:
        raise ValueError(f"n_heads={H} must be a multiple of n_kv_heads={k.shape[1]}")
    if not (q.dtype == k.dtype == v.dtype) or q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"q, k, v must share one dtype among float16, bfloat16, float32; "
                         f"got {q.dtype}, {k.dtype}, {v.dtype}")
    if D > 256:
        raise ValueError(f"head_dim={D} is larger than the 256 these kernels support")
    if causal and T > k.shape[2]:
        raise ValueError(f"causal attention with more queries (T={T}) than keys (S={k.shape[2]}) "
                         f"would leave rows with nothing to attend to")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v are on different devices: {q.device}, {k.device}, {v.device}")
    if q.device.type != "cuda" and not INTERPRET:
        raise RuntimeError(
            "flash_attention runs Triton kernels and needs CUDA tensors; on CPU use "
            "attention_reference() or torch.nn.functional.scaled_dot_product_attention "
            "(or set TRITON_INTERPRET=1 before triton is imported, to run the kernels slowly)")


def _last_dim_contiguous(x):
    return x if x.stride(-1) == 1 else x.contiguous()


def _common_args(q, k, causal):
    B, H, T, D = q.shape
    S = k.shape[2]
    return dict(
        T_BUCKET=triton.next_power_of_2(T), S_BUCKET=triton.next_power_of_2(S),
        HEAD_DIM=D, BLOCK_D=max(16, triton.next_power_of_2(D)), CAUSAL=causal,
        UPCAST=INTERPRET and q.dtype == torch.bfloat16,
        PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
    )


def _flash_forward(q, k, v, causal, sm_scale):
    B, H, T, D = q.shape
    H_kv, S = k.shape[1], k.shape[2]
    o = torch.empty((B, H, T, D), dtype=q.dtype, device=q.device)  # (B, H, T, D)
    lse = torch.empty((B, H, T), dtype=torch.float32, device=q.device)  # base-2 log-sum-exp
    grid = lambda meta: (triton.cdiv(T, meta["BLOCK_M"]), B * H)
    _fwd_kernel[grid](
        q, k, v, o, lse,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), o.stride(0), o.stride(1), o.stride(2),
        H, H // H_kv, T, S, sm_scale * _LOG2E, **_common_args(q, k, causal))
    return o, lse


def _flash_backward(do, q, k, v, o, lse, causal, sm_scale):
    B, H, T, D = q.shape
    H_kv, S = k.shape[1], k.shape[2]
    common = _common_args(q, k, causal)
    delta = torch.empty((B, H, T), dtype=torch.float32, device=q.device)
    _bwd_delta_kernel[(triton.cdiv(T, 64), B * H)](
        o, do, delta, o.stride(0), o.stride(1), o.stride(2), do.stride(0), do.stride(1), do.stride(2),
        H, T, HEAD_DIM=D, BLOCK_D=common["BLOCK_D"], BLOCK_M=64)

    dq = torch.empty_like(q)
    dk = torch.empty_like(k)
    dv = torch.empty_like(v)
    strides_in = (q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
                  v.stride(0), v.stride(1), v.stride(2), do.stride(0), do.stride(1), do.stride(2))
    _bwd_dq_kernel[lambda meta: (triton.cdiv(T, meta["BLOCK_M"]), B * H)](
        q, k, v, do, dq, lse, delta, *strides_in, dq.stride(0), dq.stride(1), dq.stride(2),
        H, H // H_kv, T, S, sm_scale * _LOG2E, sm_scale, **common)
    _bwd_dkdv_kernel[lambda meta: (triton.cdiv(S, meta["BLOCK_N"]), B * H_kv)](
        q, k, v, do, dk, dv, lse, delta, *strides_in,
        dk.stride(0), dk.stride(1), dk.stride(2), dv.stride(0), dv.stride(1), dv.stride(2),
        H, H_kv, H // H_kv, T, S, sm_scale * _LOG2E, sm_scale, **common)
    return dq, dk, dv


class FlashAttention(torch.autograd.Function):
    """autograd wrapper: forward keeps (q, k, v, out, lse); backward recomputes the rest."""

    @staticmethod
    def forward(ctx, q, k, v, causal, sm_scale):
        q, k, v = _last_dim_contiguous(q), _last_dim_contiguous(k), _last_dim_contiguous(v)
        o, lse = _flash_forward(q, k, v, causal, sm_scale)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.causal, ctx.sm_scale = causal, sm_scale
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse = ctx.saved_tensors
        dq, dk, dv = _flash_backward(_last_dim_contiguous(do), q, k, v, o, lse, ctx.causal, ctx.sm_scale)
        return dq, dk, dv, None, None


def flash_attention(q, k, v, causal=True, sm_scale=None):
    """Attention softmax(q k^T * sm_scale) v without materialising the score matrix.

    q: (B, n_heads, T, head_dim); k, v: (B, n_kv_heads, S, head_dim), n_heads a multiple of
    n_kv_heads. causal=True masks bottom-right aligned (query i is at position S - T + i),
    which needs T <= S. sm_scale defaults to 1/sqrt(head_dim). Returns (B, n_heads, T, head_dim)
    in q's dtype; differentiable with respect to q, k and v.
    """
    _check_inputs(q, k, v, causal)
    sm_scale = 1.0 / math.sqrt(q.shape[-1]) if sm_scale is None else float(sm_scale)
    return FlashAttention.apply(q, k, v, causal, sm_scale)
