"""Tests for srlm/loading.py: dtype names and defaults, the model fingerprint, and loading a model to sample from.

    python -m pytest -q tests/test_loading.py
"""
from types import SimpleNamespace

import pytest
import torch

from conftest import small_tokenizer
from srlm import loading
from srlm.checkpoint import save_model
from srlm.loading import default_dtype, fingerprint, load_for_inference, model_id, parse_dtype
from srlm.model import Llama, ModelArgs


def micro_model(seed=0, vocab_size=640) -> Llama:
    torch.manual_seed(seed)
    return Llama(ModelArgs(dim=32, n_layers=1, n_heads=2, vocab_size=vocab_size, multiple_of=16, max_seq_len=64))


@pytest.fixture
def saved(tmp_path):
    save_model(micro_model(), tmp_path / "m", tokenizer_path=small_tokenizer())
    return tmp_path / "m"


def test_default_dtype_is_bf16_on_cuda_and_fp32_elsewhere():
    assert default_dtype("cuda") == torch.bfloat16 and default_dtype(torch.device("cuda", 1)) == torch.bfloat16
    assert default_dtype("cpu") == torch.float32 and default_dtype("meta") == torch.float32


def test_parse_dtype_names_and_the_device_default():
    assert parse_dtype(None, "cpu") == torch.float32 and parse_dtype(None, "cuda") == torch.bfloat16
    for names, dtype in [(("fp32", "float32"), torch.float32), (("bf16", "bfloat16"), torch.bfloat16),
                         (("fp16", "float16"), torch.float16)]:
        assert all(parse_dtype(n, "cpu") == dtype for n in names)
    with pytest.raises(ValueError, match=r"dtype must be one of \['bf16', 'bfloat16', .*got 'int8'"):
        parse_dtype("int8", "cpu")


def test_fingerprint_follows_the_weights_not_the_object():
    a, b = micro_model(0), micro_model(0)
    assert fingerprint(a) == fingerprint(b) and len(fingerprint(a)) == 16
    assert fingerprint(micro_model(1)) != fingerprint(a)
    with torch.no_grad():
        b.norm.weight[0] += 1e-3
    assert fingerprint(b) != fingerprint(a)                 # one value changed
    assert fingerprint(micro_model(0).to(torch.bfloat16)) != fingerprint(a)  # same values, other dtype


def test_model_id_is_the_weights_and_the_chat_format():
    model = micro_model()
    llama2, chatml = (SimpleNamespace(chat=SimpleNamespace(name=n)) for n in ("llama2", "chatml"))
    assert model_id(model, llama2) == f"{fingerprint(model)}/llama2"
    assert model_id(model, chatml) != model_id(model, llama2)


def test_load_for_inference_gives_the_saved_model_in_eval_mode(saved):
    model, tok = load_for_inference(saved)
    assert not model.training and model.output.weight.dtype == torch.float32   # the CPU default
    assert tok.vocab_size == 640 and tok.chat.name == "llama2"
    reference = micro_model()
    assert fingerprint(model) == fingerprint(reference)
    ids = torch.tensor([[1, 5, 9, 30]])
    with torch.no_grad():
        torch.testing.assert_close(model(ids), reference.eval()(ids), rtol=0, atol=0)
    bf16, _ = load_for_inference(saved, dtype=torch.bfloat16)
    assert bf16.output.weight.dtype == torch.bfloat16


def test_load_for_inference_reads_the_tokenizer_first(tmp_path, saved, monkeypatch):
    """A folder without a tokenizer fails on the tokenizer, before its weights are read; one kept
    elsewhere (Meta's layout) is given with tokenizer_path."""
    bare = tmp_path / "bare"
    save_model(micro_model(), bare)
    monkeypatch.setattr(loading, "load_model", lambda *a, **k: pytest.fail("weights read before the tokenizer"))
    with pytest.raises(FileNotFoundError, match="bare"):
        load_for_inference(bare)
    monkeypatch.undo()
    model, tok = load_for_inference(bare, tokenizer_path=small_tokenizer())
    assert tok.vocab_size == 640 and fingerprint(model) == fingerprint(micro_model())


def test_load_for_inference_refuses_a_vocabulary_smaller_than_the_tokenizer(tmp_path):
    save_model(micro_model(vocab_size=600), tmp_path / "small", tokenizer_path=small_tokenizer())
    with pytest.raises(ValueError, match=r"small: vocab_size 600 is smaller than the tokenizer's 640"):
        load_for_inference(tmp_path / "small")
