"""Batched text generation with a KV cache: prefill the prompts once, then one token per step.

    from srlm.sampling import generate
    ids = generate(model, [tok.encode_prompt("Name a prime.")] * 4, max_new_tokens=128,
                   temperature=0.7, top_p=0.9, eos_id=tok.eos_id, seed=0)
    texts = [tok.decode(row) for row in ids]

How a ragged batch works (prompts of different lengths in one batch)
--------------------------------------------------------------------
Prompts are LEFT-padded to the longest one, P tokens, so that every row's next token lands in the
same cache slot and one (B, 1) forward pass serves the whole batch at each decode step. Row i has
pad_i = P - len_i padding slots in front. Three small tensors, built once per batch, carry all the
bookkeeping (S = P + number of new tokens = cache length):

    key_valid[i, s]  True when cache slot s of row i holds a real token (s >= pad_i).   (B, S)
    positions[i, s]  the rotary position of slot s in row i: s - pad_i (clamped at 0),    (B, S)
                     so each row's first real token sits at position 0, exactly as if alone.
    prefill mask     causal AND key_valid, plus the diagonal.                             (B, 1, P, P)

A padding query sees no real key; an all-False row would make softmax produce NaN there, and even
with zero weight a NaN value leaks into real rows (0 * NaN = NaN). Letting every slot see itself
(the diagonal) keeps padding finite; no real query ever attends to a padding slot. At decode step
slot s the mask is simply key_valid[:, :s + 1]: everything written so far that is real. Nothing is
recomputed per step; the step only slices these tensors. A batch without padding (all prompts of
one length, e.g. K copies of one prompt) passes no mask and no positions at all: the model's
defaults (causal, start_pos + arange) are exact.

With these, each row produces what it would produce alone (same tokens under greedy decoding; the
floating-point sums may differ in the last bits because the batch shapes differ).

Randomness: one torch.Generator seeded with `seed` drives all sampling, so the same call repeats
exactly. Outputs for a given prompt DO depend on what else is in the batch (rows share the
generator's stream, and `batch_size` changes the chunks); this is by design, not a bug.

Stopping: a row stops at `eos_id` or when its decoded text contains one of `stop_strings`; the batch
ends when every row has stopped or after `max_new_tokens`. On a GPU the `done` flags stay on the
device and are read back only every `sync_every` steps, so the decode loop does not wait on the
host at each token; rows that finished in between keep generating a few throw-away tokens.
`compile=True` runs the decode step through torch.compile in a fixed-shape form (`decode_fixed`:
the cache slot is a tensor and attention covers the whole preallocated cache under a mask), so one
compiled graph serves every step; on CPU inductor's C++ wrapper also takes Python off the step.
CUDA graphs (mode="reduce-overhead") need exactly such a step but are not switched on: untested here.

Self-check on a tiny random model: `python -m srlm.sampling`.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F

# ----------------------------------------------------------------------------- sampling one token


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k largest logits of each row, set the rest to -inf (k <= 0: keep all).

    Tokens tied with the k-th largest value are all kept, so a row may keep more than k.
    """
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]  # (B, 1): the k-th largest logit
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filter: keep the smallest set of most likely tokens whose probability mass reaches p.

    Sorted by probability, token j is dropped when the tokens ahead of it already hold mass >= p;
    the most likely token is always kept. p >= 1 keeps everything.
    """
    if p >= 1.0:
        return logits
    sorted_logits, sorted_idx = torch.sort(logits, dim=-1, descending=True)  # (B, V)
    probs = F.softmax(sorted_logits.float(), dim=-1)
    mass_ahead = probs.cumsum(dim=-1) - probs  # probability of the tokens strictly ahead of each
    drop_sorted = mass_ahead >= p
    drop_sorted[..., 0] = False
    drop = torch.empty_like(drop_sorted).scatter_(-1, sorted_idx, drop_sorted)  # back to vocab order
    return logits.masked_fill(drop, float("-inf"))


def sample_logits(logits: torch.Tensor, temperature: float = 0.0, top_p: float = 1.0, top_k: int = 0,
                  generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Pick one token per row from logits (B, V) -> (B,) long.

    temperature 0 is greedy (argmax). Otherwise logits / temperature, then top-k, then top-p, then a
    draw from the softmax. The draw uses the "exponential race": with E_i ~ Exp(1) independent,
    argmax_i p_i / E_i equals i with probability p_i. Unlike torch.multinomial it is a plain tensor
    op with no host sync, and it takes the seeded generator.
    """
    if temperature == 0.0:
        # max(...).indices is argmax (the first maximal index on ties, as argmax), but on CPU
        # torch's multi-row argmax kernel is slower than max's (BENCHMARKS.md).
        return logits.max(dim=-1).indices
    logits = logits.float() / temperature
    logits = top_k_filter(logits, top_k)
    logits = top_p_filter(logits, top_p)
    probs = F.softmax(logits, dim=-1)  # (B, V)
    race = torch.empty_like(probs).exponential_(1.0, generator=generator)
    return (probs / race).argmax(dim=-1)


