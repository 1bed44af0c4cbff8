"""Tests for srlm/model.py: each building block against a plain formula written out here.

    python -m pytest -q tests/test_model.py
"""
import math

import pytest
import torch
import torch.nn.functional as F

from srlm.model import (FeedForward, KVCache, Llama, ModelArgs, RMSNorm, apply_rotary_emb, attention,
                        causal_mask, precompute_freqs_cis, repeat_kv)


def test_rmsnorm_hand_computed():
    """x = [3, 4]: mean(x^2) = 12.5, rms = sqrt(12.5) = 3.5355; with weight [1, 2] and eps 0:
    out = [3 / 3.5355, 2 * 4 / 3.5355] = [0.848528, 2.262742]."""
    norm = RMSNorm(2, eps=0.0)
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([1.0, 2.0]))
    out = norm(torch.tensor([[3.0, 4.0]]))
    torch.testing.assert_close(out, torch.tensor([[0.848528, 2.262742]]), atol=1e-5, rtol=0)


def test_rmsnorm_matches_formula_in_half_precision():
    x = torch.randn(4, 7, 32, dtype=torch.float16)
    norm = RMSNorm(32, eps=1e-5).half()  # weights in the same dtype as the activations, as in a bf16 model
    ref = (x.float() / torch.sqrt((x.float() ** 2).mean(-1, keepdim=True) + 1e-5)).half()
    assert norm(x).dtype == torch.float16
    torch.testing.assert_close(norm(x), ref * norm.weight)


