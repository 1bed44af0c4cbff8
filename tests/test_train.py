"""train.py / srlm/trainer.py end to end on a tiny model: SFT, DPO, resume, torchrun parity, bad input.
(The trainer's pieces on hand-written numbers: tests/test_trainer.py.)

Run: python -m pytest -q tests/test_train.py
(The torchrun tests start two CPU processes with the gloo backend; about 10 s each on 2 cores.)
"""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import train
from conftest import ROOT, small_tokenizer
from srlm.checkpoint import load_model, save_hf
from srlm.io import DataError, read_jsonl
from srlm.logprobs import sequence_logprobs
from srlm.model import Llama, ModelArgs
from srlm.trainer import TrainingError

QA = [("What is 2 + 2?", "4"), ("Name a colour.", "Blue."), ("Say hi.", "Hi there!"),
      ("Capital of France?", "Paris."), ("Opposite of hot?", "Cold."), ("Spell cat.", "C A T."),
      ("Largest planet?", "Jupiter."), ("Count to three.", "1, 2, 3."), ("Is ice cold?", "Yes.")]
# 9 pairs: with 2 ranks x 2 pairs per forward, the last reference-log-prob chunk has 1 pair, so one
# rank runs a dummy forward to keep FSDP's collectives in step.


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny random Llama saved as an HF dir with a real tokenizer (the committed one), plus SFT and DPO data."""
    tokenizer = small_tokenizer()
    root = tmp_path_factory.mktemp("train")
    torch.manual_seed(0)
    model = Llama(ModelArgs.preset("tiny", vocab_size=1000))
    save_hf(model.state_dict(), model.args, root / "m0", tokenizer_path=tokenizer)
    sft = root / "sft.jsonl"
    sft.write_text("".join(json.dumps({"prompt": q, "response": a}) + "\n" for q, a in QA))
    pairs = root / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"id": str(i), "prompt": q, "chosen": a, "rejected": "no idea, sorry"})
                             + "\n" for i, (q, a) in enumerate(QA)))
    return root


def weights(path) -> dict:
    return load_file(str(Path(path) / "model.safetensors"))


def assert_same_weights(a, b, atol=0.0):
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0.0 if atol == 0 else 1e-4, atol=atol, msg=k)


def common(setup, stage, out, *extra):
    data = setup / ("sft.jsonl" if stage == "sft" else "pairs.jsonl")
    return ["--stage", stage, "--init", str(setup / "m0"), "--data", str(data), "--out", str(out),
            "--lr", "1e-3", "--min-lr", "1e-4", "--warmup-steps", "0", "--batch-size", "4",
            "--micro-batch-size", "2", "--device", "cpu", "--no-progress", *extra]


def test_sft_writes_checkpoint_and_rerun_is_noop(setup):
    out = setup / "sft_out"
    summary = train.main(common(setup, "sft", out, "--max-steps", "2", "--dropout", "0"))
    assert summary["summary"] and summary["steps"] == 2
    for name in ("config.json", "model.safetensors", "tokenizer.model", "metrics.jsonl"):
        assert (out / name).is_file(), name
    log = read_jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in log[:-1]] == [1, 2] and log[-1]["summary"]
    assert all({"loss", "lr", "tokens_per_s", "grad_norm"} <= set(r) for r in log[:-1])
    loaded = load_model(out)  # later stages and outside tools load it
    assert loaded.args.vocab_size == 1000
    before = (out / "model.safetensors").stat().st_mtime_ns
    again = train.main(common(setup, "sft", out, "--max-steps", "2", "--dropout", "0"))
    assert again == summary and (out / "model.safetensors").stat().st_mtime_ns == before


@pytest.mark.parametrize("group", ["0", "2"])
def test_resume_equals_uninterrupted_run(setup, group):
    """Dropout on, so the RNG state must be restored too: 4 steps straight == 2 steps, stop, resume
    (and with batches grouped by length, whose order must come back the same)."""
    full, split = setup / f"full{group}", setup / f"split{group}"
    args = ["--max-steps", "4", "--dropout", "0.1", "--seed", "7", "--group-by-length", group]
    train.main(common(setup, "sft", full, *args))
    stopped = train.main(common(setup, "sft", split, *args, "--stop-after-steps", "2"))
    assert stopped["stopped"] and not (split / "config.json").exists()
    assert (setup / f"split{group}.train" / "checkpoint" / "trainer.pt").is_file()
    state = torch.load(setup / f"split{group}.train" / "checkpoint" / "trainer.pt", weights_only=True)
    assert state["step"] == 2
    with pytest.raises(TrainingError, match=r"other settings \(seed: saved 7, now 8\).*--no-resume"):
        train.main(common(setup, "sft", split, "--max-steps", "4", "--dropout", "0.1", "--seed", "8",
                          "--group-by-length", group))
    train.main(common(setup, "sft", split, *args))
    assert_same_weights(full, split)
    losses = lambda d: [r["loss"] for r in read_jsonl(d / "metrics.jsonl") if not r.get("summary")]
    assert losses(split) == pytest.approx(losses(full), rel=1e-6) and len(losses(split)) == 4


def test_dpo_raises_accuracy_and_margins(setup):
    """A short DPO run on 8 pairs: rewards start at 0 (policy = reference) and the trained model
    prefers every chosen answer more than the reference did."""
    out = setup / "dpo_out"
    train.main(common(setup, "dpo", out, "--max-steps", "8", "--beta", "0.1"))
    log = [r for r in read_jsonl(out / "metrics.jsonl") if not r.get("summary")]
    first, last = log[0], log[-1]
    for key in ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
                "logps/chosen", "logps/rejected"):
        assert key in first
    assert abs(first["rewards/margins"]) < 1e-4 and first["loss"] == pytest.approx(0.6931, abs=1e-3)
    assert last["rewards/margins"] > 0.05 and last["rewards/accuracies"] == 1.0 and last["loss"] < first["loss"]

    # Measure it again, independently of the training log: final model vs stored reference log-probs.
    from srlm.data import collate_pairs, load_rows, tokenize
    from srlm.tokenizer import Tokenizer

    ref_rows = read_jsonl(setup / "dpo_out.train" / "ref_logps.jsonl")[1:]
    examples, _ = tokenize(load_rows([setup / "pairs.jsonl"], "dpo"), "dpo", Tokenizer.from_dir(out), 256)
    tokens, mask = collate_pairs(examples, pad_id=0)
    model = load_model(out).eval()
    with torch.no_grad():
        logps = sequence_logprobs(model, tokens, mask, impl="torch")
    ref = {r["index"]: r for r in ref_rows}
    n = len(examples)
    margins = [(logps[i] - ref[i]["ref_chosen_logps"]) - (logps[n + i] - ref[i]["ref_rejected_logps"])
               for i in range(n)]
    assert all(m > 0 for m in margins)


def torchrun(args, tmp, script=ROOT / "train.py", env=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **(env or {})}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
           str(script), *args]
    proc = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.mark.parametrize("stage", ["sft", "dpo"])
def test_torchrun_two_processes_match_one(setup, stage):
    """One optimizer step with FSDP2 over 2 gloo processes == the same step in one process.

    The 2-process run builds the model on the meta device, shards it and fills the shards from
    rank 0's copy of --init. SFT: one micro-batch per rank; DPO: two (gradient accumulation,
    reduce-scatter only in the second backward).
    """
    one, two = setup / f"{stage}_one", setup / f"{stage}_two"
    args = ["--max-steps", "1", "--dropout", "0", *(["--micro-batch-size", "1"] if stage == "dpo" else [])]
    s1 = train.main(common(setup, stage, one, *args))
    torchrun(common(setup, stage, two, *args), setup)
    s2 = read_jsonl(two / "metrics.jsonl")[-1]
    assert s2["loss"] == pytest.approx(s1["loss"], rel=1e-5)
    if stage == "dpo":
        assert s2["rewards/margins"] == pytest.approx(s1["rewards/margins"], abs=1e-6)
    assert_same_weights(one, two, atol=1e-5)


def test_torchrun_tied_embeddings_match_one(setup, tmp_path):
    """SmolLM2-style tied embeddings under FSDP2: the one matrix is sharded, loaded (each rank its
    rows), trained and saved once, exactly as one process does it.

    Two DPO micro-batches per rank; both runs must agree on the loss and every weight, and the saved
    checkpoint must hold a single embedding matrix with tie_word_embeddings true.
    """
    tokenizer = small_tokenizer()
    torch.manual_seed(1)
    model = Llama(ModelArgs.preset("tiny", vocab_size=1000, tie_embeddings=True))
    save_hf(model.state_dict(), model.args, tmp_path / "m0", tokenizer_path=tokenizer)
    (tmp_path / "pairs.jsonl").write_text((setup / "pairs.jsonl").read_text())
    one, two = tmp_path / "one", tmp_path / "two"
    args = ["--max-steps", "2", "--micro-batch-size", "1"]
    s1 = train.main(common(tmp_path, "dpo", one, *args))
    torchrun(common(tmp_path, "dpo", two, *args), tmp_path)
    s2 = read_jsonl(two / "metrics.jsonl")[-1]
    assert s2["loss"] == pytest.approx(s1["loss"], rel=1e-5)
    assert_same_weights(one, two, atol=1e-5)
    saved = weights(two)
    assert "lm_head.weight" not in saved and "model.embed_tokens.weight" in saved
    assert json.loads((two / "config.json").read_text())["tie_word_embeddings"] is True
    assert not torch.equal(saved["model.embed_tokens.weight"], model.tok_embeddings.weight)  # it trained
    loaded = load_model(two)
    assert loaded.output.weight is loaded.tok_embeddings.weight


# Runs train.py under torchrun with spies on: who builds the full model, when gradient sync is
# switched, and whether reduced (sharded) gradients already exist when a micro-batch starts.
SPY = """
import json, os, sys
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor
import train
from srlm import dist, fsdp
from srlm.logprobs import LogprobModel

