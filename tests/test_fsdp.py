"""Tests for srlm/fsdp.py in one process: the model train() builds (from a checkpoint, a preset or a
JSON file of ModelArgs), activation checkpointing, and the full state dict.

The sharded path (build_sharded_model under torchrun, FSDP2) runs in tests/test_train.py's torchrun
tests, compared there with one process.

    python -m pytest -q tests/test_fsdp.py
"""
import json

import pytest
import torch

from conftest import small_tokenizer
from srlm.checkpoint import load_model, save_model
from srlm.fsdp import build_model, enable_activation_checkpointing, fresh_model_args, full_model_state
from srlm.io import DataError
from srlm.logprobs import LogprobModel
from srlm.model import Llama, ModelArgs
from srlm.tokenizer import Tokenizer
from srlm.train_config import TrainConfig

MICRO = dict(dim=32, n_layers=2, n_heads=2, vocab_size=640, multiple_of=16, max_seq_len=32)


@pytest.fixture
def tok():
    return Tokenizer(small_tokenizer())


def test_fresh_model_args_from_a_preset_follow_the_tokenizer(tok):
    args = fresh_model_args("tiny", tok, {"dropout": 0.1})
    assert (args.dim, args.n_layers, args.vocab_size, args.dropout) == (64, 2, 640, 0.1)


def test_fresh_model_args_from_a_json_file(tmp_path, tok):
    path = tmp_path / "m.json"
    path.write_text(json.dumps({**MICRO, "vocab_size": 700}))
    args = fresh_model_args(str(path), tok, {"dropout": 0.0})
    assert (args.dim, args.n_layers, args.vocab_size, args.n_kv_heads) == (32, 2, 700, 2)


@pytest.mark.parametrize("content, message", [
    ("[1, 2]", r"m\.json: expected a JSON object of ModelArgs fields, got list"),
    ('{"dim": 32,', r"m\.json: malformed JSON"),
    ('{"width": 32}', r"m\.json: unknown ModelArgs field\(s\) \['width'\]"),
    ('{"dim": "128"}', r"m\.json: key 'dim' must be a positive integer, got \"128\""),
    ('{"dim": 0}', r"m\.json: key 'dim' must be a positive integer, got 0"),
    ('{"n_kv_heads": 1.5}', r"m\.json: key 'n_kv_heads' must be a positive integer or null, got 1\.5"),
    ('{"rope_theta": "big"}', r"m\.json: key 'rope_theta' must be a number, got \"big\""),
    ('{"tie_embeddings": 1}', r"m\.json: key 'tie_embeddings' must be true or false, got 1"),
    ('{"dim": 30, "n_heads": 4}', r"m\.json: dim=30 is not divisible by n_heads=4"),
    ('{"dim": 32, "n_heads": 2, "vocab_size": 100}', r"m\.json: vocab_size=100 is smaller than the tokenizer's 640"),
])
def test_fresh_model_args_refuse_a_bad_file_by_key(tmp_path, tok, content, message):
    path = tmp_path / "m.json"
    path.write_text(content)
    with pytest.raises(DataError, match=message):
        fresh_model_args(str(path), tok, {})


def test_fresh_model_args_missing_file(tmp_path, tok):
    with pytest.raises(DataError, match=r"nope\.json: model config file not found"):
        fresh_model_args(str(tmp_path / "nope.json"), tok, {})


def test_build_model_loads_the_checkpoint_or_seeds_fresh_weights(tmp_path, tok):
    torch.manual_seed(5)
    saved = Llama(ModelArgs(**MICRO))
    save_model(saved, tmp_path / "m0", tokenizer_path=small_tokenizer())
    cfg = TrainConfig(stage="sft", data=["d"], out="o", init=str(tmp_path / "m0"))
    model = build_model(cfg, tok, tmp_path / "m0")
    assert model.args.dropout == 0.1                               # the stage's dropout over the checkpoint's
    for (k, a), b in zip(saved.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), k
    (tmp_path / "m.json").write_text(json.dumps(MICRO))
    fresh = [build_model(TrainConfig(stage="pretrain", data=["d"], out="o", model_config=str(tmp_path / "m.json"),
                                     tokenizer="t", seed=s), tok, None) for s in (0, 0, 1)]
    w = [m.layers[0].attention.wq.weight for m in fresh]
    assert torch.equal(w[0], w[1]) and not torch.equal(w[0], w[2])  # the seed decides the weights


def test_activation_checkpointing_changes_neither_loss_nor_gradients():
    torch.manual_seed(0)
    plain = Llama(ModelArgs(**MICRO, attn_impl="torch"))
    ckpt = Llama(ModelArgs(**MICRO, attn_impl="torch"))
    ckpt.load_state_dict(plain.state_dict())
    enable_activation_checkpointing(ckpt)
    tokens, mask = torch.randint(0, 640, (2, 12)), torch.ones(2, 12, dtype=torch.long)
    losses = []
    for m in (plain, ckpt):
        loss = -LogprobModel(m, impl="torch")(tokens, mask).sum()
        loss.backward()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)
    for (k, p), q in zip(plain.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-5, atol=1e-7, msg=k)


def test_full_model_state_in_one_process_is_the_llama_state_dict(tmp_path):
    torch.manual_seed(0)
    model = Llama(ModelArgs(**MICRO))
    state = full_model_state(LogprobModel(model))
    assert state.keys() == model.state_dict().keys()
    assert all(torch.equal(state[k], v) and state[k].device.type == "cpu" for k, v in model.state_dict().items())
    save_model(model, tmp_path / "m", tokenizer_path=small_tokenizer())
    assert torch.equal(load_model(tmp_path / "m").output.weight, state["output.weight"])
