"""Training data for the three stages: read rows, tokenise, truncate, order, and pad into batches.

Row formats (JSON lines; several files are concatenated, e.g. IFT and EFT mixed for SFT):
    pretrain  {"text": str}
    sft       {"prompt": str, "response": str, "system"?: str}
    dpo       {"prompt": str, "chosen": str, "rejected": str, ...}   (judge.py's pairs.jsonl rows)

Every example is (tokens, loss_mask): the mask is 1 on the tokens a loss counts, i.e. the answer
and its EOS for sft/dpo (the prompt is context only) and every token for pretraining.

Too long (more than max_len tokens):
  - sft/dpo: the prompt is cut from the left (BOS kept), down to half of max_len at most; if the
    answer still does not fit, its end is cut and EOS put back as the last token. A DPO pair keeps
    one prompt for both answers, cut for the longer one, so chosen and rejected see the same context.
  - pretrain: the text is split into windows of max_len that overlap by one token, so every token
    except the very first is a target exactly once.
Each cut is counted (TruncationStats) and reported by the trainer; EOS is never lost.

Order: a fresh permutation of the rows per epoch, from the seed; step s takes positions
[s * B, (s + 1) * B) of the endless sequence epoch 0, epoch 1, ..., so every batch is full and a
run resumed at step s sees exactly the data an uninterrupted run would. With group_by_length = G,
each epoch's permutation is cut into windows of G * B rows and every window is sorted by length,
longest first: a batch then holds rows of similar length and pads little (SFT mixes 30-token
instructions with 190-token judgements), while the order of the windows stays random.

Tests: `python -m pytest -q tests/test_data.py`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from srlm.io import DataError, read_jsonl

REQUIRED = {"pretrain": ("text",), "sft": ("prompt", "response"), "dpo": ("prompt", "chosen", "rejected")}


@dataclass
class TruncationStats:
    prompts_cut: int = 0  # examples whose prompt lost tokens on the left
    answers_cut: int = 0  # answers that lost tokens at the end (EOS kept)
    windows: int = 0  # extra windows made from long pretraining texts

    def __str__(self):
        return f"{self.prompts_cut} prompts cut, {self.answers_cut} answers cut, {self.windows} extra text windows"


def _same_answers(row: dict) -> str | None:
    if row["chosen"].strip() == row["rejected"].strip():
        return "keys 'chosen' and 'rejected' hold the same text (a tie is not a pair)"
    return None


def load_rows(paths: Sequence[str], stage: str) -> list[dict]:
    """Read and check the rows of every data file for `stage`; DataError names the file and row."""
    if stage not in REQUIRED:
        raise ValueError(f"stage must be one of {sorted(REQUIRED)}, got {stage!r}")
    rows = []
    for path in paths:
        file_rows = read_jsonl(path, required=REQUIRED[stage],
                               types={key: "str" for key in REQUIRED[stage] + ("system",)},
                               check=_same_answers if stage == "dpo" else None)
        rows.extend(file_rows)
    if not rows:
        raise DataError(f"{', '.join(map(str, paths))}: no rows to train on")
    return rows


def fit_to_length(prompt: list[int], answers: list[list[int]], max_len: int, eos_id: int,
                  stats: TruncationStats) -> tuple[list[int], list[list[int]]]:
    """Make prompt + each answer fit in max_len tokens (see the module docstring)."""
    longest = max(len(a) for a in answers)
    if len(prompt) + longest <= max_len:
        return prompt, answers
    keep = max(max_len - longest, min(len(prompt), max_len // 2), 1)
    if keep < len(prompt):
        prompt = prompt[:1] + prompt[len(prompt) - (keep - 1):] if keep > 1 else prompt[:1]  # BOS + tail
        stats.prompts_cut += 1
    room = max_len - len(prompt)
    fitted = []
    for a in answers:
        if len(a) > room:
            a = a[: room - 1] + [eos_id]
            stats.answers_cut += 1
        fitted.append(a)
    return prompt, fitted


def text_windows(ids: list[int], max_len: int) -> list[list[int]]:
    """Split ids into windows of max_len overlapping by one token (window i starts at i*(max_len-1))."""
    if len(ids) <= max_len:
        return [ids]
    step = max_len - 1
    return [ids[s: s + max_len] for s in range(0, len(ids) - 1, step)]


def tokenize(rows: list[dict], stage: str, tokenizer, max_len: int) -> tuple[list[dict], TruncationStats]:
    """Rows -> examples. pretrain/sft: {"tokens", "loss_mask"}; dpo: {"index", "chosen_tokens",
    "chosen_mask", "rejected_tokens", "rejected_mask"} (index = the row's position, for the ref log-probs)."""
    if max_len < 4:
        raise ValueError(f"max_len must be at least 4, got {max_len}")
    stats = TruncationStats()
    examples = []
    for i, row in enumerate(rows):
        if stage == "pretrain":
            windows = text_windows(tokenizer.encode(row["text"], bos=True, eos=True), max_len)
            stats.windows += len(windows) - 1
            examples.extend({"tokens": w, "loss_mask": [1] * len(w)} for w in windows)
            continue
        prompt = tokenizer.encode_prompt(row["prompt"], row.get("system"))
        if stage == "sft":
            prompt, (answer,) = fit_to_length(prompt, [tokenizer.encode_answer(row["response"])], max_len,
                                              tokenizer.eos_id, stats)
            examples.append({"tokens": prompt + answer, "loss_mask": [0] * len(prompt) + [1] * len(answer)})
        else:
            answers = [tokenizer.encode_answer(row["chosen"]), tokenizer.encode_answer(row["rejected"])]
            prompt, (chosen, rejected) = fit_to_length(prompt, answers, max_len, tokenizer.eos_id, stats)
            examples.append({
                "index": i,
                "chosen_tokens": prompt + chosen, "chosen_mask": [0] * len(prompt) + [1] * len(chosen),
                "rejected_tokens": prompt + rejected, "rejected_mask": [0] * len(prompt) + [1] * len(rejected),
            })
    return examples, stats


def collate(sequences: list[list[int]], masks: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad to the longest row: tokens (B, T) long filled with pad_id, loss_mask (B, T) long, 0 on padding."""
    T = max(len(s) for s in sequences)
    tokens = torch.full((len(sequences), T), pad_id, dtype=torch.long)
    loss_mask = torch.zeros((len(sequences), T), dtype=torch.long)
    for b, (s, m) in enumerate(zip(sequences, masks)):
        if len(s) != len(m):
            raise ValueError(f"row {b}: {len(s)} tokens but {len(m)} mask entries")
        tokens[b, : len(s)] = torch.tensor(s, dtype=torch.long)
        loss_mask[b, : len(m)] = torch.tensor(m, dtype=torch.long)
    return tokens, loss_mask


def collate_pairs(examples: list[dict], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """DPO batch for one forward pass: rows [0, B) are the chosen answers, rows [B, 2B) the rejected."""
    seqs = [e["chosen_tokens"] for e in examples] + [e["rejected_tokens"] for e in examples]
    masks = [e["chosen_mask"] for e in examples] + [e["rejected_mask"] for e in examples]
    return collate(seqs, masks, pad_id)  # (2B, T)


def example_length(e: dict) -> int:
    """Tokens a batch must hold for one example: its sequence, or a DPO pair's longer answer."""
    return len(e["tokens"]) if "tokens" in e else max(len(e["chosen_tokens"]), len(e["rejected_tokens"]))


def epoch_order(n: int, seed: int, epoch: int, lengths: Sequence[int] | None = None, window: int = 0) -> list[int]:
    """The order of n rows used in `epoch` (same on every rank and every run): a permutation, and
    with a window and the rows' lengths, each run of `window` positions sorted longest first."""
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(n, generator=g).tolist()
    if window > 1 and lengths is not None:
        order = [i for w in range(0, n, window) for i in sorted(order[w:w + window], key=lambda i: -lengths[i])]
    return order


def batch_indices(step: int, batch_size: int, n: int, seed: int, lengths: Sequence[int] | None = None,
                  group_by_length: int = 0) -> list[int]:
    """Row indices of the global batch of optimizer step `step` (see the module docstring)."""
    out, orders = [], {}
    for pos in range(step * batch_size, (step + 1) * batch_size):
        epoch = pos // n
        if epoch not in orders:
            orders[epoch] = epoch_order(n, seed, epoch, lengths, group_by_length * batch_size)
        out.append(orders[epoch][pos % n])
    return out
