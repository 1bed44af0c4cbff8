"""Llama 2, written out to be read: RMSNorm, rotary embeddings, grouped-query attention, SwiGLU.

The layout and the names follow Meta's reference `llama/model.py` (wq wk wv wo, w1 w2 w3,
freqs_cis, start_pos), so a Meta checkpoint loads key for key; srlm/checkpoint.py maps the
Hugging Face names and rotary layout onto these.

    from srlm.model import Llama, ModelArgs
    model = Llama(ModelArgs.preset("tiny"))
    logits = model(tokens)                          # (B, T, vocab)
    hidden = model(tokens, return_hidden=True)      # (B, T, dim), for fused log-prob losses
    # checkpoints on disk: srlm/checkpoint.py (load_model, save_model)

Run the self-check (tiny model, one forward pass): `python -m srlm.model`.
"""
from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class ModelArgs:
    dim: int = 4096  # width of the residual stream
    n_layers: int = 32  # number of transformer blocks
    n_heads: int = 32  # query heads per attention layer
    n_kv_heads: Optional[int] = None  # key/value heads (grouped-query attention); None = n_heads
    vocab_size: int = 32000  # tokenizer vocabulary size
    multiple_of: int = 256  # the FFN hidden size is rounded up to a multiple of this
    ffn_dim_multiplier: Optional[float] = None  # scales the FFN hidden size (Llama-2 70B uses 1.3)
    hidden_dim: Optional[int] = None  # explicit FFN hidden size (HF `intermediate_size`); overrides the rule
    norm_eps: float = 1e-5  # epsilon inside RMSNorm
    rope_theta: float = 10000.0  # base of the rotary frequencies
    max_seq_len: int = 4096  # longest sequence the rotary table (and a KV cache) covers
    dropout: float = 0.0  # dropout on attention probabilities and residual branches (SFT uses 0.1)
    attn_impl: str = "sdpa"  # attention backend: "torch" (plain maths), "sdpa", or "triton" (kernels/)
    head_dim: Optional[int] = None  # width of one attention head; None = dim // n_heads (HF `head_dim`)
    tie_embeddings: bool = False  # the output head IS the embedding matrix, one parameter (HF `tie_word_embeddings`)

    def __post_init__(self):
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.head_dim is None:
            if self.dim % self.n_heads:
                raise ValueError(f"dim={self.dim} is not divisible by n_heads={self.n_heads}")
            self.head_dim = self.dim // self.n_heads
        if self.head_dim % 2:
            raise ValueError(f"head_dim={self.head_dim} is odd; rotary embeddings rotate pairs")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}")
        if self.attn_impl not in ("torch", "sdpa", "triton"):
            raise ValueError(f"attn_impl must be 'torch', 'sdpa' or 'triton', got {self.attn_impl!r}")

    @property
    def ffn_hidden_dim(self) -> int:
        """SwiGLU hidden size: 2/3 of 4*dim (same parameter count as a 4*dim GELU MLP), scaled, rounded up."""
        if self.hidden_dim is not None:
            return self.hidden_dim
        hidden = int(2 * (4 * self.dim) / 3)
        if self.ffn_dim_multiplier is not None:
            hidden = int(self.ffn_dim_multiplier * hidden)
        return self.multiple_of * ((hidden + self.multiple_of - 1) // self.multiple_of)

    @classmethod
    def preset(cls, name: str, **overrides) -> "ModelArgs":
        """Named configurations: the three Llama-2 sizes and a tiny one for CPU tests."""
        if name not in PRESETS:
            raise ValueError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    def to_dict(self) -> dict:
        return asdict(self)


PRESETS = {
    "llama2-7b": dict(dim=4096, n_layers=32, n_heads=32, n_kv_heads=32, vocab_size=32000),  # FFN 11008
    "llama2-13b": dict(dim=5120, n_layers=40, n_heads=40, n_kv_heads=40, vocab_size=32000),  # FFN 13824
    "llama2-70b": dict(dim=8192, n_layers=80, n_heads=64, n_kv_heads=8, vocab_size=32000,
                       ffn_dim_multiplier=1.3, multiple_of=4096),  # FFN 28672, 8 KV heads
    "tiny": dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=512, multiple_of=32,
                 max_seq_len=256),
}


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * weight, computed in float32 and cast back."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.type_as(x) * self.weight


