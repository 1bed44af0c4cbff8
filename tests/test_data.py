"""Training data (srlm/data.py): row checks, truncation that keeps EOS, windows, collation, order.

Run: python -m pytest -q tests/test_data.py
"""
import json

import pytest
import torch

from conftest import small_tokenizer
from srlm.data import (TruncationStats, batch_indices, collate, collate_pairs, epoch_order, example_length, fit_to_length,
                       load_rows, text_windows, tokenize)
from srlm.io import DataError

EOS = 2


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


# ---- truncation ----
def test_prompt_cut_from_the_left_keeping_bos():
    """prompt [1 10 11 12 13] + answer [20 21 2] = 8 tokens > 6: keep 6 - 3 = 3 prompt tokens,
    BOS and the last two: [1 12 13]; the answer is untouched."""
    stats = TruncationStats()
    prompt, (answer,) = fit_to_length([1, 10, 11, 12, 13], [[20, 21, EOS]], 6, EOS, stats)
    assert prompt == [1, 12, 13] and answer == [20, 21, EOS]
    assert (stats.prompts_cut, stats.answers_cut) == (1, 0)


def test_long_answer_cut_at_the_end_keeps_eos():
    """prompt 4 tokens, answer 11 tokens, max_len 8: the prompt may shrink only to max_len // 2 = 4
    (it already is), so the answer gets 8 - 4 = 4 slots: its first 3 tokens, then EOS."""
    stats = TruncationStats()
    answer = list(range(20, 30)) + [EOS]
    prompt, (cut,) = fit_to_length([1, 10, 11, 12], [answer], 8, EOS, stats)
    assert prompt == [1, 10, 11, 12] and cut == [20, 21, 22, EOS]
    assert (stats.prompts_cut, stats.answers_cut) == (0, 1)


def test_pair_shares_one_prompt_cut_for_the_longer_answer():
    """chosen 2 tokens, rejected 4 tokens, max_len 7: the prompt keeps 7 - 4 = 3 tokens for both."""
    stats = TruncationStats()
    prompt, (c, r) = fit_to_length([1, 10, 11, 12, 13, 14], [[30, EOS], [40, 41, 42, EOS]], 7, EOS, stats)
    assert prompt == [1, 13, 14] and c == [30, EOS] and r == [40, 41, 42, EOS]
    assert stats.prompts_cut == 1


def test_fits_unchanged():
    stats = TruncationStats()
    assert fit_to_length([1, 5], [[6, EOS]], 4, EOS, stats) == ([1, 5], [[6, EOS]])
    assert (stats.prompts_cut, stats.answers_cut) == (0, 0)


def test_text_windows_overlap_by_one():
    """ids 0..9, max_len 4: windows start at 0, 3, 6 -> [0 1 2 3] [3 4 5 6] [6 7 8 9]; the targets
    (all but each window's first token) are 1..9, each exactly once."""
    windows = text_windows(list(range(10)), 4)
    assert windows == [[0, 1, 2, 3], [3, 4, 5, 6], [6, 7, 8, 9]]
    targets = [t for w in windows for t in w[1:]]
    assert targets == list(range(1, 10))
    assert text_windows([1, 2, 3], 4) == [[1, 2, 3]]


# ---- rows ----
def test_load_rows_errors_name_the_file(tmp_path):
    good = write(tmp_path / "ok.jsonl", [{"prompt": "a", "response": "b"}])
    missing = write(tmp_path / "bad.jsonl", [{"prompt": "a", "response": "b"}, {"prompt": "only"}])
    with pytest.raises(DataError, match=r"bad\.jsonl:2: missing required field\(s\) \['response'\]"):
        load_rows([good, missing], "sft")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(DataError, match="empty.jsonl: no rows"):
        load_rows([str(empty)], "sft")
    wrong = write(tmp_path / "wrong.jsonl", [{"prompt": "a", "response": 3}])
    with pytest.raises(DataError, match=r"wrong\.jsonl:1: key 'response' must be a string, got int"):
        load_rows([wrong], "sft")
    tie = write(tmp_path / "tie.jsonl", [{"prompt": "a", "chosen": "same ", "rejected": "same"}])
    with pytest.raises(DataError, match=r"tie\.jsonl:1: keys 'chosen' and 'rejected' hold the same text"):
        load_rows([tie], "dpo")
    assert len(load_rows([good, good], "sft")) == 2  # files are concatenated


# ---- tokenisation with a real SentencePiece model ----
@pytest.fixture(scope="module")
def tok():
    from srlm.tokenizer import Tokenizer

    return Tokenizer(small_tokenizer())


def test_tokenize_sft_masks_the_answer_and_eos(tok):
    rows = [{"prompt": "What is two plus two?", "response": "Four."}]
    (ex,), stats = tokenize(rows, "sft", tok, max_len=256)
    ids, mask = tok.encode_dialog("What is two plus two?", "Four.")
    assert ex["tokens"] == ids and ex["loss_mask"] == mask
    assert ex["tokens"][-1] == tok.eos_id and ex["loss_mask"][-1] == 1
    assert stats.prompts_cut == 0