# ----------------------------------------------------------------------------- model steps


def prefill(model, tokens: torch.Tensor, positions: Optional[torch.Tensor],
            mask: Optional[torch.Tensor]) -> torch.Tensor:
    """Run the padded prompts (B, P) through the model, filling cache slots [0, P).

    Returns the logits of the last slot only (B, vocab): prompts are left-padded, so the last slot
    is every row's last prompt token. Projecting just that slot onto the vocabulary avoids a
    (B, P, vocab) tensor.
    """
    hidden = model(tokens, start_pos=0, positions=positions, mask=mask, return_hidden=True)  # (B, P, dim)
    return last_logits(model, hidden)


def last_logits(model, hidden: torch.Tensor) -> torch.Tensor:
    """Next-token logits (B, vocab) from the last position of hidden (B, T, dim), in the model's dtype.

    Not converted to float32 here: greedy decoding takes the max as is (bf16 -> fp32 is exact, so it
    is the same token) and skips a (B, vocab) copy per step; sampling and log-probs convert themselves.
    """
    return model.output(hidden[:, -1])


def decode_one(model, token: torch.Tensor, slot: int, positions: Optional[torch.Tensor],
               mask: Optional[torch.Tensor]) -> torch.Tensor:
    """Feed one token per row (B, 1) at cache slot `slot`; returns the next-token logits (B, vocab)."""
    return last_logits(model, model(token, start_pos=slot, positions=positions, mask=mask, return_hidden=True))


def decode_fixed(model, token: torch.Tensor, slot: torch.Tensor, positions: torch.Tensor,
                 key_valid: torch.Tensor) -> torch.Tensor:
    """decode_one with shapes that are the same at every step: the form torch.compile wants.

    In decode_one the slot is a Python int and the keys seen grow by one each step, so a compiled
    version would either recompile every step or run slower dynamic-shape code. Here the slot is a
    tensor (1,), the new key/value is written there (KVCache.update), and attention runs over the
    whole cache of S slots under a mask of the slots that are real (key_valid) and written so far
    (index <= slot). One compiled graph then serves every step.
    token (B, 1); positions, key_valid (B, S): the tables of batch_layout over the whole cache.
    """
    written = torch.arange(key_valid.shape[1], device=key_valid.device) <= slot  # (S,)
    mask = (key_valid & written)[:, None, None, :]  # (B, 1, 1, S)
    hidden = model(token, start_pos=slot, positions=positions.index_select(1, slot), mask=mask, return_hidden=True)
    return last_logits(model, hidden)


_COMPILED_STEPS: dict = {}


def compiled_decode_step(device_type: str):
    """decode_fixed through torch.compile, built once per device type and reused: compiling takes
    seconds (tiny) to a minute, and the compiled graph holds no weights (they are its inputs), so any
    model of the same shapes reuses it. On CPU, inductor's C++ wrapper (cpp_wrapper) also launches the
    kernels from C++ rather than Python, which at small sizes is most of what a step costs.
    Each new batch size or cache length compiles a new graph; past torch._dynamo's recompile limit
    (8 by default) the step runs eagerly, with a warning."""
    if device_type not in _COMPILED_STEPS:
        options = {"cpp_wrapper": True} if device_type == "cpu" else None
        _COMPILED_STEPS[device_type] = torch.compile(decode_fixed, dynamic=False, options=options)
    return _COMPILED_STEPS[device_type]


