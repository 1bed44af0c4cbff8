"""Tests for srlm/chat.py: chat formats as units and over a checkpoint's tokenizer.json, loss masks.
(The tokenizer.json reader itself: tests/test_hf_tokenizer.py.)

The ChatML reference is transformers' apply_chat_template on a small byte-level BPE tokenizer.json
trained here (skipped without `tokenizers` / `transformers`); tests/test_real_model.py repeats the
comparison on SmolLM2-135M-Instruct's own tokenizer and template.

    python -m pytest -q tests/test_chat.py
"""
import json
from pathlib import Path

import pytest

from conftest import byte_level_bpe
from srlm.chat import ChatML, Llama2Chat, Llama3Chat, format_from_template, get_format, read_chat_template
from srlm.tokenizer import Tokenizer, load_tokenizer

DATA = Path(__file__).parents[1] / "data"
SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
# SmolLM2-Instruct's template (a default system message when the conversation has none).
CHATML_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\n" + SYSTEM + "<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
# Meta's Llama-3 (8B-Instruct) template, as its tokenizer_config.json writes it.
LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim"
    " + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")
LLAMA3_SPECIAL = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
LLAMA2_TEMPLATE = "{{ bos_token }}{% for m in messages %}[INST] {{ m['content'] | trim }} [/INST]{% endfor %}"
PROMPTS = ["What is the capital of France?", "  Spaces around  ", "Line one.\nLine two: <ok>", "é ü 汉字 🙂"]


@pytest.fixture(scope="module")
def chatml_dir(tmp_path_factory):
    """A tiny checkpoint tokenizer in SmolLM2's layout: byte-level BPE tokenizer.json with the ChatML
    markers as special tokens 0-2, tokenizer_config.json naming them, chat_template.jinja."""
    corpus = [SYSTEM, "system user assistant", *PROMPTS, "The capital of France is Paris."] * 20
    tk = byte_level_bpe(corpus, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    d = tmp_path_factory.mktemp("chatml")
    tk.save(str(d / "tokenizer.json"))
    (d / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "pad_token": "<|im_end|>",
         "unk_token": "<|endoftext|>"}))
    (d / "chat_template.jinja").write_text(CHATML_TEMPLATE)
    return d


@pytest.fixture(scope="module")
def llama3_dir(tmp_path_factory):
    """A tiny checkpoint tokenizer in Llama-3's layout: byte-level BPE tokenizer.json with its five
    markers as special tokens 0-4, BOS <|begin_of_text|>, end of turn <|eot_id|>, Meta's template."""
    tk = byte_level_bpe(["system user assistant", *PROMPTS, "The capital of France is Paris."] * 20, LLAMA3_SPECIAL)
    d = tmp_path_factory.mktemp("llama3")
    tk.save(str(d / "tokenizer.json"))
    (d / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>", "chat_template": LLAMA3_TEMPLATE}))
    return d


def reference_prompt_ids(model_dir, user, system=None):
    transformers = pytest.importorskip("transformers")
    ref = transformers.AutoTokenizer.from_pretrained(str(model_dir))
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
    ids = ref.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


# ---- choosing a format ----
def test_format_from_template():
    chatml = format_from_template(CHATML_TEMPLATE)
    assert isinstance(chatml, ChatML) and chatml.default_system == SYSTEM
    escaped = format_from_template("{{ '<|im_start|>system\\nBe kind.<|im_end|>\\n' }}{{ '<|im_start|>' }}")
    assert escaped.default_system == "Be kind."
    assert format_from_template("{{ '<|im_start|>' + m['role'] }}").default_system is None
    assert isinstance(format_from_template(LLAMA2_TEMPLATE), Llama2Chat)
    assert isinstance(format_from_template(None), Llama2Chat)  # srlm's own checkpoints carry no template
    assert isinstance(format_from_template(LLAMA3_TEMPLATE), Llama3Chat)
    with pytest.raises(ValueError, match=r"x\.jinja: .*neither ChatML .*, Llama-3 .* nor Llama-2"):
        format_from_template("<|user|>{{ m }}", "x.jinja")
    with pytest.raises(ValueError, match=r"y\.jinja: this Llama-3\.1\+ template .*--chat llama3"):
        format_from_template("<|start_header_id|>system Cutting Knowledge Date: December 2023", "y.jinja")
    assert isinstance(get_format("chatml"), ChatML)
    with pytest.raises(ValueError, match="unknown chat format 'vicuna'"):
        get_format("vicuna")


def test_read_chat_template_from_tokenizer_config(tmp_path):
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(
        {"chat_template": [{"name": "tool_use", "template": "x"}, {"name": "default", "template": LLAMA2_TEMPLATE}]}))
    assert read_chat_template(tmp_path) == (LLAMA2_TEMPLATE, tmp_path / "tokenizer_config.json")
    (tmp_path / "chat_template.jinja").write_text(CHATML_TEMPLATE)  # the file wins, as in transformers 5
    assert read_chat_template(tmp_path)[0] == CHATML_TEMPLATE


