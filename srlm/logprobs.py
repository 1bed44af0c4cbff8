"""Token and sequence log-probabilities: the one function every loss in srlm goes through.

Pretraining, SFT and DPO all need the same quantity: for each position t of a sequence, the
log-probability the model gives to the *next* token,

    logp[t] = log softmax(h[t] @ W^T)[tokens[t + 1]]          h = final normed hidden states, W = output head

summed or averaged over the positions a loss mask selects (the response tokens and EOS for SFT
and DPO; every real token for pretraining). Prompt tokens and padding are excluded by the same
mask for every row, so both halves of a DPO pair are treated alike.

The head matmul + log-softmax over a 32k vocabulary is the largest activation of a training step.
`token_logprobs` picks one implementation for it, in ONE place (`resolve_impl`):
  - "triton":  kernels/logprobs.py `linear_logprobs` (fused, never materialises the logits): the
               default on CUDA when kernels/ imports;
  - "torch":   the plain formula below, the reference the others are tested against: the default
               everywhere else;
  - "chunked": kernels/logprobs.py `linear_logprobs_chunked` (PyTorch, one vocabulary chunk at a
               time): on request, to save memory without a GPU.

`LogprobModel` wraps a Llama so the head runs *inside* a module's forward: under FSDP2 the
output weight is only gathered (unsharded) during the root module's forward and backward.

Tests: `python -m pytest -q tests/test_logprobs.py`.
"""
from __future__ import annotations

import importlib
import os
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

IGNORE_INDEX = -100


def _kernels():
    """kernels/logprobs.py, or None when it (or triton) is not installed; any other error while
    importing it is a bug in the kernels and is raised, never hidden behind the plain path."""
    try:  # import_module reads sys.modules first (a package attribute left by an earlier import does not count)
        return importlib.import_module("kernels.logprobs")
    except ImportError:
        return None


def resolve_impl(impl: Optional[str], device: torch.device) -> str:
    """The implementation `token_logprobs` uses: the one asked for, or the best available one."""
    k = _kernels()
    if impl is None or impl == "auto":
        if k is not None and device.type == "cuda" and hasattr(k, "linear_logprobs"):
            return "triton"
        return "torch"
    if impl not in ("torch", "chunked", "triton"):
        raise ValueError(f"logprob impl must be 'auto', 'torch', 'chunked' or 'triton', got {impl!r}")
    if impl != "torch" and (k is None or not hasattr(k, "linear_logprobs" if impl == "triton" else
                                                    "linear_logprobs_chunked")):
        raise ValueError(f"logprob impl {impl!r} needs kernels/logprobs.py, which is not importable here")
    if impl == "triton" and device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError("logprob impl 'triton' needs a CUDA device (or TRITON_INTERPRET=1); use 'chunked' or 'torch'")
    return impl


def token_logprobs_reference(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                             ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Plain PyTorch: log_softmax(hidden @ weight^T)[target] in float32, 0 where target == ignore_index.

    hidden (N, dim), weight (vocab, dim), targets (N,) long -> (N,) float32.
    """
    logits = (hidden @ weight.t()).float()  # (N, vocab)
    logp = F.log_softmax(logits, dim=-1)
    keep = targets != ignore_index
    safe = torch.where(keep, targets, torch.zeros_like(targets))
    picked = logp.gather(-1, safe[:, None]).squeeze(-1)  # (N,)
    return torch.where(keep, picked, torch.zeros_like(picked))


def token_logprobs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                   ignore_index: int = IGNORE_INDEX, impl: Optional[str] = None) -> torch.Tensor:
    """log p(target | hidden) per row, (N,) float32, 0 on ignored rows; see the module docstring."""
    impl = resolve_impl(impl, hidden.device)
    if impl == "torch":
        return token_logprobs_reference(hidden, weight, targets, ignore_index)
    k = _kernels()
    fn = k.linear_logprobs if impl == "triton" else k.linear_logprobs_chunked
    if torch.is_autocast_enabled(hidden.device.type):  # the kernels want one dtype for both operands
        dt = torch.get_autocast_dtype(hidden.device.type)
        hidden, weight = hidden.to(dt), weight.to(dt)
    elif hidden.dtype != weight.dtype:
        hidden = hidden.to(weight.dtype)
    out = fn(hidden, weight, targets, ignore_index=ignore_index).float()
    return torch.where(targets != ignore_index, out, torch.zeros_like(out))


def shifted_targets(tokens: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """Targets for next-token prediction: position t predicts tokens[t + 1] when loss_mask[t + 1].

    tokens, loss_mask (B, T) -> targets (B, T - 1) with IGNORE_INDEX where the mask is 0 (prompt,
    padding). The first token is never a target: nothing comes before it.
    """
    targets = tokens[:, 1:]
    return torch.where(loss_mask[:, 1:].bool(), targets, torch.full_like(targets, IGNORE_INDEX))


def masked_token_logprobs(model: nn.Module, tokens: torch.Tensor, loss_mask: torch.Tensor,
                          impl: Optional[str] = None) -> torch.Tensor:
    """Per-token log-probs of a Llama, (B, T - 1) float32, 0 outside the loss mask.

    Entry [b, t] is log p(tokens[b, t + 1] | tokens[b, :t + 1]). Call it inside a module's forward
    when the model is sharded with FSDP (see LogprobModel).
    """
    B, T = tokens.shape
    hidden = model(tokens[:, :-1], return_hidden=True)  # (B, T - 1, dim); the last token predicts nothing
    targets = shifted_targets(tokens, loss_mask)  # (B, T - 1)
    flat = token_logprobs(hidden.reshape(B * (T - 1), -1), model.output.weight, targets.reshape(-1),
                          impl=impl)  # (B * (T - 1),)
    return flat.view(B, T - 1)


def sequence_logprobs(model: nn.Module, tokens: torch.Tensor, loss_mask: torch.Tensor,
                      average: bool = False, impl: Optional[str] = None) -> torch.Tensor:
    """Sum (or mean) of log p over the masked tokens of each row: (B,) float32.

    tokens (B, T) long, right-padded; loss_mask (B, T), 1 on the tokens that count (response and
    EOS), 0 on the prompt and on padding. The DPO sequence log-prob is the sum (average=False).
    """
    per_token = masked_token_logprobs(model, tokens, loss_mask, impl)  # (B, T - 1)
    total = per_token.sum(-1)
    if not average:
        return total
    return total / loss_mask[:, 1:].sum(-1).clamp(min=1).to(total.dtype)


class LogprobModel(nn.Module):
    """Llama + head log-probs in one forward: (tokens, loss_mask) -> summed log-probs per row (B,).

    Training shards this wrapper with FSDP2 as the root module, so model.output.weight is gathered
    while the head runs. State-dict keys carry a `model.` prefix; `unwrap_state_dict` removes it.
    """

    def __init__(self, model: nn.Module, impl: Optional[str] = None):
        super().__init__()
        self.model = model
        self.impl = impl

    def forward(self, tokens: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
        return sequence_logprobs(self.model, tokens, loss_mask, impl=self.impl)  # (B,), a fresh tensor


def unwrap_state_dict(state: dict) -> dict:
    """LogprobModel keys ('model.layers.0...') -> Llama keys ('layers.0...')."""
    return {k.removeprefix("model."): v for k, v in state.items()}