events = []
real_sync, real_forward, real_build = FSDPModule.set_requires_gradient_sync, LogprobModel.forward, fsdp.build_model

def sync(self, flag, **kw):
    events.append(f"sync {flag}")
    return real_sync(self, flag, **kw)

def forward(self, tokens, loss_mask):
    # The blocks are still sharded here; their sharded .grad exists only after a reduce-scatter.
    reduced = any(isinstance(p, DTensor) and p.grad is not None for p in self.parameters())
    events.append("forward after a reduce-scatter" if reduced else "forward")
    return real_forward(self, tokens, loss_mask)

def build(*a, **k):
    events.append("full model built")
    return real_build(*a, **k)

FSDPModule.set_requires_gradient_sync, LogprobModel.forward, fsdp.build_model = sync, forward, build
train.main(sys.argv[1:])
dist.cleanup()
with open(os.environ["SPY_LOG"] + "." + os.environ["RANK"], "w") as f:
    json.dump(events, f)
"""


@pytest.mark.parametrize("reduce_every", [False, True])
def test_torchrun_fresh_weights_and_gradient_accumulation(setup, tmp_path, reduce_every):
    """--model-config (fresh weights), 2 micro-batches per rank and step, 2 steps: 2 processes == 1.

    Rank 0 alone initialises the full model (then broadcast into the meta-built shards). By default
    the first micro-batch's backward of each step must not reduce-scatter (no sharded grads exist
    when the second micro-batch starts) and the second must, or the weights would not match;
    with --reduce-every-micro-batch both do.
    """
    one, two = tmp_path / "one", tmp_path / "two"
    args = ["--stage", "sft", "--model-config", "tiny", "--tokenizer", str(setup / "m0" / "tokenizer.model"),
            "--data", str(setup / "sft.jsonl"), "--lr", "1e-3", "--min-lr", "1e-4", "--warmup-steps", "0",
            "--batch-size", "4", "--micro-batch-size", "1", "--max-steps", "2", "--dropout", "0",
            "--seed", "3", "--device", "cpu", "--no-progress",
            *(["--reduce-every-micro-batch"] if reduce_every else [])]
    s1 = train.main([*args, "--out", str(one)])
    script = tmp_path / "spy_train.py"
    script.write_text(SPY)
    torchrun([*args, "--out", str(two)], tmp_path, script=script, env={"SPY_LOG": str(tmp_path / "events")})
    per_step = (["sync True", "forward", "sync True", "forward after a reduce-scatter"] if reduce_every
                else ["sync False", "forward", "sync True", "forward"])
    assert json.loads((tmp_path / "events.0").read_text()) == ["full model built", *per_step, *per_step]
    assert json.loads((tmp_path / "events.1").read_text()) == [*per_step, *per_step]
    losses = lambda d: [r["loss"] for r in read_jsonl(d / "metrics.jsonl") if not r.get("summary")]
    assert losses(two) == pytest.approx(losses(one), rel=1e-5) and s1["steps"] == 2
    assert_same_weights(one, two, atol=1e-5)


# Under torchrun: build_sharded_model on each HF dir given (never building the full model), then the
# shards gathered back on rank 0 must equal load_model's weights exactly; a CheckpointError is
# recorded instead where one is raised.
SHARDED_LOAD = """
import json, os, sys
from pathlib import Path
import torch
from srlm import dist
from srlm.checkpoint import CheckpointError, load_model
from srlm import fsdp
from srlm.fsdp import build_sharded_model, full_model_state
from srlm.trainer import TrainConfig

