"""Tests for srlm/tokenizer.py on the real Llama 2 tokenizer (../shared/data; skipped when absent).

    python -m pytest -q tests/test_tokenizer.py
"""
import pytest

from conftest import shared_file
from srlm.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def tok():
    return Tokenizer(shared_file("llama2_tokenizer.model"))


def test_special_ids(tok):
    assert (tok.bos_id, tok.eos_id, tok.vocab_size) == (1, 2, 32000)
    assert tok.pad_id not in (tok.bos_id, tok.eos_id)


def test_prompt_ids_match_the_llama2_vocabulary(tok):
    # "[INST]" is "▁[" "INST" "]" = 518 25580 29962 and "[/INST]" is "▁[" "/" "INST" "]" in Llama 2's vocabulary
    ids = tok.encode_prompt("Hello")
    assert ids == [1, 518, 25580, 29962, 15043, 518, 29914, 25580, 29962]
    assert [tok.sp.id_to_piece(i) for i in ids[1:]] == ["▁[", "INST", "]", "▁Hello", "▁[", "/", "INST", "]"]


def test_dialog_mask_covers_exactly_answer_and_eos(tok):
    ids, mask = tok.encode_dialog("What is 2+2?", "2+2 is 4.")
    prompt = tok.encode_prompt("What is 2+2?")
    answer = tok.encode("2+2 is 4.")
    assert ids == prompt + answer + [2]
    assert mask == [0] * len(prompt) + [1] * (len(answer) + 1)
    assert ids[-1] == tok.eos_id and mask[-1] == 1
    assert tok.decode([i for i, m in zip(ids, mask) if m]) == "2+2 is 4."


def test_prompt_ids_are_what_generation_sees(tok):
    """Training ids start with exactly the prompt ids the sampler is fed, whatever the answer's first characters."""
    for answer in ["yes", "!!!", "'quoted'", "[/INST] tricky", "\nnewline first"]:
        ids, mask = tok.encode_dialog("Say something.", answer)
        prompt = tok.encode_prompt("Say something.")
        assert ids[: len(prompt)] == prompt and sum(mask) == len(ids) - len(prompt)


def test_system_block(tok):
    ids = tok.encode_prompt("Hi", system="Be brief.")
    assert tok.decode(ids) == "[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST]"
    assert ids[0] == tok.bos_id


def test_round_trip(tok):
    text = "Self-rewarding models judge their own answers: Score: 4/5."
    assert tok.decode(tok.encode(text)) == text
    assert tok.decode(tok.encode(text, bos=True, eos=True)) == text


def test_small_unigram_model_loads():
    t = Tokenizer(shared_file("sentencepiece_unigram_1000.model"))
    assert (t.bos_id, t.eos_id, t.vocab_size) == (1, 2, 1000)


def test_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer.model"):
        Tokenizer.from_dir(tmp_path)
    bad = tmp_path / "tokenizer.model"
    bad.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="tokenizer.model: not a SentencePiece model"):
        Tokenizer(bad)