def precompute_freqs_cis(head_dim: int, end: int, theta: float = 10000.0) -> torch.Tensor:
    """Rotary table: freqs_cis[p, i] = exp(1j * p * theta^(-2i/head_dim)), shape (end, head_dim // 2).

    Always built on the CPU in float32/complex64, whatever device context is active.
    """
    freqs = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device="cpu")[: head_dim // 2].float() / head_dim))
    positions = torch.arange(end, device="cpu", dtype=torch.float32)
    angles = torch.outer(positions, freqs)  # (end, head_dim // 2)
    return torch.polar(torch.ones_like(angles), angles)  # complex64


def apply_rotary_emb(xq: torch.Tensor, xk: torch.Tensor, freqs_cis: torch.Tensor):
    """Rotate each consecutive pair (x[2i], x[2i+1]) of q and k by the angle of its position.

    xq: (B, T, n_heads, head_dim), xk: (B, T, n_kv_heads, head_dim),
    freqs_cis: (B or 1, T, head_dim // 2), complex. Pairs are viewed as complex numbers and
    multiplied by freqs_cis, so q·k afterwards depends only on the difference of positions.
    """
    xq_c = torch.view_as_complex(xq.float().reshape(*xq.shape[:-1], -1, 2))  # (B, T, H, hd/2)
    xk_c = torch.view_as_complex(xk.float().reshape(*xk.shape[:-1], -1, 2))
    f = freqs_cis.unsqueeze(2)  # (B, T, 1, hd/2): the same rotation for every head
    xq_out = torch.view_as_real(xq_c * f).flatten(3)  # (B, T, H, hd)
    xk_out = torch.view_as_real(xk_c * f).flatten(3)
    return xq_out.type_as(xq), xk_out.type_as(xk)


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """(B, n_kv_heads, S, hd) -> (B, n_kv_heads * n_rep, S, hd): each KV head serves n_rep query heads."""
    if n_rep == 1:
        return x
    B, n_kv, S, hd = x.shape
    return x[:, :, None, :, :].expand(B, n_kv, n_rep, S, hd).reshape(B, n_kv * n_rep, S, hd)


def causal_mask(T: int, S: int, device=None) -> torch.Tensor:
    """Bool (T, S), True where query i may see key j. Queries are the last T of S positions
    (bottom-right aligned, as when decoding with a KV cache): query i sits at S - T + i."""
    q_pos = torch.arange(S - T, S, device=device)[:, None]
    k_pos = torch.arange(S, device=device)[None, :]
    return k_pos <= q_pos


def attention(q, k, v, mask: Optional[torch.Tensor], impl: str, dropout_p: float = 0.0) -> torch.Tensor:
    """Scaled dot-product attention with grouped-query heads.

    q: (B, n_heads, T, hd); k, v: (B, n_kv_heads, S, hd); mask: bool (B or 1, 1, T, S), True = attend,
    or None for causal (bottom-right aligned). Returns (B, n_heads, T, hd).
    """
    B, H, T, hd = q.shape
    S = k.shape[2]
    n_rep = H // k.shape[1]
    if impl == "triton":  # kernels/attention.py: causal only, no explicit mask, no dropout
        if not (q.is_cuda or _triton_interpreter()):
            raise RuntimeError("attn_impl='triton' needs a CUDA device (or TRITON_INTERPRET=1, as the tests set); "
                               "use attn_impl='sdpa' here")
        if mask is not None or dropout_p > 0.0:
            raise ValueError("attn_impl='triton' computes plain causal attention: it takes no explicit mask "
                             "(a padded batch) and no attention dropout; use attn_impl='sdpa' for these")
        from kernels.attention import flash_attention  # causal, bottom-right aligned when T < S

        return flash_attention(q, k, v, causal=True)
    if impl == "torch":
        # The reference: softmax(q k^T / sqrt(hd) + mask) v, with K/V repeated for every query head.
        k, v = repeat_kv(k, n_rep), repeat_kv(v, n_rep)  # (B, H, S, hd)
        scores = (q.float() @ k.float().transpose(-2, -1)) / math.sqrt(hd)  # (B, H, T, S)
        if mask is None:
            mask = causal_mask(T, S, q.device)
        scores = scores.masked_fill(~mask, float("-inf"))
        probs = F.dropout(F.softmax(scores, dim=-1), p=dropout_p)
        return (probs @ v.float()).type_as(q)
    # "sdpa": PyTorch's fused attention.
    if T == 1 and dropout_p == 0.0:
        return decode_attention(q, k, v, mask)
    # enable_gqa: each K/V head serves its group of query heads inside the kernel, with no (B, H, S, hd)
    # copy of the keys and values (that copy of the whole KV cache dominated a decode step).
    gqa = n_rep > 1
    if mask is None and T == S:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout_p, enable_gqa=gqa)
    if mask is None:
        mask = causal_mask(T, S, q.device)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, enable_gqa=gqa)