def test_tokenize_truncates_and_never_loses_eos(tok):
    long_prompt = " ".join(["word"] * 200)
    rows = [{"prompt": long_prompt, "response": "A short answer."},
            {"prompt": "Hi", "response": " ".join(["again"] * 300)}]
    examples, stats = tokenize(rows, "sft", tok, max_len=32)
    for ex in examples:
        assert len(ex["tokens"]) <= 32
        assert ex["tokens"][0] == tok.bos_id and ex["tokens"][-1] == tok.eos_id and ex["loss_mask"][-1] == 1
    # The long answer leaves the second prompt at most max_len // 2 = 16 tokens.
    second_prompt_cut = len(tok.encode_prompt("Hi")) > 16
    assert (stats.prompts_cut, stats.answers_cut) == (1 + second_prompt_cut, 1)
    pairs, _ = tokenize([{"prompt": long_prompt, "chosen": "Yes.", "rejected": "No, not at all."}], "dpo", tok, 32)
    p = pairs[0]
    n_prompt = p["chosen_mask"].index(1)
    assert p["chosen_tokens"][:n_prompt] == p["rejected_tokens"][:n_prompt]  # one prompt for both halves
    assert p["rejected_mask"].index(1) == n_prompt and p["index"] == 0


def test_tokenize_pretrain_windows(tok):
    rows = [{"text": " ".join(["hello world"] * 100)}]
    examples, stats = tokenize(rows, "pretrain", tok, max_len=16)
    ids = tok.encode(rows[0]["text"], bos=True, eos=True)
    assert stats.windows == len(examples) - 1 > 0
    assert [t for ex in examples for t in ex["tokens"][1:]] == ids[1:]
    assert all(all(ex["loss_mask"]) for ex in examples)


# ---- batches ----
def test_collate_pads_right_and_masks_padding():
    tokens, mask = collate([[1, 5, 2], [1, 2]], [[0, 1, 1], [0, 1]], pad_id=0)
    assert tokens.tolist() == [[1, 5, 2], [1, 2, 0]]
    assert mask.tolist() == [[0, 1, 1], [0, 1, 0]]


def test_collate_pairs_chosen_rows_first():
    exs = [{"chosen_tokens": [1, 3, 2], "chosen_mask": [0, 1, 1], "rejected_tokens": [1, 4, 4, 2],
            "rejected_mask": [0, 1, 1, 1]},
           {"chosen_tokens": [1, 5, 2], "chosen_mask": [0, 1, 1], "rejected_tokens": [1, 6, 2],
            "rejected_mask": [0, 1, 1]}]
    tokens, mask = collate_pairs(exs, pad_id=0)
    assert tokens.tolist() == [[1, 3, 2, 0], [1, 5, 2, 0], [1, 4, 4, 2], [1, 6, 2, 0]]
    assert mask.sum(1).tolist() == [2, 2, 3, 2]


def test_batch_order_is_deterministic_and_covers_each_epoch():
    n, B, seed = 10, 4, 3
    stream = [i for step in range(5) for i in batch_indices(step, B, n, seed)]  # 20 positions = 2 epochs
    assert sorted(stream[:10]) == list(range(10)) and sorted(stream[10:]) == list(range(10))
    assert stream[:10] == epoch_order(n, seed, 0) and stream[10:] == epoch_order(n, seed, 1)
    assert stream[:10] != stream[10:]  # a new permutation each epoch
    assert batch_indices(2, B, n, seed) == stream[8:12]  # a step straddling the epoch boundary
    assert batch_indices(0, B, n, seed + 1) != batch_indices(0, B, n, seed)
    assert torch.equal(torch.tensor(batch_indices(1, B, n, seed)), torch.tensor(stream[4:8]))


def test_group_by_length_sorts_each_window_of_the_epoch_permutation():
    n, B, seed = 10, 2, 3
    lengths = [5, 50, 7, 70, 1, 10, 3, 30, 9, 90]
    perm = epoch_order(n, seed, 0)
    assert perm == [3, 6, 8, 9, 4, 5, 1, 7, 0, 2]
    # windows of G * B = 4 positions, each sorted longest first; the last window holds the 2 left over
    expected = [9, 3, 8, 6, 1, 7, 5, 4, 2, 0]  # lengths 90 70 9 3 | 50 30 10 1 | 7 5
    assert epoch_order(n, seed, 0, lengths, window=4) == expected
    stream = [i for step in range(10) for i in batch_indices(step, B, n, seed, lengths, group_by_length=2)]
    assert stream[:10] == expected and stream[10:] == epoch_order(n, seed, 1, lengths, window=4)
    assert sorted(stream[:10]) == list(range(10))  # still every row once an epoch
    # group_by_length 0: the plain order, whatever the lengths
    assert batch_indices(1, B, n, seed, lengths, group_by_length=0) == batch_indices(1, B, n, seed)
    # the point of it: tokens after padding each batch to its longest row, 2 * (70 + 90 + 10 + 50 + 7)
    # for the plain order against 2 * (90 + 9 + 50 + 10 + 7) grouped
    def padded(order):
        return sum(B * max(lengths[i] for i in order[k:k + B]) for k in range(0, n, B))
    assert (padded(perm), padded(expected)) == (454, 332)
    # a DPO pair counts its longer answer (both are padded to it), a sequence its own tokens
    assert example_length({"chosen_tokens": [1, 2, 3], "rejected_tokens": [1, 2, 3, 4, 5]}) == 5
    assert example_length({"tokens": [1, 2]}) == 2