def rotate_pairs_reference(x, pos, theta=10000.0):
    """Rotate each pair (x[2i], x[2i+1]) by angle pos * theta^(-2i/d) with an explicit 2x2 matrix."""
    d = x.shape[-1]
    out = torch.empty_like(x)
    for i in range(d // 2):
        ang = pos * theta ** (-2 * i / d)
        c, s = math.cos(ang), math.sin(ang)
        a, b = x[..., 2 * i], x[..., 2 * i + 1]
        out[..., 2 * i] = a * c - b * s
        out[..., 2 * i + 1] = a * s + b * c
    return out


def test_rotary_matches_rotation_matrices():
    torch.manual_seed(0)
    T, hd = 5, 8
    xq, xk = torch.randn(1, T, 2, hd), torch.randn(1, T, 1, hd)
    freqs = precompute_freqs_cis(hd, 16)[3 : 3 + T].unsqueeze(0)  # positions 3..7
    rq, rk = apply_rotary_emb(xq, xk, freqs)
    for t in range(T):
        torch.testing.assert_close(rq[0, t], rotate_pairs_reference(xq[0, t], 3 + t), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(rk[0, t], rotate_pairs_reference(xk[0, t], 3 + t), atol=1e-5, rtol=1e-5)


def test_rotary_dot_product_depends_only_on_offset():
    torch.manual_seed(0)
    hd = 16
    q, k = torch.randn(1, 1, 1, hd), torch.randn(1, 1, 1, hd)
    freqs = precompute_freqs_cis(hd, 64)

    def score(m, n):
        rq, _ = apply_rotary_emb(q, q, freqs[m : m + 1].unsqueeze(0))
        _, rk = apply_rotary_emb(k, k, freqs[n : n + 1].unsqueeze(0))
        return (rq * rk).sum()

    base = score(7, 3)
    for shift in (1, 10, 40):
        torch.testing.assert_close(score(7 + shift, 3 + shift), base, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(score(7, 3), score(7, 5), atol=1e-3)  # a different offset does change it


def test_repeat_kv_layout():
    x = torch.arange(2 * 3).float().view(1, 2, 3, 1)  # 2 KV heads
    out = repeat_kv(x, 2)
    assert out.shape == (1, 4, 3, 1)
    # query heads 0,1 share KV head 0; heads 2,3 share KV head 1 (Meta's grouping)
    torch.testing.assert_close(out[0, 1], x[0, 0])
    torch.testing.assert_close(out[0, 2], x[0, 1])


def plain_gqa_attention(q, k, v, causal=True):
    """softmax(q k^T / sqrt(d)) v per query head h using KV head h // (H / H_kv); loops, no tricks."""
    B, H, T, d = q.shape
    Hkv, S = k.shape[1], k.shape[2]
    out = torch.zeros_like(q)
    for b in range(B):
        for h in range(H):
            kh = h // (H // Hkv)
            s = q[b, h] @ k[b, kh].T / math.sqrt(d)
            if causal:
                for i in range(T):
                    s[i, S - T + i + 1 :] = float("-inf")
            out[b, h] = torch.softmax(s, -1) @ v[b, kh]
    return out


@pytest.mark.parametrize("impl", ["torch", "sdpa"])
@pytest.mark.parametrize("T,S", [(6, 6), (3, 9), (1, 5)])
def test_gqa_attention_equals_repeated_heads(impl, T, S):
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 4, T, 8), torch.randn(2, 2, S, 8), torch.randn(2, 2, S, 8)
    torch.testing.assert_close(attention(q, k, v, None, impl), plain_gqa_attention(q, k, v), atol=1e-5, rtol=1e-5)


def test_attention_explicit_mask_matches_reference():
    torch.manual_seed(0)
    q, k, v = torch.randn(1, 2, 4, 8), torch.randn(1, 1, 4, 8), torch.randn(1, 1, 4, 8)
    mask = causal_mask(4, 4).clone()
    mask[:, 0] = False  # hide key 0 (e.g. a pad token) from everyone but itself
    mask[0, 0] = True
    ref = []
    for h in range(2):
        s = (q[0, h] @ k[0, 0].T) / math.sqrt(8)
        s = s.masked_fill(~mask, float("-inf"))
        ref.append(torch.softmax(s, -1) @ v[0, 0])
    ref = torch.stack(ref)[None]
    for impl in ("torch", "sdpa"):
        torch.testing.assert_close(attention(q, k, v, mask[None, None], impl), ref, atol=1e-5, rtol=1e-5)


def test_swiglu_matches_formula():
    torch.manual_seed(0)
    ff = FeedForward(8, 12)
    x = torch.randn(3, 8)
    a = x @ ff.w1.weight.T
    ref = ((a * torch.sigmoid(a)) * (x @ ff.w3.weight.T)) @ ff.w2.weight.T
    torch.testing.assert_close(ff(x), ref, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("name,hidden", [("llama2-7b", 11008), ("llama2-13b", 13824), ("llama2-70b", 28672)])
def test_preset_ffn_sizes_match_llama2(name, hidden):
    args = ModelArgs.preset(name)
    assert args.ffn_hidden_dim == hidden
    assert args.head_dim == 128


def test_llama2_7b_parameter_count():
    with torch.device("meta"):
        model = Llama(ModelArgs.preset("llama2-7b"))
    assert model.num_params() == 6_738_415_616  # the published size of Llama-2-7B


def test_model_args_validation():
    with pytest.raises(ValueError, match="n_kv_heads"):
        ModelArgs(dim=64, n_heads=4, n_kv_heads=3)
    with pytest.raises(ValueError, match="attn_impl"):
        ModelArgs(attn_impl="flash")
    with pytest.raises(ValueError, match="unknown model preset"):
        ModelArgs.preset("llama3")


def tiny(**kw):
    torch.manual_seed(0)
    return Llama(ModelArgs.preset("tiny", **kw)).eval()


def test_forward_shapes_and_hidden_states():
    model = tiny()
    tokens = torch.randint(0, 512, (2, 9))
    logits = model(tokens)
    hidden = model(tokens, return_hidden=True)
    assert logits.shape == (2, 9, 512) and hidden.shape == (2, 9, 64)
    torch.testing.assert_close(hidden @ model.output.weight.T, logits, atol=1e-5, rtol=1e-5)


def test_backends_agree():
    tokens = torch.randint(0, 512, (2, 11))
    out_torch = tiny(attn_impl="torch")(tokens)
    out_sdpa = tiny(attn_impl="sdpa")(tokens)
    torch.testing.assert_close(out_torch, out_sdpa, atol=1e-5, rtol=1e-5)


def test_triton_backend_matches_torch_backend_with_gradients():
    """The model's "triton" backend calls kernels/attention.py (under TRITON_INTERPRET=1 on CPU)."""
    tokens = torch.randint(0, 512, (1, 9))
    ref, tri = tiny(attn_impl="torch"), tiny(attn_impl="triton")
    out_ref, out_tri = ref(tokens), tri(tokens)
    torch.testing.assert_close(out_tri, out_ref, atol=1e-4, rtol=1e-4)
    out_ref.square().mean().backward()
    out_tri.square().mean().backward()
    torch.testing.assert_close(tri.layers[0].attention.wq.weight.grad, ref.layers[0].attention.wq.weight.grad,
                               atol=1e-4, rtol=1e-3)


def test_causality_future_tokens_do_not_change_the_past():
    model = tiny()
    a = torch.randint(0, 512, (1, 10))
    b = a.clone()
    b[0, 6:] = (b[0, 6:] + 1) % 512
    torch.testing.assert_close(model(a)[:, :6], model(b)[:, :6])


def test_kv_cache_chunks_equal_full_forward():
    model = tiny()
    tokens = torch.randint(0, 512, (2, 12))
    full = model(tokens)
    model.setup_cache(max_batch_size=2, max_seq_len=32)
    parts = [model(tokens[:, :5], start_pos=0)]
    for t in range(5, 12):  # one token at a time, as in decoding
        parts.append(model(tokens[:, t : t + 1], start_pos=t))
    model.clear_cache()
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=1e-5)


def test_explicit_positions_equal_default_and_shift_invariance():
    model = tiny()
    tokens = torch.randint(0, 512, (1, 8))
    pos = torch.arange(8)[None]
    torch.testing.assert_close(model(tokens, positions=pos), model(tokens))
    # RoPE is relative: shifting every position by the same amount leaves the logits unchanged
    torch.testing.assert_close(model(tokens, positions=pos + 17), model(tokens), atol=1e-4, rtol=1e-4)


def test_dropout_only_in_training():
    model = tiny(dropout=0.5)
    tokens = torch.randint(0, 512, (1, 8))
    torch.testing.assert_close(model(tokens), model(tokens))
    model.train()
    assert not torch.allclose(model(tokens), model(tokens))


def test_gradients_flow_to_every_parameter():
    model = tiny().train()
    loss = F.cross_entropy(model(torch.randint(0, 512, (2, 8))).flatten(0, 1), torch.randint(0, 512, (16,)))
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_sequence_longer_than_max_seq_len_is_an_error():
    model = tiny()
    with pytest.raises(ValueError, match="max_seq_len"):
        model(torch.zeros(1, 300, dtype=torch.long))


def test_triton_backend_refuses_what_its_kernel_cannot_do(monkeypatch):
    """A requested Triton backend never switches silently to another: a mask, dropout, or no way to
    run the kernel (no CUDA, no interpreter) is an error naming the backend."""
    q = torch.randn(1, 2, 3, 8)
    k = v = torch.randn(1, 2, 3, 8)
    with pytest.raises(ValueError, match="attn_impl='triton'.*mask"):
        attention(q, k, v, causal_mask(3, 3)[None, None], "triton")
    with pytest.raises(ValueError, match="attn_impl='triton'.*dropout"):
        attention(q, k, v, None, "triton", dropout_p=0.1)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="attn_impl='triton' needs a CUDA device"):
        attention(q, k, v, None, "triton")


def test_kv_cache_fixed_slot_update_equals_slice_update():
    """update_fixed (slot as a tensor, whole cache returned) writes what update writes, one
    position at a time; the slots not written yet stay zero."""
    plain, fixed = (KVCache(2, 3, 8, 4, torch.float32, "cpu") for _ in range(2))
    for pos in range(5):
        k, v = torch.randn(2, 3, 1, 4), torch.randn(2, 3, 1, 4)
        k1, v1 = plain.update(pos, k, v)                            # (2, 3, pos + 1, 4)
        k2, v2 = fixed.update_fixed(torch.tensor([pos]), k, v)      # (2, 3, 8, 4)
        torch.testing.assert_close(k2[:, :, : pos + 1], k1, rtol=0, atol=0)
        torch.testing.assert_close(v2[:, :, : pos + 1], v1, rtol=0, atol=0)
        assert not k2[:, :, pos + 1:].any() and not v2[:, :, pos + 1:].any()