# ---- ChatML over tokenizer.json ----
def test_chatml_prompt_text_and_ids(chatml_dir):
    tok = load_tokenizer(chatml_dir)
    ids = tok.encode_prompt("Hi there")
    assert tok.decode(ids, skip_special=False) == (
        f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n")
    assert ids[0] == 1 and ids.count(1) == 3 and ids.count(2) == 2  # the markers are single tokens
    assert tok.encode_prompt("Hi", system="Be brief.") == tok.encode(
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")


@pytest.mark.parametrize("user", PROMPTS)
@pytest.mark.parametrize("checkpoint", ["chatml_dir", "llama3_dir"])
def test_prompt_ids_equal_apply_chat_template(request, checkpoint, user):
    model_dir = request.getfixturevalue(checkpoint)
    tok = load_tokenizer(model_dir)
    assert tok.encode_prompt(user) == reference_prompt_ids(model_dir, user)
    assert tok.encode_prompt(user, system="Be brief.") == reference_prompt_ids(model_dir, user, "Be brief.")


def test_llama3_prompt_text(llama3_dir):
    tok = load_tokenizer(llama3_dir)
    assert tok.chat.name == "llama3" and tok.eos_id == 4 and tok.bos_id == 0
    ids = tok.encode_prompt("  Hi there ", system="Be brief.")
    assert tok.decode(ids, skip_special=False) == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
    assert [ids.count(i) for i in range(5)] == [1, 0, 3, 3, 2]  # the markers are single tokens


def test_llama3_loss_mask_is_the_answer_and_eot(llama3_dir):
    tok = load_tokenizer(llama3_dir)
    ids, mask = tok.encode_dialog("Capital of France?", " The capital of France is Paris.\n")
    answer = [i for i, m in zip(ids, mask) if m]
    assert ids[:len(ids) - len(answer)] == tok.encode_prompt("Capital of France?")
    assert tok.decode(answer, skip_special=False) == "The capital of France is Paris.<|eot_id|>"
    assert mask == [0] * (len(ids) - len(answer)) + [1] * len(answer)
    transformers = pytest.importorskip("transformers")
    ref = transformers.AutoTokenizer.from_pretrained(str(llama3_dir)).apply_chat_template(
        [{"role": "user", "content": "Capital of France?"},
         {"role": "assistant", "content": " The capital of France is Paris.\n"}], tokenize=True)
    assert ids == list(ref["input_ids"] if hasattr(ref, "keys") else ref)  # the whole conversation, as Meta's template writes it


def test_chatml_loss_mask_is_the_answer_and_im_end(chatml_dir):
    tok = load_tokenizer(chatml_dir)
    ids, mask = tok.encode_dialog("What is the capital of France?", " The capital of France is Paris. ")
    prompt = tok.encode_prompt("What is the capital of France?")
    answer = tok.encode("The capital of France is Paris.")
    assert ids == prompt + answer + [2] and mask == [0] * len(prompt) + [1] * (len(answer) + 1)
    assert tok.decode([i for i, m in zip(ids, mask) if m], skip_special=False) == "The capital of France is Paris.<|im_end|>"


def test_chat_flag_overrides_the_template(chatml_dir):
    tok = load_tokenizer(chatml_dir, chat="llama2")
    assert tok.chat.name == "llama2" and tok.eos_id == 2
    assert tok.decode(tok.encode_prompt("Hi"), skip_special=False) == "<|im_start|>[INST] Hi [/INST]"


def test_chatml_over_sentencepiece_without_markers_is_an_error():
    tok = load_tokenizer(DATA / "tokenizer.model", chat="llama2")
    assert isinstance(tok, Tokenizer) and tok.chat.name == "llama2"
    with pytest.raises(ValueError, match=r"tokenizer\.model: the tokenizer has no piece '<\|im_end\|>'"):
        load_tokenizer(DATA / "tokenizer.model", chat="chatml")


def test_save_keeps_tokenizer_files_and_template(chatml_dir, tmp_path):
    import torch

    from srlm.checkpoint import load_model, save_model
    from srlm.model import Llama, ModelArgs

    torch.manual_seed(0)
    model = Llama(ModelArgs(dim=32, n_layers=1, n_heads=2, vocab_size=400, hidden_dim=64, max_seq_len=32,
                            tie_embeddings=True))
    save_model(model, tmp_path / "ckpt", tokenizer_path=chatml_dir / "tokenizer.json")
    names = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    assert names == ["chat_template.jinja", "config.json", "generation_config.json", "model.safetensors",
                     "tokenizer.json", "tokenizer_config.json"]
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert (config["bos_token_id"], config["eos_token_id"], config["pad_token_id"]) == (1, 2, 2)
    reloaded = load_model(tmp_path / "ckpt")
    assert reloaded.tokenizer_path == str(tmp_path / "ckpt" / "tokenizer.json")
    assert load_tokenizer(tmp_path / "ckpt").encode_prompt("Hi") == load_tokenizer(chatml_dir).encode_prompt("Hi")


def test_clis_take_the_checkpoints_format_or_the_flag(chatml_dir, tmp_path):
    import torch

    import generate
    import judge
    import train
    from srlm.checkpoint import save_model
    from srlm.loading import load_for_inference, model_id
    from srlm.model import Llama, ModelArgs

    torch.manual_seed(0)
    model = Llama(ModelArgs(dim=32, n_layers=1, n_heads=2, vocab_size=400, hidden_dim=64, max_seq_len=32))
    save_model(model, tmp_path / "ckpt", tokenizer_path=chatml_dir / "tokenizer.json")
    loaded, tok = load_for_inference(tmp_path / "ckpt")
    assert tok.chat.name == "chatml" and tok.chat.default_system == SYSTEM
    _, tok2 = load_for_inference(tmp_path / "ckpt", chat="llama2")
    assert tok2.chat.name == "llama2"
    # rows generated under one chat format are never resumed under another
    assert model_id(loaded, tok) != model_id(loaded, tok2)
    assert generate.parse_args(["--model", "m", "--task", "responses", "--input", "p", "--output", "o",
                                "--chat", "chatml"]).chat == "chatml"
    assert train.config_from_args(train.parse_args(["--stage", "dpo", "--data", "d", "--out", "o", "--init", "m",
                                                    "--chat", "llama2"])).chat == "llama2"
    assert judge.parse_args(["--model", "m", "--input", "c", "--chat", "chatml"]).chat == "chatml"