def batch_layout(lengths: torch.Tensor, total: int):
    """The bookkeeping tensors of a left-padded batch (see the module docstring).

    lengths: (B,) prompt lengths; total: cache slots used (P + new tokens).
    Returns pad (B,), key_valid (B, total) bool, positions (B, total) long, prefill_mask (B, 1, P, P).
    """
    P = int(lengths.max())
    pad = P - lengths  # (B,)
    slot = torch.arange(total, device=lengths.device)  # (total,)
    key_valid = slot[None, :] >= pad[:, None]  # (B, total)
    positions = (slot[None, :] - pad[:, None]).clamp(min=0)  # (B, total)
    causal = torch.ones(P, P, dtype=torch.bool, device=lengths.device).tril()  # (P, P)
    diagonal = torch.eye(P, dtype=torch.bool, device=lengths.device)
    prefill_mask = (causal[None] & key_valid[:, None, :P]) | diagonal  # (B, P, P)
    return pad, key_valid, positions, prefill_mask[:, None]  # mask (B, 1, P, P)


# ----------------------------------------------------------------------------- stop strings


def _find_stop(tokenizer, ids: list[int], stop_strings: Sequence[str]) -> Optional[int]:
    """Smallest n such that decode(ids[:n]) contains a stop string, or None.

    Decoding a longer prefix only appends text, so "contains a stop string" is monotone in n and a
    binary search needs about log2(len(ids)) decodes.
    """
    def hit(n):
        text = tokenizer.decode(ids[:n])
        return any(s in text for s in stop_strings)

    if not ids or not hit(len(ids)):
        return None
    lo, hi = 1, len(ids)
    while lo < hi:
        mid = (lo + hi) // 2
        if hit(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo


# ----------------------------------------------------------------------------- one batch


@torch.inference_mode()  # like no_grad, and also skips autograd's version counters (less per-op cost)
def generate_batch(model, prompt_tokens: list[list[int]], max_new_tokens: int, *, temperature: float,
                   top_p: float, top_k: int, eos_id: Optional[int], generator: torch.Generator,
                   stop_strings: Optional[Sequence[str]], tokenizer, return_logprobs: bool,
                   sync_every: int, compiled_step=None, cache_len: Optional[int] = None, plain: bool = False):
    """Generate for one batch whose KV cache is already set up. Returns (ids per row, logprobs per row or None).

    The rows stop together after min(max_new_tokens, max_seq_len - P) tokens at most.
    compiled_step: a compiled decode_fixed (then cache_len, the slots of the cache, is required).
    plain: always the plain prefill and decode step (mask and positions for every batch), the
    reference the fast paths are tested against.
    """
    device = model.output.weight.device
    B = len(prompt_tokens)
    lengths = torch.tensor([len(p) for p in prompt_tokens], device=device)
    P = int(lengths.max())
    n_new = min(max_new_tokens, model.args.max_seq_len - P)
    # decode_fixed attends over the whole cache, so its tables cover every slot of it
    pad, key_valid, positions, prefill_mask = batch_layout(lengths, cache_len if compiled_step else P + n_new)
    slots = torch.arange(key_valid.shape[1], device=device)  # slot indices as tensors, for decode_fixed

    tokens = torch.zeros(B, P, dtype=torch.long)  # pad id 0; validity comes from key_valid
    for i, ids in enumerate(prompt_tokens):
        tokens[i, P - len(ids):] = torch.tensor(ids, dtype=torch.long)
    tokens = tokens.to(device)  # one host-to-device copy
    padded = plain or bool((lengths != P).any())

    # The decode step: the previous token (B, 1) into cache slot `slot` -> next-token logits (B, vocab).
    # The plain step gives each row its rotary position and the mask of its real cached keys, and
    # is right for any batch. Two fast paths give the same tokens (tests/test_sampling.py):
    #   - no padding (e.g. K copies of one prompt): the model's own causal mask and positions
    #     (start_pos + arange) are exact, so neither is passed (a GPU then takes its flash kernel
    #     for the prefill, and the rotary angles are one shared slice instead of a gather);
    #   - compile=True: decode_fixed, whose shapes never change, through torch.compile.
    def plain_step(token, slot):
        mask = key_valid[:, None, None, : slot + 1]  # (B, 1, 1, slot + 1)
        return decode_one(model, token, slot, positions[:, slot : slot + 1], mask)

    def unpadded_step(token, slot):
        return decode_one(model, token, slot, None, None)

    def compiled(token, slot):
        return compiled_step(model, token, slots[slot : slot + 1], positions, key_valid)

    step = compiled if compiled_step is not None else plain_step if padded else unpadded_step

    out = torch.zeros(B, n_new, dtype=torch.long, device=device)  # preallocated: one column per step
    logprobs = torch.zeros(B, n_new, dtype=torch.float32, device=device) if return_logprobs else None
    done = torch.zeros(B, dtype=torch.bool, device=device)
    stop_window = 4 * max((len(s) for s in stop_strings), default=0) + sync_every + 2 if stop_strings else 0

    if padded:
        logits = prefill(model, tokens, positions[:, :P], prefill_mask)  # (B, vocab)
    else:
        logits = prefill(model, tokens, None, None)
    n_done_steps = 0
    can_stop = eos_id is not None or bool(stop_strings)  # if not, every row runs to n_new: nothing to check
    for t in range(n_new):
        if t > 0:
            logits = step(out[:, t - 1 : t], P + t - 1)  # the previous token goes into slot P + t - 1
        token = sample_logits(logits, temperature, top_p, top_k, generator)  # (B,)
        out[:, t] = token
        if logprobs is not None:  # the model's own log-likelihood of the token (before temperature/filters)
            logprobs[:, t] = torch.log_softmax(logits.float(), dim=-1).gather(-1, token[:, None])[:, 0]
        if eos_id is not None:
            done |= token == eos_id
        n_done_steps = t + 1
        if can_stop and ((t + 1) % sync_every == 0 or t + 1 == n_new):
            if stop_strings:  # host check on the tail of each running row
                tail = out[:, max(0, t + 1 - stop_window) : t + 1].tolist()
                for i in (~done).nonzero()[:, 0].tolist():
                    text = tokenizer.decode(tail[i])
                    if any(s in text for s in stop_strings):
                        done[i] = True
            if bool(done.all()):  # the one host sync of the loop
                break

    # Back on the host: cut each row at its first EOS (excluded) or after its stop string.
    rows = out[:, :n_done_steps].tolist()
    lp_rows = logprobs[:, :n_done_steps].tolist() if logprobs is not None else None
    ids_out, lps_out = [], []
    for i, row in enumerate(rows):
        end = row.index(eos_id) if eos_id is not None and eos_id in row else len(row)
        if stop_strings:
            stop_end = _find_stop(tokenizer, row[:end], stop_strings)
            end = stop_end if stop_end is not None else end
        ids_out.append(row[:end])
        if lp_rows is not None:
            lps_out.append(lp_rows[i][:end])
    return ids_out, (lps_out if return_logprobs else None)


# ----------------------------------------------------------------------------- entry point


def check_sampling(temperature: float, top_p: float, top_k: int = 0) -> None:
    """ValueError naming the sampling setting out of range (the CLIs check their flags with this
    before a model is loaded)."""
    if not temperature >= 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0 (0 = off), got {top_k}")


def _check_inputs(model, prompt_tokens, max_new_tokens, temperature, top_p, top_k, stop_strings, tokenizer):
    if not isinstance(prompt_tokens, (list, tuple)):
        raise TypeError("prompt_tokens must be a list of token-id lists")
    vocab, max_len = model.args.vocab_size, model.args.max_seq_len
    for i, ids in enumerate(prompt_tokens):
        if len(ids) == 0:
            raise ValueError(f"prompt {i} is empty; start it with the BOS id at least")
        if len(ids) >= max_len:
            raise ValueError(f"prompt {i} has {len(ids)} tokens; the model's context is {max_len}, "
                             f"leaving no room for a new token")
        bad = [t for t in ids if not 0 <= t < vocab]
        if bad:
            raise ValueError(f"prompt {i} has token ids outside [0, {vocab}): {bad[:5]}")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    check_sampling(temperature, top_p, top_k)
    if stop_strings and tokenizer is None:
        raise ValueError("stop_strings need a tokenizer to decode the generated text")


def generate(model, prompt_tokens: list[list[int]], max_new_tokens: int, temperature: float = 0.0,
             top_p: float = 1.0, top_k: int = 0, eos_id: Optional[int] = None, seed: int = 0,
             stop_strings: Optional[Sequence[str]] = None, tokenizer=None, return_logprobs: bool = False,
             batch_size: Optional[int] = None, sync_every: Optional[int] = None, compile: bool = False,
             plain: bool = False):
    """Sample a continuation of every prompt. Returns the new ids per row, in input order.

    prompt_tokens: list of token-id lists (include BOS yourself, e.g. tokenizer.encode_prompt).
        For K samples of one prompt, repeat it K times.
    max_new_tokens: at most this many new tokens per row (fewer if the context runs out).
    temperature / top_p / top_k: temperature 0 is greedy; top_k 0 and top_p 1 switch those filters off.
    eos_id: a row stops at this id, which is not returned (None, the default: never stop at a token;
        pass tokenizer.eos_id, the checkpoint's end-of-turn id).
    seed: seeds the torch.Generator; the same call repeats exactly (see the module docstring).
    stop_strings, tokenizer: a row also stops once its decoded text contains one of the strings;
        its ids end with the token that completed it (trim the text with `text.split(s)[0]`).
    return_logprobs: also return, per row, log p(token) under the model (log-softmax of the raw
        logits, before temperature and filters), aligned with the ids.
    batch_size: rows per forward pass; larger inputs are cut into chunks of prompts of similar length,
        and rows the context would cut short go in chunks of their own.
    sync_every: read the done flags back every this many steps (default 1 on CPU, 16 on GPU).
    compile: run the decode step through torch.compile (decode_fixed: fixed shapes). The first call
        for each batch size and (rounded) cache length compiles, which takes seconds to a minute.
    plain: no fast path (every batch decoded with masks and positions, no compile): the reference.
    """
    _check_inputs(model, prompt_tokens, max_new_tokens, temperature, top_p, top_k, stop_strings, tokenizer)
    n = len(prompt_tokens)
    if n == 0 or max_new_tokens == 0:
        empty = [[] for _ in range(n)]
        return (empty, [[] for _ in range(n)]) if return_logprobs else empty
    device = model.output.weight.device
    if sync_every is None:
        sync_every = 16 if device.type == "cuda" else 1
    batch_size = batch_size or n
    compiled_step = compiled_decode_step(device.type) if compile and not plain else None

    # Chunks of prompts of similar length waste less compute on padding. The sort is stable, so
    # K copies of one prompt stay next to each other. A batch stops after min(max_new_tokens,
    # max_seq_len - its longest prompt) tokens, so a row with room for all max_new_tokens never
    # shares a batch with one without: one long prompt would cut every row beside it short.
    max_len = model.args.max_seq_len
    order = sorted(range(n), key=lambda i: len(prompt_tokens[i]))
    n_room = sum(len(p) + max_new_tokens <= max_len for p in prompt_tokens)  # sorted: they come first
    chunks = [part[k : k + batch_size] for part in (order[:n_room], order[n_room:])
              for k in range(0, len(part), batch_size)]
    cache_len = max(min(max(len(prompt_tokens[i]) for i in c) + max_new_tokens, max_len) for c in chunks)
    if compiled_step is not None:  # every cache length is a new compiled graph: round up to a multiple of 64
        cache_len = min(-(-cache_len // 64) * 64, max_len)

    generator = torch.Generator(device=device).manual_seed(seed)
    ids_out: list = [None] * n
    lps_out: list = [None] * n
    was_training = model.training
    model.eval()
    model.setup_cache(min(batch_size, n), cache_len)
    try:
        for chunk in chunks:
            ids, lps = generate_batch(
                model, [prompt_tokens[i] for i in chunk], max_new_tokens, temperature=temperature, top_p=top_p,
                top_k=top_k, eos_id=eos_id, generator=generator, stop_strings=stop_strings, tokenizer=tokenizer,
                return_logprobs=return_logprobs, sync_every=sync_every, compiled_step=compiled_step,
                cache_len=cache_len, plain=plain)
            for j, i in enumerate(chunk):
                ids_out[i] = ids[j]
                if return_logprobs:
                    lps_out[i] = lps[j]
    finally:
        model.clear_cache()
        model.train(was_training)
    return (ids_out, lps_out) if return_logprobs else ids_out


if __name__ == "__main__":
    from srlm.model import Llama, ModelArgs

    torch.manual_seed(0)
    model = Llama(ModelArgs.preset("tiny"))
    prompts = [[1, 5, 9, 13], [1, 7], [1, 2, 3, 4, 5, 6, 7]]
    together = generate(model, prompts, 8, eos_id=None)
    alone = [generate(model, [p], 8, eos_id=None)[0] for p in prompts]
    print("batched:", together)
    print("alone:  ", alone)
    print("each row equals its prompt alone:", together == alone)
