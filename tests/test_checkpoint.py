"""Tests for srlm/checkpoint.py: Hugging Face and Meta formats, parity with transformers, bad input.

    python -m pytest -q tests/test_checkpoint.py
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from srlm.checkpoint import (CheckpointError, _meta_split_dim, load_model, permute_hf_to_meta, permute_meta_to_hf,
                             save_model)
from conftest import ROOT
from srlm.model import Llama, ModelArgs

TINY_GQA = dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=128, hidden_dim=96, max_seq_len=64)


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return Llama(ModelArgs(**TINY_GQA)).eval()


def logits(model, seed=1):
    torch.manual_seed(seed)
    tokens = torch.randint(0, 128, (2, 17))
    with torch.no_grad():
        return model(tokens) if isinstance(model, Llama) else model(tokens).logits


def test_rotary_permutation_round_trip_and_layout():
    # One head of size 4, one input column: Meta rows [a0 b0 a1 b1] are pairs (a_i, b_i);
    # HF keeps all first halves, then all second halves: [a0 a1 b0 b1].
    w = torch.tensor([[10.0], [11.0], [20.0], [21.0]])
    torch.testing.assert_close(permute_meta_to_hf(w, 1), torch.tensor([[10.0], [20.0], [11.0], [21.0]]))
    w = torch.randn(32, 8)
    torch.testing.assert_close(permute_hf_to_meta(permute_meta_to_hf(w, 4), 4), w)


@pytest.fixture
def transformers():
    return pytest.importorskip("transformers")


def hf_reference_model(transformers):
    cfg = transformers.LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                   rms_norm_eps=1e-5, tie_word_embeddings=False)
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(cfg).eval()


def test_parity_their_save_our_load(transformers, tmp_path):
    hf = hf_reference_model(transformers)
    hf.save_pretrained(tmp_path)
    ours = load_model(tmp_path).eval()
    assert ours.args.n_kv_heads == 2 and ours.args.ffn_hidden_dim == 96
    assert (logits(hf) - logits(ours)).abs().max() <= 1e-4


def test_parity_our_save_their_load(transformers, tmp_path):
    ours = tiny_model()
    save_model(ours, tmp_path / "ckpt")
    hf = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "ckpt").eval()
    assert (logits(hf) - logits(ours)).abs().max() <= 1e-4


def test_sharded_save_round_trip(tmp_path):
    model = tiny_model()
    save_model(model, tmp_path / "ckpt", max_shard_bytes=40_000)
    index = json.loads((tmp_path / "ckpt" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    torch.testing.assert_close(logits(load_model(tmp_path / "ckpt")), logits(model))


def test_sharded_save_loads_in_transformers(transformers, tmp_path):
    model = tiny_model()
    save_model(model, tmp_path / "ckpt", max_shard_bytes=40_000)
    hf = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "ckpt").eval()
    assert (logits(hf) - logits(model)).abs().max() <= 1e-4


def test_save_overwrites_atomically_and_copies_tokenizer(tmp_path):
    tok = tmp_path / "tokenizer.model"
    shutil.copyfile(Path(__file__).parents[1] / "data" / "tokenizer.model", tok)
    save_model(tiny_model(0), tmp_path / "ckpt", tokenizer_path=tok)
    second = tiny_model(1)
    save_model(second, tmp_path / "ckpt", tokenizer_path=tok)
    assert (tmp_path / "ckpt" / "tokenizer.model").read_bytes() == tok.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "tokenizer.model"]  # no temp folders left
    reloaded = load_model(tmp_path / "ckpt")
    torch.testing.assert_close(logits(reloaded), logits(second))
    assert reloaded.tokenizer_path == str(tmp_path / "ckpt" / "tokenizer.model")


def test_load_in_bfloat16(tmp_path):
    save_model(tiny_model(), tmp_path / "ckpt")
    model = load_model(tmp_path / "ckpt", dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    assert not any(p.is_meta for p in model.parameters())


def write_meta_checkpoint(model: Llama, path, n_shards=2):
    """Split our (= Meta's) state dict the way Meta's model-parallel code does, written by hand here:
    column-parallel layers (wq wk wv w1 w3 output) split rows, row-parallel ones (wo w2) and the
    embedding split columns, norms are copied to every shard."""
    path.mkdir()
    shards = [{} for _ in range(n_shards)]
    for name, t in model.state_dict().items():
        if name.startswith("tok_embeddings") or name.endswith(("wo.weight", "w2.weight")):
            parts = t.chunk(n_shards, dim=1)
        elif "norm" in name:
            parts = [t] * n_shards
        else:
            parts = t.chunk(n_shards, dim=0)
        for shard, part in zip(shards, parts):
            shard[name] = part.clone()
    shards[0]["rope.freqs"] = torch.zeros(8)  # Meta's files carry the rotary table; it must be ignored
    shards[1]["rope.freqs"] = torch.zeros(8)
    for i, shard in enumerate(shards):
        torch.save(shard, path / f"consolidated.{i:02d}.pth")
    a = model.args
    (path / "params.json").write_text(json.dumps(dict(
        dim=a.dim, n_layers=a.n_layers, n_heads=a.n_heads, n_kv_heads=a.n_kv_heads, vocab_size=-1,
        multiple_of=a.multiple_of, ffn_dim_multiplier=None, norm_eps=a.norm_eps)))


def test_meta_two_shard_load_equals_hf_load(tmp_path):
    torch.manual_seed(0)
    # multiple_of=32 gives the FFN size 192 from the 2/3*4*dim rule, which Meta's params.json implies
    model = Llama(ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=128, multiple_of=32)).eval()
    write_meta_checkpoint(model, tmp_path / "meta")
    save_model(model, tmp_path / "hf")
    from_meta = load_model(tmp_path / "meta")
    from_hf = load_model(tmp_path / "hf")
    assert from_meta.args.vocab_size == 128  # taken from the embedding since params.json says -1
    torch.testing.assert_close(logits(from_meta), logits(from_hf))
    torch.testing.assert_close(logits(from_meta), logits(model))


def test_meta_split_dims():
    assert _meta_split_dim("layers.3.attention.wq.weight") == 0
    assert _meta_split_dim("layers.3.feed_forward.w2.weight") == 1
    assert _meta_split_dim("tok_embeddings.weight") == 1
    assert _meta_split_dim("layers.0.ffn_norm.weight") is None


# ---- bad input: a clear CheckpointError naming the file and key ----
@pytest.fixture
def saved(tmp_path):
    save_model(tiny_model(), tmp_path / "ckpt")
    return tmp_path / "ckpt"


def resave(path, edit):
    from safetensors.torch import load_file, save_file

    tensors = load_file(path / "model.safetensors")
    edit(tensors)
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})


def test_error_missing_directory(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "nope")


def test_error_directory_without_config(tmp_path):
    with pytest.raises(CheckpointError, match="neither config.json"):
        load_model(tmp_path)


def test_error_missing_weights_file(saved):
    (saved / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        load_model(saved)


def test_error_missing_key(saved):
    resave(saved, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(CheckpointError, match=r"missing 1 weight.*layers\.1\.feed_forward\.w3"):
        load_model(saved)


def test_error_unexpected_key(saved):
    resave(saved, lambda t: t.update({"model.layers.0.extra.weight": torch.zeros(2)}))
    with pytest.raises(CheckpointError, match=r"model\.safetensors.*unexpected key 'model\.layers\.0\.extra\.weight'"):
        load_model(saved)


def test_error_shape_mismatch(saved):
    resave(saved, lambda t: t.update({"model.norm.weight": torch.ones(65)}))
    with pytest.raises(CheckpointError, match=r"norm\.weight has shape \(65,\)"):
        load_model(saved)


def test_error_config_contradicts_weights(saved):
    config = json.loads((saved / "config.json").read_text())
    config["intermediate_size"] = 100
    (saved / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"config\.json.*contradicts"):
        load_model(saved)


def test_error_config_missing_key(saved):
    config = json.loads((saved / "config.json").read_text())
    del config["hidden_size"]
    (saved / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"config\.json: missing key 'hidden_size'"):
        load_model(saved)


def test_error_truncated_safetensors(saved):
    data = (saved / "model.safetensors").read_bytes()
    (saved / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"model\.safetensors.*truncated or corrupt"):
        load_model(saved)


def test_error_garbage_safetensors(saved):
    (saved / "model.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError, match=r"model\.safetensors"):
        load_model(saved)


def test_error_malformed_config_json(saved):
    (saved / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"config\.json: malformed JSON"):
        load_model(saved)


def test_error_corrupt_meta_shard(tmp_path):
    write_meta_checkpoint(Llama(ModelArgs(dim=64, n_layers=1, n_heads=4, vocab_size=128, multiple_of=32)),
                          tmp_path / "meta")
    (tmp_path / "meta" / "consolidated.01.pth").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match=r"consolidated\.01\.pth"):
        load_model(tmp_path / "meta")



def test_error_non_finite_weights_name_the_tensor(saved):
    def poison(t):
        t["model.layers.1.self_attn.v_proj.weight"][3, 5] = float("nan")

    resave(saved, poison)
    with pytest.raises(CheckpointError, match=r"model\.safetensors: tensor 'layers\.1\.attention\.wv\.weight' "
                                              r"holds non-finite values"):
        load_model(saved)
    with pytest.raises(CheckpointError, match=r"'model\.layers\.1\.self_attn\.v_proj\.weight' holds non-finite"):
        load_per_rank(saved)


def test_error_index_entry_outside_the_checkpoint_folder(tmp_path):
    save_model(tiny_model(), tmp_path / "ckpt", max_shard_bytes=40_000)
    index = tmp_path / "ckpt" / "model.safetensors.index.json"
    good = json.loads(index.read_text())
    shard = next(iter(good["weight_map"].values()))
    (tmp_path / "outside.safetensors").write_bytes((tmp_path / "ckpt" / shard).read_bytes())
    for bad in ("../outside.safetensors", str(tmp_path / "outside.safetensors"), "sub/../../outside.safetensors"):
        edited = {**good, "weight_map": {**good["weight_map"], "model.norm.weight": bad}}
        index.write_text(json.dumps(edited))
        with pytest.raises(CheckpointError, match=r"index\.json: weight_map names the file .* not inside"):
            load_model(tmp_path / "ckpt")


@pytest.mark.parametrize("config, error", [
    ([1, 2], r"config\.json: expected a JSON object of settings, got a list"),
    ({"hidden_size": "128"}, r"config\.json: key 'hidden_size' must be a positive integer, got '128'"),
    ({"num_hidden_layers": 2.0}, r"key 'num_hidden_layers' must be a positive integer, got 2\.0"),
    ({"vocab_size": True}, r"key 'vocab_size' must be a positive integer, got True"),
    ({"rms_norm_eps": "1e-5"}, r"key 'rms_norm_eps' must be a positive number"),
])
def test_error_config_value_types(saved, config, error):
    if isinstance(config, dict):
        config = {**json.loads((saved / "config.json").read_text()), **config}
    (saved / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=error):
        load_model(saved)


def test_error_meta_params_value_types(tmp_path):
    write_meta_checkpoint(Llama(ModelArgs(dim=64, n_layers=1, n_heads=4, vocab_size=128, multiple_of=32)),
                          tmp_path / "meta")
    params = json.loads((tmp_path / "meta" / "params.json").read_text())
    (tmp_path / "meta" / "params.json").write_text(json.dumps({**params, "n_heads": "4"}))
    with pytest.raises(CheckpointError, match=r"params\.json: key 'n_heads' must be a positive integer, got '4'"):
        load_model(tmp_path / "meta")


def test_tokenizer_of_a_missing_model_directory_says_so(tmp_path):
    from srlm.tokenizer import Tokenizer

    with pytest.raises(FileNotFoundError, match=r"nope: model directory not found"):
        Tokenizer.from_dir(tmp_path / "nope")


# ---- load_hf_shards: the per-rank loader of torchrun training, here in one process (world = 1) ----
def load_per_rank(path):
    from srlm.checkpoint import load_hf_args, load_hf_shards

    with torch.device("meta"):
        model = Llama(load_hf_args(path))
    model.to_empty(device="cpu")
    load_hf_shards(model, path)
    return model


@pytest.mark.parametrize("layout", ["single", "sharded", "bf16"])
def test_load_hf_shards_equals_load_model(tmp_path, layout):
    save_model(tiny_model(), tmp_path / "ckpt", max_shard_bytes=40_000 if layout == "sharded" else 2**30,
                                 dtype=torch.bfloat16 if layout == "bf16" else None)
    ours, ref = load_per_rank(tmp_path / "ckpt").state_dict(), load_model(tmp_path / "ckpt").state_dict()
    assert ours.keys() == ref.keys()
    for k in ref:
        assert ours[k].dtype == torch.float32 and torch.equal(ours[k], ref[k]), k


@pytest.mark.parametrize("edit, error", [
    (lambda t: t.pop("model.layers.1.mlp.up_proj.weight"), r"missing 1 weight.*layers\.1\.feed_forward\.w3"),
    (lambda t: t.update({"model.layers.0.extra.weight": torch.zeros(2)}),
     r"model\.safetensors.*unexpected key 'model\.layers\.0\.extra\.weight'"),
    (lambda t: t.update({"model.norm.weight": torch.ones(65)}), r"model\.safetensors.*norm\.weight has shape \(65,\)"),
])
def test_load_hf_shards_errors(saved, edit, error):
    resave(saved, edit)
    with pytest.raises(CheckpointError, match=error):
        load_per_rank(saved)


# ---- config.json: every field that changes the maths is read, in both layouts, or refused by name ----
def tied_hf_model(transformers, **overrides):
    """A transformers Llama with the features of SmolLM2: tied embeddings, RoPE base 1e5, GQA, and here
    an explicit head_dim that is NOT hidden_size / heads (64 / 4 = 16, head_dim 8)."""
    cfg = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, head_dim=8, max_position_embeddings=64, rms_norm_eps=1e-5,
               tie_word_embeddings=True, rope_theta=100000.0)
    cfg.update(overrides)
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(**cfg)).eval()


def test_their_tied_rope_headdim_model_loads_exactly(transformers, tmp_path):
    hf = tied_hf_model(transformers)
    hf.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    ours = load_model(tmp_path).eval()
    assert ours.args.rope_theta == 100000.0 and ours.args.head_dim == 8 and ours.args.tie_embeddings
    assert ("rope_theta" in config) or config["rope_parameters"]["rope_theta"] == 100000.0
    assert ours.output.weight is ours.tok_embeddings.weight
    assert ours.num_params() == sum(p.numel() for p in hf.parameters())  # the tied matrix counted once
    assert (logits(hf) - logits(ours)).abs().max() <= 1e-4


@pytest.mark.parametrize("layout", ["transformers4", "transformers5"])
def test_rope_theta_from_either_layout(tmp_path, layout):
    save_model(tiny_model(), tmp_path / "ckpt")
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    del config["rope_theta"], config["rope_scaling"]
    if layout == "transformers4":
        config.update(rope_theta=100000.0, rope_scaling=None)
    else:
        config["rope_parameters"] = {"rope_theta": 100000.0, "rope_type": "default"}
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps(config))
    assert load_model(tmp_path / "ckpt").args.rope_theta == 100000.0


@pytest.mark.parametrize("key, value, error", [
    ("rope_parameters", {"rope_theta": 5e5, "rope_type": "llama3", "factor": 8.0}, r"rope_parameters\.rope_type='llama3'"),
    ("rope_scaling", {"type": "linear", "factor": 2.0}, r"rope_scaling\.rope_type='linear'"),
    ("rope_parameters", {"rope_theta": 20000.0, "rope_type": "default"}, r"RoPE base is given twice"),
    ("attention_bias", True, r"attention_bias=True is not supported"),
    ("mlp_bias", True, r"mlp_bias=True is not supported"),
    ("hidden_act", "gelu", r"hidden_act='gelu' is not supported"),
    ("model_type", "mistral", r"model_type='mistral'"),
    ("quantization_config", {"quant_method": "gguf"}, r"quantization_config=.*not supported"),
    ("tie_word_embeddings", "yes", r"tie_word_embeddings='yes'"),
    ("head_dim", 15, r"head_dim=15 is odd"),
])
def test_config_refuses_what_srlm_does_not_implement(saved, key, value, error):
    config = json.loads((saved / "config.json").read_text())
    config[key] = value
    (saved / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"config\.json: .*" + error):
        load_model(saved)


# ---- tied embeddings: one parameter, counted, optimised, sharded and saved once ----
def tied_model(seed=0):
    torch.manual_seed(seed)
    return Llama(ModelArgs(**TINY_GQA, tie_embeddings=True)).eval()


def test_tied_embeddings_are_one_parameter():
    tied, untied = tied_model(), tiny_model()
    assert tied.output.weight is tied.tok_embeddings.weight
    assert untied.num_params() - tied.num_params() == 128 * 64  # vocab x dim, once
    opt = torch.optim.AdamW(tied.parameters(), lr=0.1)
    assert sum(p.numel() for g in opt.param_groups for p in g["params"]) == tied.num_params()
    tied.train()
    tied(torch.randint(0, 128, (1, 8))).sum().backward()
    opt.step()
    assert tied.output.weight is tied.tok_embeddings.weight  # still one tensor after a step


def test_tied_save_is_written_once_and_loads_in_transformers(transformers, tmp_path):
    from safetensors import safe_open

    model = tied_model()
    save_model(model, tmp_path / "ckpt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no temp folder left
    names = safe_open(str(tmp_path / "ckpt" / "model.safetensors"), "pt").keys()
    assert "model.embed_tokens.weight" in names and "lm_head.weight" not in names
    assert json.loads((tmp_path / "ckpt" / "config.json").read_text())["tie_word_embeddings"] is True
    hf = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "ckpt").eval()
    assert (logits(hf) - logits(model)).abs().max() <= 1e-4
    reloaded = load_model(tmp_path / "ckpt")
    assert reloaded.output.weight is reloaded.tok_embeddings.weight
    torch.testing.assert_close(logits(reloaded), logits(model))
    per_rank = load_per_rank(tmp_path / "ckpt")
    torch.testing.assert_close(logits(per_rank.eval()), logits(model))


def test_tied_checkpoint_with_a_different_head_is_refused(tmp_path):
    save_model(tied_model(), tmp_path / "ckpt")
    resave(tmp_path / "ckpt", lambda t: t.update({"lm_head.weight": torch.zeros(128, 64)}))
    with pytest.raises(CheckpointError, match=r"lm_head\.weight differs from model\.embed_tokens\.weight"):
        load_model(tmp_path / "ckpt")


# ---- transformers 4.4x, in its own process: srlm's saves load there, and its saves load here ----
TRANSFORMERS4 = os.environ.get("SRLM_TRANSFORMERS4")  # a folder holding transformers 4.4x (.ci/run makes it)

TRANSFORMERS4_SCRIPT = r"""
import sys, torch, transformers
from srlm.checkpoint import load_model, save_model
from srlm.model import Llama, ModelArgs
assert transformers.__version__.startswith("4."), transformers.__version__
out = sys.argv[1]
x = torch.randint(0, 128, (2, 17), generator=torch.Generator().manual_seed(0))
for tie in (False, True):
    torch.manual_seed(0)
    ours = Llama(ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=128, max_seq_len=64,
                           rope_theta=100000.0, tie_embeddings=tie)).eval()
    save_model(ours, f"{out}/ours{tie}")
    theirs = transformers.LlamaForCausalLM.from_pretrained(f"{out}/ours{tie}", torch_dtype=torch.float32).eval()
    assert theirs.config.tie_word_embeddings is tie and theirs.config.rope_theta == 100000.0
    assert (theirs.lm_head.weight.data_ptr() == theirs.model.embed_tokens.weight.data_ptr()) is tie
    with torch.no_grad():
        torch.testing.assert_close(theirs(x).logits, ours(x), rtol=0, atol=1e-5)
    theirs.save_pretrained(f"{out}/theirs{tie}")  # the legacy layout: top-level rope_theta
    back = load_model(f"{out}/theirs{tie}").eval()
    assert back.args.tie_embeddings is tie and back.args.rope_theta == 100000.0
    with torch.no_grad():
        torch.testing.assert_close(back(x), theirs(x).logits, rtol=0, atol=1e-5)
print("ok", transformers.__version__)
"""


@pytest.mark.skipif(not TRANSFORMERS4, reason="SRLM_TRANSFORMERS4 (a folder with transformers 4.4x) not set")
def test_saves_round_trip_with_transformers_4(tmp_path):
    """srlm's checkpoints (tied and untied, GQA, RoPE base 1e5) load in transformers 4.4x with equal
    logits, and 4.4x's own saves (legacy config layout) load back in srlm exactly. A subprocess, since
    the suite itself imports transformers 5."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([TRANSFORMERS4, str(ROOT)]), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", TRANSFORMERS4_SCRIPT, str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert proc.stdout.startswith("ok 4.")
