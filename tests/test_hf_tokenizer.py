"""Tests for srlm/hf_tokenizer.py: a checkpoint's tokenizer.json, its special ids from
tokenizer_config.json or config.json, BOS only where the tokenizer's own post-processor writes one,
and ids equal to the `tokenizers` library's own encoding.

The chat formats over this tokenizer are tests/test_chat.py. Skipped without `tokenizers`.

    python -m pytest -q tests/test_hf_tokenizer.py
"""
import json
import shutil
import sys

import pytest

from conftest import byte_level_bpe
from srlm.tokenizer import load_tokenizer

tokenizers = pytest.importorskip("tokenizers")
TEXTS = ["The capital of France is Paris.", "  two  spaces ", "é ü 汉字 🙂", "Line one.\nLine two: <ok>"]


def bpe_dir(root, name, bos_post_processor=False):
    """A tiny byte-level BPE tokenizer.json with <|endoftext|> <|im_start|> <|im_end|> as ids 0-2 and a
    tokenizer_config.json naming them (SmolLM2's layout); optionally a post-processor that writes BOS."""
    from tokenizers import processors

    tk = byte_level_bpe(TEXTS * 20, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], vocab_size=300)
    if bos_post_processor:
        tk.post_processor = processors.TemplateProcessing(single="<|im_start|> $A", special_tokens=[("<|im_start|>", 1)])
    d = root / name
    d.mkdir()
    tk.save(str(d / "tokenizer.json"))
    (d / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<|im_start|>", "eos_token": {"content": "<|im_end|>"}, "pad_token": "<|im_end|>",
         "unk_token": "<|endoftext|>"}))
    return d


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    return bpe_dir(tmp_path_factory.mktemp("hf"), "plain")


def test_special_ids_from_the_checkpoint(hf_dir):
    tok = load_tokenizer(hf_dir)
    assert type(tok).__name__ == "HFTokenizer" and tok.vocab_size == 300
    assert (tok.bos_id, tok.eos_id, tok.tokenizer_pad_id) == (1, 2, 2)
    assert tok.pad_id == 0 and not tok.add_bos  # this post-processor writes no BOS, so neither do we
    assert tok.encode("Paris", bos=True) == tok.encode("Paris")
    assert tok.encode("Paris", eos=True) == tok.encode("Paris") + [2]
    assert tok.special_ids() == {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2}


@pytest.mark.parametrize("text", TEXTS)
def test_ids_and_text_are_the_tokenizers_librarys(hf_dir, text):
    tok = load_tokenizer(hf_dir)
    reference = tokenizers.Tokenizer.from_file(str(hf_dir / "tokenizer.json"))
    assert tok.encode(text) == reference.encode(text, add_special_tokens=False).ids
    assert tok.decode(tok.encode(text)) == text
    assert tok.decode([1] + tok.encode(text) + [2, 10**6]) == text  # specials and ids past the vocabulary dropped


def test_bos_only_where_the_post_processor_writes_it(tmp_path):
    tok = load_tokenizer(bpe_dir(tmp_path, "with_bos", bos_post_processor=True))
    assert tok.add_bos and tok.encode("Paris", bos=True) == [1] + tok.encode("Paris")


def test_errors_name_the_file(tmp_path, hf_dir, monkeypatch):
    shutil.copyfile(hf_dir / "tokenizer.json", tmp_path / "tokenizer.json")
    with pytest.raises(ValueError, match=r"tokenizer\.json: no eos token"):
        load_tokenizer(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"eos_token_id": [2, 0]}))  # Llama-3 style list
    assert load_tokenizer(tmp_path).eos_id == 2
    (tmp_path / "config.json").write_text(json.dumps({"eos_token_id": 999}))
    with pytest.raises(ValueError, match=r"config\.json eos_token_id=999 is not an id of this tokenizer"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|nope|>"}))
    with pytest.raises(ValueError, match=r"no token '<\|nope\|>'"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text("[1]")
    with pytest.raises(ValueError, match=r"tokenizer_config\.json: expected a JSON object, got list"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"tokenizer\.json: not a readable tokenizer\.json"):
        load_tokenizer(tmp_path)
    monkeypatch.setitem(sys.modules, "tokenizers", None)
    with pytest.raises(ImportError, match=r"tokenizer\.json needs the optional `tokenizers` package"):
        load_tokenizer(hf_dir)