fsdp.build_model = lambda *a, **k: sys.exit("no rank may build the full model from an HF checkpoint")
rank, world, device = dist.init_distributed("cpu")
results = {}
for path in sys.argv[1:]:
    cfg = TrainConfig(stage="sft", data=[], out="unused", init=path, dropout=0.0)
    try:
        wrapped = build_sharded_model(cfg, None, Path(path), device, world, torch.float32)
    except CheckpointError as e:
        results[path] = f"CheckpointError: {e}"
        continue
    wq = wrapped.model.layers[0].attention.wq.weight.to_local()
    state = full_model_state(wrapped)
    if rank == 0:
        ref = load_model(path).state_dict()
        results[path] = {"keys_equal": state.keys() == ref.keys(), "wq_rows": wq.shape[0],
                         "differ": [k for k in ref if not torch.equal(state.get(k, torch.empty(0)), ref[k])]}
    else:
        results[path] = {"wq_rows": wq.shape[0]}
dist.cleanup()
with open(os.environ["RESULTS"] + "." + os.environ["RANK"], "w") as f:
    json.dump(results, f)
"""


def test_torchrun_each_rank_reads_its_own_rows(tmp_path):
    """2 gloo processes load HF checkpoints shard by shard (srlm.checkpoint.load_hf_shards).

    3 heads of 16 rows: each rank owns 24 rows of wq, so the cut falls inside head 1 and both ranks
    must permute a whole head before cutting; wk (1 KV head) is cut inside its only head; the
    101-row embedding splits 51 / 50. Single file, several files, tied embeddings, a missing key.
    """
    from safetensors.torch import load_file, save_file

    torch.manual_seed(0)
    model = Llama(ModelArgs(dim=48, n_layers=2, n_heads=3, n_kv_heads=1, vocab_size=101, hidden_dim=40,
                            max_seq_len=32))
    assert (model.args.dim // 2) % model.args.head_dim != 0  # the shard boundary is inside a head
    save_hf(model.state_dict(), model.args, tmp_path / "single")
    save_hf(model.state_dict(), model.args, tmp_path / "sharded", max_shard_bytes=20_000)
    assert len(list((tmp_path / "sharded").glob("model-*.safetensors"))) > 2
    for name, edit in [("tied", "lm_head.weight"), ("missing", "model.layers.1.self_attn.k_proj.weight")]:
        save_hf(model.state_dict(), model.args, tmp_path / name)
        tensors = load_file(tmp_path / name / "model.safetensors")
        tensors.pop(edit)
        save_file(tensors, tmp_path / name / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((tmp_path / "tied" / "config.json").read_text())
    (tmp_path / "tied" / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": True}))

    script = tmp_path / "sharded_load.py"
    script.write_text(SHARDED_LOAD)
    dirs = [str(tmp_path / name) for name in ("single", "sharded", "tied", "missing")]
    torchrun(dirs, tmp_path, script=script, env={"RESULTS": str(tmp_path / "results")})
    rank0, rank1 = (json.loads((tmp_path / f"results.{r}").read_text()) for r in (0, 1))
    for d in dirs[:3]:
        assert rank0[d] == {"keys_equal": True, "wq_rows": 24, "differ": []}, d
        assert rank1[d] == {"wq_rows": 24}, d
    for ranks in (rank0, rank1):
        assert re.fullmatch(r"CheckpointError: .*missing 1 weight.*layers\.1\.attention\.wk\.weight.*",
                            ranks[dirs[3]]), ranks[dirs[3]]


def test_activation_checkpointing_and_bf16(setup):
    """Recomputing blocks in backward changes nothing; bf16 autocast gives a close, finite loss."""
    args = ["--max-steps", "1", "--dropout", "0"]
    plain = train.main(common(setup, "sft", setup / "ac_off", *args))
    ckpt = train.main(common(setup, "sft", setup / "ac_on", *args, "--activation-checkpointing"))
    assert ckpt["loss"] == pytest.approx(plain["loss"], rel=1e-6)
    assert_same_weights(setup / "ac_off", setup / "ac_on", atol=1e-6)
    bf16 = train.main(common(setup, "sft", setup / "bf16", *args, "--dtype", "bf16"))
    assert bf16["loss"] == pytest.approx(plain["loss"], rel=2e-2)


def test_nan_loss_stops_and_keeps_last_good_state(setup, monkeypatch):
    from srlm import trainer

    real = trainer.step_losses
    calls = {"n": 0}

    def poisoned(*a, **k):
        calls["n"] += 1
        sums = real(*a, **k)
        if calls["n"] == 3:
            sums["loss"] = sums["loss"] * float("nan")
        return sums

    monkeypatch.setattr(trainer, "step_losses", poisoned)
    out = setup / "nan_out"
    with pytest.raises(TrainingError, match=r"step 3: the loss is nan.*nan_out\.train/checkpoint"):
        train.main(common(setup, "sft", out, "--max-steps", "4", "--save-every", "2", "--dropout", "0"))
    assert not (out / "config.json").exists()
    state = torch.load(setup / "nan_out.train" / "checkpoint" / "trainer.pt", weights_only=True)
    assert state["step"] == 2
    load_model(setup / "nan_out.train" / "checkpoint" / "model")  # intact and loadable


def test_bad_input(setup, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(DataError, match="empty.jsonl: no rows"):
        train.main(["--stage", "sft", "--init", str(setup / "m0"), "--data", str(empty), "--out",
                    str(tmp_path / "o"), "--device", "cpu"])
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "x", "chosen": "y"}) + "\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), "--stage", "dpo", "--init", str(setup / "m0"),
                           "--data", str(bad), "--out", str(tmp_path / "o"), "--device", "cpu"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"train.py: error: {bad}:1: missing required field(s) ['rejected']"]  # one line, no traceback


def test_out_never_deletes_files_it_did_not_write(setup, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match=r"mine: --out holds files train.py did not write \(notes\.txt\)"):
        train.main(common(setup, "sft", out, "--max-steps", "1"))
    assert (out / "notes.txt").read_text() == "keep me" and not (tmp_path / "mine.train").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match=r"file: --out must be a folder"):
        train.main(common(setup, "sft", tmp_path / "file", "--max-steps", "1"))


def test_saves_by_time_as_well_as_steps(setup, tmp_path, monkeypatch):
    import srlm.trainer as trainer

    saved = []
    real = trainer.save_training_state
    monkeypatch.setattr(trainer, "save_training_state", lambda d, w, o, step, *a: (saved.append(step),
                                                                                  real(d, w, o, step, *a)))
    train.main(common(setup, "sft", tmp_path / "steps", "--max-steps", "3", "--save-every", "1000",
                      "--save-every-minutes", "0"))
    assert saved == []
    clock = iter(range(0, 10**6, 100))  # every call of time.time() is 100 s later than the one before
    monkeypatch.setattr(trainer.time, "time", lambda: float(next(clock)))
    train.main(common(setup, "sft", tmp_path / "time", "--max-steps", "3", "--save-every", "1000",
                      "--save-every-minutes", "1"))
    assert saved == [1, 2]  # after every step but the last (the final checkpoint supersedes it)