def decode_attention(q, k, v, mask: Optional[torch.Tensor]) -> torch.Tensor:
    """Attention of ONE new query per row (a decode step) over the keys/values cached so far.

    q: (B, n_heads, 1, hd); k, v: (B, n_kv_heads, S, hd); mask: bool (B or 1, 1, 1, S) or None.
    With a single query there is nothing in the future to hide: the causal mask is all True and is
    left out (a padded batch still passes which cached slots are real). Grouped-query attention
    becomes plain attention by viewing the n_rep query heads that share a K/V head as n_rep queries
    of that head, (B, n_kv_heads, n_rep, hd): no copy of K/V and no GQA bookkeeping in the kernel
    (faster than enable_gqa on CPU: BENCHMARKS.md, "Small choices in the decode path").
    """
    B, H, _, hd = q.shape
    n_kv = k.shape[1]
    out = F.scaled_dot_product_attention(q.reshape(B, n_kv, H // n_kv, hd), k, v, attn_mask=mask)
    return out.reshape(B, H, 1, hd)


def _triton_interpreter() -> bool:
    """Triton kernels run on CPU tensors only under its interpreter (tests set TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


class KVCache:
    """Preallocated keys and values for one layer: (max_batch, n_kv_heads, max_seq_len, head_dim).

    `update(start_pos, k, v)` writes the new T positions at [start_pos, start_pos + T) and
    returns every key/value written so far, [0, start_pos + T), for the attention of this step.

    `update_fixed(slot, k, v)` is the fast path for a fixed-shape decode step (torch.compile; see
    srlm/sampling.py): the slot is a one-element tensor, the single new position is written there
    and the WHOLE cache is returned, so the shapes never change from step to step; the caller's
    mask then hides the slots not written yet. Tested equal to `update` (tests/test_model.py).
    """

    def __init__(self, max_batch_size, n_kv_heads, max_seq_len, head_dim, dtype, device):
        shape = (max_batch_size, n_kv_heads, max_seq_len, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)

    def update(self, start_pos: int, k: torch.Tensor, v: torch.Tensor):
        B, _, T, _ = k.shape
        if start_pos + T > self.k.shape[2]:
            raise ValueError(f"KV cache holds {self.k.shape[2]} positions; asked to write up to {start_pos + T}")
        self.k[:B, :, start_pos : start_pos + T] = k
        self.v[:B, :, start_pos : start_pos + T] = v
        return self.k[:B, :, : start_pos + T], self.v[:B, :, : start_pos + T]

    def update_fixed(self, slot: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        B = k.shape[0]  # k, v: (B, n_kv_heads, 1, head_dim); slot: (1,)
        self.k[:B].index_copy_(2, slot, k)
        self.v[:B].index_copy_(2, slot, v)
        return self.k[:B], self.v[:B]  # (B, n_kv_heads, max_seq_len, head_dim)


class Attention(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = args.n_heads, args.n_kv_heads, args.head_dim
        self.wq = nn.Linear(args.dim, args.n_heads * self.head_dim, bias=False)
        self.wk = nn.Linear(args.dim, args.n_kv_heads * self.head_dim, bias=False)
        self.wv = nn.Linear(args.dim, args.n_kv_heads * self.head_dim, bias=False)
        self.wo = nn.Linear(args.n_heads * self.head_dim, args.dim, bias=False)
        self.attn_impl = args.attn_impl
        self.dropout = args.dropout
        self.cache: Optional[KVCache] = None  # set by Llama.setup_cache for generation

    def forward(self, x, freqs_cis, start_pos: int, mask: Optional[torch.Tensor]):
        B, T, _ = x.shape
        xq = self.wq(x).view(B, T, self.n_heads, self.head_dim)
        xk = self.wk(x).view(B, T, self.n_kv_heads, self.head_dim)
        xv = self.wv(x).view(B, T, self.n_kv_heads, self.head_dim)
        xq, xk = apply_rotary_emb(xq, xk, freqs_cis)
        q, k, v = (t.transpose(1, 2) for t in (xq, xk, xv))  # (B, heads, T, head_dim)
        if isinstance(start_pos, torch.Tensor):  # a fixed-shape decode step (srlm/sampling.py: decode_fixed)
            k, v = self.cache.update_fixed(start_pos, k, v)  # (B, n_kv_heads, max_seq_len, head_dim)
        elif self.cache is not None:
            k, v = self.cache.update(start_pos, k, v)  # (B, n_kv_heads, start_pos + T, head_dim)
        dropout_p = self.dropout if self.training else 0.0
        out = attention(q, k, v, mask, self.attn_impl, dropout_p)  # (B, n_heads, T, head_dim)
        out = out.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim)  # (B, T, dim)
        return self.wo(out)


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x)."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden_dim, bias=False)  # gate
        self.w2 = nn.Linear(hidden_dim, dim, bias=False)  # down
        self.w3 = nn.Linear(dim, hidden_dim, bias=False)  # up

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class TransformerBlock(nn.Module):
    """Pre-norm residual block: h = x + attn(norm(x)); out = h + ffn(norm(h))."""

    def __init__(self, layer_id: int, args: ModelArgs):
        super().__init__()
        self.layer_id = layer_id
        self.attention = Attention(args)
        self.feed_forward = FeedForward(args.dim, args.ffn_hidden_dim)
        self.attention_norm = RMSNorm(args.dim, eps=args.norm_eps)
        self.ffn_norm = RMSNorm(args.dim, eps=args.norm_eps)
        self.dropout = args.dropout  # on each residual branch, in training only

    def forward(self, x, freqs_cis, start_pos: int, mask: Optional[torch.Tensor]):
        h = x + self.resid_dropout(self.attention(self.attention_norm(x), freqs_cis, start_pos, mask))
        return h + self.resid_dropout(self.feed_forward(self.ffn_norm(h)))

    def resid_dropout(self, y: torch.Tensor) -> torch.Tensor:
        # What nn.Dropout does, but outside training (or at p = 0) not even a call into torch,
        # which shows in a small model's decode step (BENCHMARKS.md).
        return F.dropout(y, self.dropout) if self.training and self.dropout > 0 else y


class Llama(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.tok_embeddings = nn.Embedding(args.vocab_size, args.dim)
        self.layers = nn.ModuleList(TransformerBlock(i, args) for i in range(args.n_layers))
        self.norm = RMSNorm(args.dim, eps=args.norm_eps)
        self.output = nn.Linear(args.dim, args.vocab_size, bias=False)
        if args.tie_embeddings:
            self.tie_weights()
        # A plain attribute, not a buffer: it stays complex64 when the weights move to bf16 and it
        # is never part of a checkpoint. Moved to the activations' device on first use.
        self.freqs_cis = precompute_freqs_cis(args.head_dim, args.max_seq_len, args.rope_theta)
        self.tokenizer_path: Optional[str] = None  # set by checkpoint.load_model, copied by save_model
        if not any(p.is_meta for p in self.parameters()):
            self.apply(self._init_weights)

    def tie_weights(self) -> None:
        """With tie_embeddings, make output.weight the very Parameter of tok_embeddings.weight.

        One tensor then serves both ends (logits = h @ E^T): parameters() yields it once, so it is
        counted, optimised and sharded once. Call again after replacing tok_embeddings.weight
        (load_state_dict(assign=True) does), or the two would drift apart.
        """
        self.output.weight = self.tok_embeddings.weight

    def _apply(self, fn, *args, **kwargs):
        # to_empty() and moves off the meta device give each module a new Parameter object, which
        # would silently untie the head; tie it again afterwards (.to() and .half() keep it tied anyway).
        out = super()._apply(fn, *args, **kwargs)
        if self.args.tie_embeddings and self.output.weight is not self.tok_embeddings.weight:
            self.tie_weights()
        return out

    @staticmethod
    def _init_weights(module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, tokens: torch.Tensor, start_pos: int = 0, positions: Optional[torch.Tensor] = None,
                mask: Optional[torch.Tensor] = None, return_hidden: bool = False) -> torch.Tensor:
        """tokens (B, T) -> logits (B, T, vocab), or final normed hidden states (B, T, dim).

        start_pos: where these tokens start in the KV cache (0 without a cache); a one-element
            tensor for a fixed-shape decode step (see KVCache; positions and mask are then required).
        positions: (B, T) rotary position of each token; default start_pos + arange(T) for every row
            (a ragged batch passes its own, e.g. left-padded rows start later).
        mask: bool (B or 1, 1, T, S), True = may attend, S = start_pos + T keys; default causal.
        """
        B, T = tokens.shape
        if self.freqs_cis.device != tokens.device:
            with torch.inference_mode(False):  # kept for training even if first moved while sampling
                self.freqs_cis = self.freqs_cis.to(tokens.device)
        if positions is None:
            if start_pos + T > self.args.max_seq_len:
                raise ValueError(f"sequence of {start_pos + T} tokens exceeds max_seq_len={self.args.max_seq_len}")
            freqs_cis = self.freqs_cis[start_pos : start_pos + T].unsqueeze(0)  # (1, T, hd/2)
        else:
            freqs_cis = self.freqs_cis[positions]  # (B, T, hd/2)
        h = self.tok_embeddings(tokens)  # (B, T, dim)
        for layer in self.layers:
            h = layer(h, freqs_cis, start_pos, mask)
        h = self.norm(h)
        if return_hidden:
            return h
        return self.output(h).float()

    # ---- KV cache for generation (srlm/sampling.py) ----
    def setup_cache(self, max_batch_size: int, max_seq_len: int, dtype=None, device=None) -> None:
        """Allocate a KV cache in every attention layer; forward then appends to it at start_pos."""
        if max_seq_len > self.args.max_seq_len:
            raise ValueError(f"cache length {max_seq_len} exceeds max_seq_len={self.args.max_seq_len}")
        ref = self.output.weight
        for layer in self.layers:
            layer.attention.cache = KVCache(max_batch_size, self.args.n_kv_heads, max_seq_len,
                                            self.args.head_dim, dtype or ref.dtype, device or ref.device)

    def clear_cache(self) -> None:
        for layer in self.layers:
            layer.attention.cache = None

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())  # parameters() yields a tied matrix once


if __name__ == "__main__":
    torch.manual_seed(0)
    model = Llama(ModelArgs.preset("tiny"))
    tokens = torch.randint(0, model.args.vocab_size, (2, 16))
    print(f"tiny Llama: {model.num_params():,} parameters; logits {tuple(model(tokens).shape)}")
